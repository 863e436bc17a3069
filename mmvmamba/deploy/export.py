"""ONNX export of VMamba segmentors and detectors, and its check in ONNX Runtime.

What is exported (one input, ``input``: the normalised ``[1, 3, H, W]`` image the config's data preprocessor
produces):

* a UperNet config (mmseg ``EncoderDecoder`` with a ``UPerHead``): ``forward(x, mode='tensor')``, the decode head's
  logits ``[1, num_classes, H/4, W/4]`` (output ``logits``);
* a Mask R-CNN config (mmdet ``MaskRCNN``): ``extract_feat(x)``, backbone and neck, the FPN maps in order (outputs
  ``fpn0``, ``fpn1``, ...).

The models are built through mmengine's registries with the config's ``default_scope``; this module imports neither
mmdet nor mmseg. ``onnx``, ``onnxscript`` and ``onnxruntime`` are imported when needed (``pip install
mmvmamba[deploy]``).
"""
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope

from mmvmamba.checkpoint import safe_load
from mmvmamba.engine.config_utils import task_of
from .onnx_scan import CHUNK, LEVELS, export_scan

__all__ = [
    'DEFAULT_OPSET', 'MIN_OPSET', 'FP32_TOLERANCE', 'OPTIMIZE_MODES', 'SegmentorLogits', 'DetectorFeatures',
    'DynamicAdaptiveAvgPool2d', 'dynamic_pooling', 'export_kind', 'build_model', 'export_module', 'export_onnx',
    'preprocess_image', 'demo_image', 'compare_with_onnxruntime', 'CheckResult', 'import_optional'
]

DEFAULT_OPSET = 18
# The torch.onnx (dynamo) exporter writes opset 18 or newer (LayerNormalization needs 17).
MIN_OPSET = 18
# Bound on max |ONNX Runtime - PyTorch| over all outputs, fp32 (issue #16).
FP32_TOLERANCE = 1e-4
INPUT_NAME = 'input'
DEPLOY_EXTRA = 'pip install mmvmamba[deploy]'


def import_optional(name: str):
    """``import name`` for a package of the ``deploy`` extra, with an error that says how to install it."""
    try:
        return __import__(name)
    except ImportError as error:
        raise ImportError(f'ONNX export needs the package {name!r}, which is not installed: {DEPLOY_EXTRA} '
                          '(or pip install -r requirements.txt)') from error


class SegmentorLogits(nn.Module):
    """``segmentor(x, mode='tensor')``: the decode head's logits of an mmseg EncoderDecoder.

    Args:
        segmentor: The mmseg segmentor, in eval mode.
    """

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.segmentor(inputs, mode='tensor')


class DetectorFeatures(nn.Module):
    """``detector.extract_feat(x)``: the backbone and neck of an mmdet detector, as a tuple of maps.

    Args:
        detector: The mmdet detector, in eval mode.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.detector.extract_feat(inputs))


class DynamicAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two averaging matmuls whose matrices are built from the run-time input size.

    PyTorch's exporter traces adaptive pooling into gathers fixed at the traced size (UperNet's pyramid pooling would
    read out of range at other sizes); here the bins are PyTorch's, ``[floor(i * n / m), ceil((i + 1) * n / m))``.

    Args:
        output_size: As in ``nn.AdaptiveAvgPool2d`` (an int, or a pair whose entries may be None: the input size).
    """

    def __init__(self, output_size: int | tuple[int | None, int | None]):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = self.output_size if isinstance(self.output_size, (tuple, list)) else (self.output_size, ) * 2
        rows = _averaging_matrix(x.shape[-2], sizes[0], x)
        cols = _averaging_matrix(x.shape[-1], sizes[1], x)
        out = x if rows is None else torch.matmul(rows, x)
        return out if cols is None else torch.matmul(out, cols.transpose(0, 1))


def _averaging_matrix(size: int, bins: int | None, like: torch.Tensor) -> torch.Tensor | None:
    """``[bins, size]``: row i averages positions ``floor(i * size / bins) .. ceil((i + 1) * size / bins) - 1``."""
    if bins is None:
        return None
    index = torch.arange(bins, device=like.device)[:, None]
    starts = index * size // bins
    ends = ((index + 1) * size + bins - 1) // bins
    positions = torch.arange(size, device=like.device)[None]
    weights = ((positions >= starts) & (positions < ends)).to(like.dtype)
    return weights / weights.sum(1, keepdim=True)


