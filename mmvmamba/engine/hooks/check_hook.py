"""Early checks of a VMamba detector or segmentor, for our tools and for mmdet's and mmseg's own ones.

mmengine calls ``before_run`` after building the model, the dataloaders and the optimizer but before it loads the
backbone's pretrained weights, and ``after_load_checkpoint`` before it copies a ``load_from``/``--resume``/test
checkpoint into the model. Both are the first points where a configuration mistake can be seen; without them the
mistakes below surface as a convolution shape error in the first iteration, or not at all (mmengine loads a
checkpoint with ``strict=False`` and only logs the keys that did not fit).
"""
from pathlib import Path

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import BaseLoop

from mmvmamba.checkpoint import register_checkpoint_safe_globals
from mmvmamba.models import VMamba
from mmvmamba.registry import HOOKS

MAX_LISTED_KEYS = 20


def _listed(keys: list[str]) -> str:
    shown = ', '.join(keys[:MAX_LISTED_KEYS])
    return shown + (f', ... ({len(keys) - MAX_LISTED_KEYS} more)' if len(keys) > MAX_LISTED_KEYS else '')


@HOOKS.register_module()
class VMambaCheckHook(Hook):
    """Fail early, saying what to fix, when a VMamba model's config does not fit together.

    Checks, each switchable:

    * ``check_channels``: the neck's (mmdet FPN) or, without a neck, the decode and auxiliary heads' (mmseg)
      ``in_channels`` equal the channels the VMamba backbone outputs.
    * ``check_pretrained``: when training, the backbone's ``init_cfg`` checkpoint file exists.
    * ``strict_load``: a checkpoint given by ``load_from``, ``--resume`` or a test tool has exactly the model's
      keys and shapes (a checkpoint for another variant is refused, listing the keys). Turn it off to fine-tune
      from a checkpoint with other heads.

    Args:
        check_channels: Default: True.
        check_pretrained: Default: True.
        strict_load: Default: True.
    """

    priority = 'VERY_HIGH'

    def __init__(self, check_channels: bool = True, check_pretrained: bool = True, strict_load: bool = True):
        self.check_channels = check_channels
        self.check_pretrained = check_pretrained
        self.strict_load = strict_load

    def before_run(self, runner) -> None:
        # mmengine loads `load_from` / `--resume` after before_run: its checkpoints (HistoryBuffer, numpy values)
        # need our checked allow-list, in mmdet's and mmseg's own tools too (every config has this hook).
        register_checkpoint_safe_globals()
        model = unwrap_model(runner.model)
        backbone = getattr(model, 'backbone', None)
        if not isinstance(backbone, VMamba):
            raise TypeError(f'VMambaCheckHook expects a model whose backbone is a VMamba, got '
                            f'{type(backbone).__name__}; remove the hook from custom_hooks for other backbones')
        if self.check_channels:
            check_channels(model, backbone)
        # runner.train() builds its train loop before calling before_run; val() and test() leave it a config.
        if self.check_pretrained and isinstance(getattr(runner, '_train_loop', None), BaseLoop):
            check_pretrained(backbone)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.strict_load:
            check_checkpoint_fits(unwrap_model(runner.model), checkpoint)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The detector or segmentor inside a (Distributed)DataParallel or test-time augmentation wrapper.

    mmengine loads a checkpoint into that inner model too (``mmengine.runner.checkpoint.load_state_dict``).
    """
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def backbone_out_channels(backbone: VMamba) -> list[int]:
    """Channels of the maps the backbone returns, in order."""
    return [backbone.dims[i] for i in backbone.out_indices]


def check_channels(model: nn.Module, backbone: VMamba) -> None:
    """Raise ``ValueError`` when the neck or heads do not take the backbone's output channels."""
    out_channels = backbone_out_channels(backbone)
    neck = getattr(model, 'neck', None)
    if neck is not None:
        necks = neck if isinstance(neck, nn.Sequential) else [neck]
        in_channels = getattr(necks[0], 'in_channels', None)
        if in_channels is not None and list(in_channels) != out_channels:
            raise ValueError(
                f'model.neck.in_channels={list(in_channels)} does not match the VMamba backbone, which returns '
                f'{out_channels} channels (dims={list(backbone.dims)}, out_indices={list(backbone.out_indices)}): '
                f'set model.neck.in_channels={out_channels}')
        return
    for head_name in ('decode_head', 'auxiliary_head'):
        heads = getattr(model, head_name, None)
        if heads is None:
            continue
        for k, head in enumerate(heads if isinstance(heads, nn.ModuleList) else [heads]):
            name = f'model.{head_name}' + (f'[{k}]' if isinstance(heads, nn.ModuleList) else '')
            _check_head(name, head, out_channels)


