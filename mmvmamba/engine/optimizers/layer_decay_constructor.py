"""Layer-wise learning-rate decay for VMamba detectors and segmentors.

mmseg's ``LearningRateDecayOptimizerConstructor`` only knows ConvNeXt, BEiT and MAE parameter names. This one knows
VMamba's: the stem is layer 0, block ``j`` of stage ``i`` is layer ``1 + sum(depths[:i]) + j``, a downsampler goes
with the first block of the stage it feeds, an out-norm with the last block of its stage, and everything outside
the backbone (neck, heads) is the top layer, which keeps the base lr. A parameter of layer ``l`` trains with
``lr * decay_rate ** (top - l)``. All other ``paramwise_cfg`` options (``custom_keys``, ``norm_decay_mult``, ...)
work as in mmengine's ``DefaultOptimWrapperConstructor`` and are applied first.
"""
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from mmvmamba.models import VMamba
from mmvmamba.registry import OPTIM_WRAPPER_CONSTRUCTORS

DECAY_TYPES = ('layer_wise', 'stage_wise')


def vmamba_layer_id(name: str, depths: tuple[int, ...], decay_type: str = 'layer_wise') -> int:
    """Layer index of a parameter name relative to the backbone (``'layers.2.blocks.0.op.A_logs'``).

    Returns:
        0 for the stem, then one index per block (``layer_wise``) or per stage (``stage_wise``).

    Raises:
        ValueError: an unknown ``decay_type`` or a name that is not a VMamba parameter.
    """
    if decay_type not in DECAY_TYPES:
        raise ValueError(f'decay_type must be one of {DECAY_TYPES}, got {decay_type!r}')
    parts = name.split('.')
    layer_wise = decay_type == 'layer_wise'
    if parts[0] == 'patch_embed':
        return 0
    if parts[0] == 'layers' and len(parts) > 3:
        stage = int(parts[1])
        if parts[2] == 'blocks':
            return 1 + sum(depths[:stage]) + int(parts[3]) if layer_wise else stage + 1
        if parts[2] == 'downsample':
            return 1 + sum(depths[:stage + 1]) if layer_wise else stage + 2
    outnorms = {f'outnorm{i}': i for i in range(len(depths))}
    if parts[0] in outnorms:
        stage = outnorms[parts[0]]
        return sum(depths[:stage + 1]) if layer_wise else stage + 1
    raise ValueError(f'{name!r} is not a VMamba backbone parameter name')


def num_layer_ids(depths: tuple[int, ...], decay_type: str) -> int:
    """The top layer index (everything outside the backbone); the stem is 0."""
    return sum(depths) + 1 if decay_type == 'layer_wise' else len(depths) + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class VMambaLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` plus layer-wise (or stage-wise) lr decay over a VMamba backbone.

    ``paramwise_cfg`` takes, besides mmengine's options:

    * ``decay_rate`` (float in (0, 1], required): lr factor per layer below the top.
    * ``decay_type`` (``'layer_wise'`` or ``'stage_wise'``): one layer per block or per stage. Default:
      ``'layer_wise'``.

    Example::

        optim_wrapper = dict(
            constructor='mmvmamba.VMambaLayerDecayOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=6e-5, weight_decay=0.01),
            paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise',
                               custom_keys={'norm': dict(decay_mult=0.)}))

    The model must have a VMamba ``backbone``; its depths set the number of layers.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        if 'decay_rate' not in paramwise_cfg:
            raise ValueError('VMambaLayerDecayOptimWrapperConstructor needs paramwise_cfg.decay_rate')
        self.decay_rate = float(paramwise_cfg.pop('decay_rate'))
        self.decay_type = paramwise_cfg.pop('decay_type', 'layer_wise')
        if not 0.0 < self.decay_rate <= 1.0:
            raise ValueError(f'paramwise_cfg.decay_rate must be in (0, 1], got {self.decay_rate}')
        if self.decay_type not in DECAY_TYPES:
            raise ValueError(f'paramwise_cfg.decay_type must be one of {DECAY_TYPES}, got {self.decay_type!r}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = '', **kwargs) -> None:
        if prefix:
            super().add_params(params, module, prefix=prefix, **kwargs)
            return
        backbone = getattr(module, 'backbone', None)
        if not isinstance(backbone, VMamba):
            raise TypeError('VMambaLayerDecayOptimWrapperConstructor needs a model with a VMamba backbone, got '
                            f'backbone={type(backbone).__name__}')
        depths = tuple(backbone.arch_settings['depths'])
        top = num_layer_ids(depths, self.decay_type)
        backbone_names = {id(param): name for name, param in backbone.named_parameters()}

        start = len(params)
        super().add_params(params, module, prefix=prefix, **kwargs)
        counts = [0] * (top + 1)
        for group in params[start:]:
            layer_id = top
            name = backbone_names.get(id(group['params'][0]))
            if name is not None:
                layer_id = vmamba_layer_id(name, depths, self.decay_type)
            scale = self.decay_rate**(top - layer_id)
            group['lr'] = group.get('lr', self.base_lr) * scale
            group['layer_id'] = layer_id
            group['lr_scale'] = scale
            counts[layer_id] += 1
        print_log(f'VMamba {self.decay_type} lr decay {self.decay_rate}: {top + 1} layers, lr scale '
                  f'{self.decay_rate**top:.4g} (stem) to 1 (neck/heads); parameters per layer: {counts}',
                  logger='current')