@contextlib.contextmanager
def dynamic_pooling(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every ``nn.AdaptiveAvgPool2d`` of ``model`` is a :class:`DynamicAdaptiveAvgPool2d`.

    The modules are put back on exit, also on error.
    """
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name, DynamicAdaptiveAvgPool2d(child.output_size))
                swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def export_kind(cfg: Config) -> str:
    """``'upernet'`` or ``'mask_rcnn'``: what :func:`export_module` exports for the config's model.

    Raises:
        ValueError: the model is neither a UperNet segmentor nor a Mask R-CNN detector.
    """
    model = cfg.get('model') or {}
    model_type = model.get('type')
    head_type = (model.get('decode_head') or {}).get('type')
    if model_type in ('EncoderDecoder', 'mmseg.EncoderDecoder') and head_type in ('UPerHead', 'mmseg.UPerHead'):
        return 'upernet'
    if model_type in ('MaskRCNN', 'mmdet.MaskRCNN'):
        return 'mask_rcnn'
    raise ValueError(f'ONNX export supports UperNet segmentors (EncoderDecoder with a UPerHead) and Mask R-CNN '
                     f'detectors; this config has model.type={model_type!r}, decode_head.type={head_type!r}')


def build_model(cfg: Config, checkpoint: str | Path | None) -> nn.Module:
    """The config's model on the CPU in eval mode, with the checkpoint's weights loaded strictly.

    Args:
        cfg: An mmseg or mmdet config (``default_scope`` names the library).
        checkpoint: An mmengine checkpoint file of the whole model, or None for the random initialisation of the
            constructors (``init_weights`` is not called, so no pretrained file named in the config is read).

    Returns:
        The model, with SyncBN layers turned into BatchNorm (they run as BatchNorm in eval mode anyway).
    """
    export_kind(cfg)
    task_of(cfg)  # an mmdet or mmseg config: its default_scope picks the registry
    init_default_scope(cfg.default_scope)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if checkpoint is not None:
        load_model_checkpoint(model, checkpoint)
    return model.cpu().eval()


def load_model_checkpoint(model: nn.Module, checkpoint: str | Path) -> None:
    """Load a whole-model checkpoint into ``model``, strictly, through the checked ``weights_only`` loader.

    mmengine's checkpoints pickle a HistoryBuffer and numpy values besides the weights; :func:`safe_load` allows
    exactly those. Raises ValueError naming the missing and unexpected keys if the weights do not fit the model.
    """
    loaded = safe_load(checkpoint)
    state_dict = loaded.get('state_dict', loaded)
    state_dict = {key.removeprefix('module.'): value for key, value in state_dict.items()}  # saved from DDP
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f'checkpoint {checkpoint} does not fit the config\'s model: '
                         f'missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}')


def export_module(model: nn.Module, kind: str) -> nn.Module:
    """The module that is exported for ``kind`` (see :func:`export_kind`), in eval mode."""
    wrappers = {'upernet': SegmentorLogits, 'mask_rcnn': DetectorFeatures}
    if kind not in wrappers:
        raise ValueError(f'kind must be one of {sorted(wrappers)}, got {kind!r}')
    return wrappers[kind](model).eval()


def _output_names(module: nn.Module, example: torch.Tensor) -> list[str]:
    with torch.no_grad():
        outputs = module(example)
    if isinstance(outputs, torch.Tensor):
        return ['logits']
    return [f'fpn{i}' for i in range(len(outputs))]


OPTIMIZE_MODES = ('fold', 'full', 'none')


def export_onnx(module: nn.Module,
                example: torch.Tensor,
                path: str | Path,
                dynamic: bool = False,
                opset: int = DEFAULT_OPSET,
                chunk: int = CHUNK,
                levels: int = LEVELS,
                optimize: str = 'fold') -> list[str]:
    """Export ``module(example)`` to an ONNX file (weights inside it) with the export-friendly SS2D scan.

    Args:
        module: From :func:`export_module`; its SS2D layers use :func:`~mmvmamba.deploy.chunked_cross_selective_scan`
            while exporting (see :func:`~mmvmamba.deploy.export_scan`).
        example: ``[1, 3, H, W]`` fp32 input the graph is traced with.
        path: Output ``.onnx`` file.
        dynamic: Height and width of the input are dynamic axes (``height``, ``width``); otherwise the graph is
            valid only at the example's size. Adaptive average pooling (UperNet's pyramid pooling) is then exported
            as :class:`DynamicAdaptiveAvgPool2d` (see :func:`dynamic_pooling`). Default: False.
        opset: ONNX opset, at least :data:`MIN_OPSET`. Default: 18.
        chunk: Steps per chunk of the scan. Default: 64.
        levels: Chunk levels of the scan: maps up to ``chunk ** levels`` positions. Default: 3.
        optimize: ``'fold'``: fold constants and drop unused nodes (seconds); ``'full'``: also the exporter's
            pattern rewrites (minutes on a 2-core CPU for a small model; ONNX Runtime applies its own fusions
            when it loads the file); ``'none'``. Default: 'fold'.

    Returns:
        The output names (``logits``, or ``fpn0``, ``fpn1``, ...).
    """
    import_optional('onnx')
    import_optional('onnxscript')
    if optimize not in OPTIMIZE_MODES:
        raise ValueError(f'optimize must be one of {OPTIMIZE_MODES}, got {optimize!r}')
    if opset < MIN_OPSET:
        raise ValueError(f'opset {opset} is not supported: the torch.onnx exporter writes opset >= {MIN_OPSET}')
    if example.dim() != 4 or example.shape[:2] != (1, 3) or example.dtype != torch.float32:
        raise ValueError(f'example must be a [1, 3, H, W] fp32 tensor, got {tuple(example.shape)} {example.dtype}')
    module = module.eval()
    output_names = _output_names(module, example)
    # Named axes become torch.export.Dim.DYNAMIC and keep their names in the file.
    dynamic_shapes = {'inputs': {2: 'height', 3: 'width'}} if dynamic else None
    pooling = dynamic_pooling(module) if dynamic else contextlib.nullcontext()
    with torch.no_grad(), export_scan(module, chunk=chunk, levels=levels), pooling:
        program = torch.onnx.export(
            module, (example, ),
            input_names=[INPUT_NAME],
            output_names=output_names,
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            optimize=False)
    if optimize == 'full':
        program.optimize()
    elif optimize == 'fold':
        from onnxscript import optimizer

        optimizer.fold_constants(program.model)
        optimizer.remove_unused_nodes(program.model)
    program.save(str(path), external_data=False)
    return output_names


def preprocess_image(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    """A BGR ``uint8`` image ``[H, W, 3]`` through the model's data preprocessor: ``[1, 3, H, W]`` fp32.

    Padding the preprocessor adds (e.g. mmdet's ``pad_size_divisor``) is cropped off, so the result has the image's
    size; it is what the exported graph takes.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'image must be a [H, W, 3] uint8 BGR array, got {image.shape} {image.dtype}')
    height, width = image.shape[:2]
    inputs = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    with torch.no_grad():
        batch = model.data_preprocessor(dict(inputs=[inputs], data_samples=None), training=False)['inputs']
    return batch[..., :height, :width].float().contiguous()


