"""mmvmamba: VMamba backbones for OpenMMLab detection (mmdet) and segmentation (mmseg).

Importing the package (``custom_imports=dict(imports=['mmvmamba'])`` in a config) registers ``mmvmamba.VMamba``,
the official ``MM_VSSM`` alias, the engine parts (``mmvmamba.VMambaCheckHook``, ``mmvmamba.LossRecordHook``,
``mmvmamba.VMambaLayerDecayOptimWrapperConstructor``) in mmvmamba's registries, and changes nothing else: in
particular torch's ``weights_only`` allow-list is left alone (when and where the types that VMamba and mmengine
checkpoints pickle are allowed: :mod:`mmvmamba.checkpoint.safe_load`).
"""
from .engine import LossRecordHook, VMambaCheckHook, VMambaLayerDecayOptimWrapperConstructor
from .models import VMamba
from .version import __version__

__all__ = ['VMamba', 'LossRecordHook', 'VMambaCheckHook', 'VMambaLayerDecayOptimWrapperConstructor', '__version__']
