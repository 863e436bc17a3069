"""Deployment of VMamba models: an export-friendly SS2D scan and ONNX export checked in ONNX Runtime.

Nothing here imports ``onnx``, ``onnxscript`` or ``onnxruntime`` at import time (``pip install mmvmamba[deploy]``
installs them); see docs/deploy.md and ``tools/deploy/export_onnx.py``.
"""
from .export import (
                     DetectorFeatures,
                     SegmentorLogits,
                     build_model,
                     compare_with_onnxruntime,
                     export_kind,
                     export_module,
                     export_onnx,
)
from .onnx_scan import (
                     CHUNK,
                     LEVELS,
                     chunked_affine_scan,
                     chunked_cross_selective_scan,
                     chunked_selective_scan,
                     export_scan,
)

__all__ = [
    'CHUNK', 'LEVELS', 'chunked_affine_scan', 'chunked_selective_scan', 'chunked_cross_selective_scan', 'export_scan',
    'SegmentorLogits', 'DetectorFeatures', 'export_kind', 'build_model', 'export_module', 'export_onnx',
    'compare_with_onnxruntime'
]