def demo_image(height: int, width: int) -> np.ndarray:
    """A BGR ``uint8`` image of the demo's generated shapes dataset (its first validation image), ``[H, W, 3]``.

    The shapes image is drawn at ``max(H, W)`` and cropped to ``H x W``.
    """
    import cv2

    from mmvmamba.datasets.synthetic_shapes import generate_shapes_dataset

    with tempfile.TemporaryDirectory() as folder:
        root = generate_shapes_dataset(folder, num_train=1, num_val=1, image_size=max(height, width))
        path = root / 'images' / 'validation' / '000000.png'
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f'could not read the generated image {path}')
    return np.ascontiguousarray(image[:height, :width])


@dataclass
class CheckResult:
    """One input run through ONNX Runtime and PyTorch."""
    name: str
    shape: tuple[int, int]
    diffs: dict[str, float]                  # max |ORT - PyTorch| per output
    ort_ms: float
    torch_ms: float
    errors: list[str] = field(default_factory=list)  # shape mismatches, non-finite values

    @property
    def max_diff(self) -> float:
        return max(self.diffs.values()) if self.diffs else float('inf')


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(2):  # warm-up: the first runs at a new size are slower in both runtimes
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def compare_with_onnxruntime(path: str | Path,
                             module: nn.Module,
                             inputs: Sequence[tuple[str, torch.Tensor]],
                             repeats: int = 3,
                             threads: int | None = None) -> list[CheckResult]:
    """Run the ONNX file in ONNX Runtime (CPU) and ``module`` in PyTorch on each input; compare and time them.

    PyTorch runs the model as it is (its normal SS2D path, the reference scan on the CPU), so the diffs cover the
    export scan and the runtime together.

    Args:
        path: The exported file.
        module: The module that was exported (from :func:`export_module`).
        inputs: ``(name, [1, 3, H, W] tensor)`` pairs.
        repeats: Timed runs per input after two warm-up runs; the median is reported. Default: 3.
        threads: Intra-op threads of the ONNX Runtime session. Default: None (``torch.get_num_threads()``, the
            same as PyTorch).

    Returns:
        One :class:`CheckResult` per input.
    """
    ort = import_optional('onnxruntime')
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    output_names = [o.name for o in session.get_outputs()]
    module = module.eval()
    results = []
    for name, x in inputs:
        feed = {INPUT_NAME: x.numpy()}
        with torch.no_grad():
            expected = module(x)
            expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
            torch_ms = _median_ms(lambda: module(x), repeats)
        got = session.run(None, feed)
        ort_ms = _median_ms(lambda: session.run(None, feed), repeats)
        result = CheckResult(name, tuple(x.shape[2:]), {}, ort_ms, torch_ms)
        if len(got) != len(expected):
            result.errors.append(f'{len(got)} ONNX outputs, {len(expected)} PyTorch outputs')
        for out_name, out, ref in zip(output_names, got, expected):
            if tuple(out.shape) != tuple(ref.shape):
                result.errors.append(f'{out_name}: shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)}')
                continue
            if not np.isfinite(out).all():
                result.errors.append(f'{out_name}: {int((~np.isfinite(out)).sum())} non-finite values')
            diff = float(np.abs(out.astype(np.float64) - ref.double().numpy()).max()) if out.size else 0.0
            result.diffs[out_name] = diff if np.isfinite(diff) else float('inf')
        results.append(result)
    return results
