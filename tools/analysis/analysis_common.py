"""Model building and small helpers shared by the scripts in tools/analysis.

The scripts import this file as ``analysis_common`` (Python puts a script's own folder first on ``sys.path``).
Building a config's model needs mmdet or mmseg, which are imported here, on use; ``mmvmamba`` never imports them.
"""
import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

DEFAULT_OUT_DIR = 'work_dirs/analysis'

# Swin-T as in mmdet's mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py and mmseg's swin-tiny UperNet.
SWIN_T = dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4,
              qkv_bias=True, drop_path_rate=0.2, patch_norm=True, out_indices=(0, 1, 2, 3))


def load_config(path: str, cfg_options: list[str] | None = None):
    """An mmengine Config with ``custom_imports`` imported and ``KEY=VALUE`` overrides applied."""
    from mmengine.config import Config, DictAction

    if not Path(path).is_file():
        raise FileNotFoundError(f'config file {path} does not exist')
    cfg = Config.fromfile(path)
    if cfg_options:
        parser = argparse.ArgumentParser()
        parser.add_argument('--o', nargs='+', action=DictAction)
        cfg.merge_from_dict(parser.parse_args(['--o', *cfg_options]).o)
    if 'model' not in cfg:
        raise ValueError(f'{path} has no `model` entry')
    return cfg


def task_of(cfg) -> str:
    """``'det'`` or ``'seg'`` from the model config (a decode head means segmentation)."""
    model = cfg.model
    if 'decode_head' in model:
        return 'seg'
    if any(key in model for key in ('rpn_head', 'roi_head', 'bbox_head')):
        return 'det'
    raise ValueError(f"cannot tell whether model type {model.get('type')!r} is a detector (rpn_head/roi_head/"
                     'bbox_head) or a segmentor (decode_head)')


def models_registry(task: str):
    """mmdet's (``det``) or mmseg's (``seg``) MODELS registry with all its modules registered, and its scope."""
    if task == 'det':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    elif task == 'seg':
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    else:
        raise ValueError(f"task must be 'det' or 'seg', got {task!r}")
    register_all_modules(init_default_scope=False)
    return MODELS, 'mmdet' if task == 'det' else 'mmseg'


def _build(cfg_dict, task: str) -> nn.Module:
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope

    import mmvmamba  # noqa: F401  (registers mmvmamba.VMamba even for configs without custom_imports)

    registry, scope = models_registry(task)
    with DefaultScope.overwrite_default_scope(scope):
        model = revert_sync_batchnorm(registry.build(cfg_dict))
    model.eval()  # not chained: some backbones' train() (mmdet ResNet) returns None
    return model


def build_model(cfg, task: str | None = None, checkpoint: str | None = None) -> nn.Module:
    """``cfg.model`` built with mmdet's or mmseg's registry, in eval mode; weights from ``checkpoint`` if given.

    Without a checkpoint nothing is loaded: the ``init_cfg``/``pretrained`` entries are ignored.
    """
    task = task or task_of(cfg)
    model_cfg = cfg.model.copy()
    model_cfg.pop('pretrained', None)
    model = _build(model_cfg, task)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def build_backbone(cfg=None,
                   arch: str | None = None,
                   out_indices: tuple[int, ...] | None = None,
                   checkpoint: str | None = None) -> nn.Module:
    """The backbone of a config (any registered type) or a VMamba preset, in eval mode.

    Args:
        cfg: A det/seg config; its ``model.backbone`` is built (without ``init_cfg``/``pretrained``).
        arch: A VMamba preset instead of ``cfg``.
        out_indices: Override of the backbone's ``out_indices``. Default: None (keep).
        checkpoint: Weights to load: a backbone, classification, detection or segmentation checkpoint (VMamba
            official ones are converted; a ``backbone.`` prefix is stripped). Default: None.
    """
    if (cfg is None) == (arch is None):
        raise ValueError('give exactly one of cfg and arch')
    if arch is not None:
        from mmvmamba import VMamba
        kwargs = {} if out_indices is None else dict(out_indices=out_indices)
        backbone = VMamba(arch=arch, **kwargs)
        backbone.eval()
    else:
        backbone_cfg = cfg.model.backbone.copy()
        backbone_cfg.pop('init_cfg', None)
        backbone_cfg.pop('pretrained', None)
        if out_indices is not None:
            backbone_cfg['out_indices'] = out_indices
        backbone = _build(backbone_cfg, task_of(cfg))
    if checkpoint is not None:
        load_backbone_weights(backbone, checkpoint)
    return backbone


def build_resnet50(checkpoint: str | None = None) -> nn.Module:
    """mmdet's ``ResNet(depth=50)`` (all four stages out), optionally with torchvision-style or mmdet weights."""
    model = _build(dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3), norm_eval=True), 'det')
    if checkpoint is not None:
        load_backbone_weights(model, checkpoint)
    return model


def build_swin_t(checkpoint: str | None = None) -> nn.Module:
    """mmdet's ``SwinTransformer`` with the Swin-T settings, optionally with weights (official ones converted)."""
    model = _build(dict(type='SwinTransformer', **SWIN_T, convert_weights=checkpoint is not None), 'det')
    if checkpoint is not None:
        load_backbone_weights(model, checkpoint)
    return model


def load_weights(model: nn.Module, checkpoint: str) -> None:
    """Load a full det/seg checkpoint (mmengine format) strictly."""
    from mmengine.runner import load_checkpoint

    from mmvmamba.checkpoint import register_checkpoint_safe_globals

    register_checkpoint_safe_globals()  # the numpy values and HistoryBuffer of mmengine's checkpoints
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True)


def load_backbone_weights(backbone: nn.Module, checkpoint: str) -> None:
    """Load backbone weights from a backbone, classification, detection or segmentation checkpoint.

    VMamba goes through :func:`mmvmamba.checkpoint.load_backbone_checkpoint` (official or converted files). Other
    backbones take the keys under ``backbone.`` if there are any (a det/seg checkpoint), else all keys, through
    mmengine's ``load_checkpoint``; Swin-T with ``convert_weights`` converts official Swin weights itself through
    its ``init_cfg``.
    """
    from mmengine.runner import load_checkpoint
    from mmengine.runner.checkpoint import _load_checkpoint

    from mmvmamba import VMamba
    from mmvmamba.checkpoint import load_backbone_checkpoint, register_checkpoint_safe_globals

    if isinstance(backbone, VMamba):
        print(f'{type(backbone).__name__}: {load_backbone_checkpoint(backbone, checkpoint)}')
        return
    if getattr(backbone, 'convert_weights', False):
        backbone.init_cfg = dict(type='Pretrained', checkpoint=checkpoint)
        backbone.init_weights()
        return
    register_checkpoint_safe_globals()
    data = _load_checkpoint(checkpoint, map_location='cpu')
    state = data.get('state_dict', data) if isinstance(data, dict) else data
    prefix = 'backbone.' if any(key.startswith('backbone.') for key in state) else None
    if prefix is None:
        load_checkpoint(backbone, checkpoint, map_location='cpu', strict=False)
    else:
        backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)


def last_stage_output(backbone: nn.Module, x: torch.Tensor, stage: int | None = None) -> torch.Tensor:
    """The output map of ``stage`` (an index into the backbone's outputs; None: the last one)."""
    outs = backbone(x)
    if isinstance(outs, torch.Tensor):
        return outs
    return outs[-1 if stage is None else stage]


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + '\n')


def out_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out-dir', default=DEFAULT_OUT_DIR, help=f'where the outputs go. Default: {DEFAULT_OUT_DIR}')