def _check_head(name: str, head: nn.Module, out_channels: list[int]) -> None:
    in_index = getattr(head, 'in_index', None)
    in_channels = getattr(head, 'in_channels', None)
    if in_index is None or in_channels is None:
        return
    indices = list(in_index) if isinstance(in_index, (list, tuple)) else [in_index]
    bad = [i for i in indices if not -len(out_channels) <= i < len(out_channels)]
    if bad:
        raise ValueError(f'{name}.in_index={in_index} points past the {len(out_channels)} maps the VMamba backbone '
                         f'returns (channels {out_channels})')
    expected = [out_channels[i] for i in indices]
    given = list(in_channels) if isinstance(in_channels, (list, tuple)) else [in_channels]
    if getattr(head, 'input_transform', None) == 'resize_concat':
        expected = [sum(expected)]
    if given != expected:
        fix = expected if isinstance(in_channels, (list, tuple)) else expected[0]
        raise ValueError(f'{name}.in_channels={in_channels} does not match the VMamba backbone: its maps '
                         f'{indices} have {expected} channels (all maps: {out_channels}); '
                         f'set {name}.in_channels={fix}')


def check_pretrained(backbone: VMamba) -> None:
    """Raise ``FileNotFoundError`` when the backbone is to load a pretrained file that is not there."""
    init_cfg = backbone.init_cfg
    if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained':
        return
    checkpoint = str(init_cfg.get('checkpoint', ''))
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f'the VMamba backbone is to start from the pretrained checkpoint {checkpoint!r}, which does not exist. '
            'Download the classification checkpoint of this variant (file names and URLs: docs/model_zoo.md) and '
            'pass it with --cfg-options model.backbone.init_cfg.checkpoint=/path/to/file.pth, or train from '
            'scratch with --cfg-options model.backbone.init_cfg=None')


def check_checkpoint_fits(model: nn.Module, checkpoint: dict) -> None:
    """Raise ``ValueError`` listing the keys when ``checkpoint`` is not exactly a state dict of ``model``."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    # mmengine strips a DataParallel/DistributedDataParallel 'module.' prefix when it loads.
    state_dict = {(key[len('module.'):] if key.startswith('module.') else key): value
                  for key, value in state_dict.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [f'{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}' for key, value in expected.items()
                  if key in state_dict and hasattr(state_dict[key], 'shape')
                  and tuple(state_dict[key].shape) != tuple(value.shape)]
    if missing or unexpected or mismatched:
        raise ValueError(
            'the checkpoint does not fit this model (is it for another VMamba variant or another config?)\n'
            f'  missing keys ({len(missing)}): {_listed(missing)}\n'
            f'  unexpected keys ({len(unexpected)}): {_listed(unexpected)}\n'
            f'  shape mismatches, checkpoint vs model ({len(mismatched)}): {_listed(mismatched)}\n'
            'Use the config that goes with the checkpoint (docs/model_zoo.md). To fine-tune from a checkpoint '
            'with other heads on purpose, set custom_hooks=[dict(type=\'mmvmamba.VMambaCheckHook\', '
            'strict_load=False)].')
