"""``MM_VSSM``: the official detection/segmentation configs' backbone type, built as a :class:`VMamba`.

The official configs (``type='MM_VSSM'`` with the official keyword names) then run unchanged after adding
``custom_imports=dict(imports=['mmvmamba'])``. Each official keyword is translated into our explicit options;
values that no released model uses are refused with the supported ones listed.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS

from .vmamba import VMamba

# forward_type -> whether SS2D has the SiLU(z) gate. "v0" and the z-gated "v2"/"v02"/"v05"/"v3" compute the same
# function with the same parameters (the vanilla det/seg configs leave forward_type at its default "v2").
FORWARD_TYPE_GATE = {'v0': True, 'v2': True, 'v02': True, 'v05': True, 'v3': True, 'v05_noz': False}
NORM_LAYER_CHANNEL_FIRST = {'ln': False, 'ln2d': True}
PATCHEMBED_STEM = {'v1': 'patch', 'v2': 'overlap'}
DOWNSAMPLE_TYPE = {'v1': 'merge', 'v3': 'conv'}
# Official keywords that only take one value in every released model.
FIXED_KWARGS = dict(ssm_act_layer='silu', mlp_act_layer='gelu', ssm_init='v0', gmlp=False, patch_norm=True,
                    posembed=False)
# Official defaults (VSSM / Backbone_VSSM) for keywords a config leaves out.
OFFICIAL_DEFAULTS = dict(patch_size=4, in_chans=3, depths=(2, 2, 9, 2), dims=96, ssm_d_state=16, ssm_ratio=2.0,
                         ssm_dt_rank='auto', ssm_conv=3, ssm_conv_bias=True, ssm_drop_rate=0.0, forward_type='v2',
                         mlp_ratio=4.0, mlp_drop_rate=0.0, drop_path_rate=0.1, norm_layer='ln',
                         downsample_version='v2', patchembed_version='v1', use_checkpoint=False, imgsize=224,
                         out_indices=(0, 1, 2, 3), pretrained=None)


def _lookup(table: dict, name: str, value):
    if value not in table:
        raise ValueError(f'MM_VSSM: {name}={value!r} is not supported; supported: {sorted(table)}')
    return table[value]


def translate_official_kwargs(**kwargs) -> dict:
    """Official ``Backbone_VSSM`` keyword arguments -> :class:`VMamba` keyword arguments."""
    unknown = sorted(set(kwargs) - set(OFFICIAL_DEFAULTS) - set(FIXED_KWARGS) - {'init_cfg'})
    if unknown:
        raise ValueError(f'MM_VSSM: unknown arguments {unknown}; '
                         f'known: {sorted(set(OFFICIAL_DEFAULTS) | set(FIXED_KWARGS) | {"init_cfg"})}')
    for name, value in FIXED_KWARGS.items():
        if kwargs.get(name, value) != value:
            raise ValueError(f'MM_VSSM: {name}={kwargs[name]!r} is not supported; only {value!r} is')
    official = {**OFFICIAL_DEFAULTS, **{k: v for k, v in kwargs.items() if k not in FIXED_KWARGS}}
    if official['ssm_conv'] < 2:
        raise ValueError(f"MM_VSSM: ssm_conv={official['ssm_conv']} (no convolution) is not supported")

    init_cfg = official.get('init_cfg')
    if official['pretrained']:
        if init_cfg is not None:
            raise ValueError('MM_VSSM: give either pretrained or init_cfg, not both')
        init_cfg = dict(type='Pretrained', checkpoint=official['pretrained'])
    dt_rank = official['ssm_dt_rank']
    arch = dict(
        dims=official['dims'],
        depths=official['depths'],
        d_state=official['ssm_d_state'],
        ssm_ratio=official['ssm_ratio'],
        gate=_lookup(FORWARD_TYPE_GATE, 'forward_type', official['forward_type']),
        ssm_conv_bias=official['ssm_conv_bias'],
        mlp_ratio=official['mlp_ratio'],
        stem=_lookup(PATCHEMBED_STEM, 'patchembed_version', official['patchembed_version']),
        downsample=_lookup(DOWNSAMPLE_TYPE, 'downsample_version', official['downsample_version']),
        channel_first=_lookup(NORM_LAYER_CHANNEL_FIRST, 'norm_layer', official['norm_layer']),
        drop_path_rate=official['drop_path_rate'],
    )
    return dict(
        arch=arch,
        in_channels=official['in_chans'],
        patch_size=official['patch_size'],
        out_indices=tuple(official['out_indices']),
        with_cp=official['use_checkpoint'],
        dt_rank=None if dt_rank == 'auto' else int(dt_rank),
        conv_size=official['ssm_conv'],
        ssm_dropout=official['ssm_drop_rate'],
        mlp_dropout=official['mlp_drop_rate'],
        init_cfg=init_cfg,
    )


# Registered in mmengine's root registry: mmdet's and mmseg's registries look up unscoped names there.
@MMENGINE_MODELS.register_module(name='MM_VSSM')
class OfficialVMamba(VMamba):
    """:class:`VMamba` built from the official ``MM_VSSM`` keyword arguments (see :func:`translate_official_kwargs`)."""

    def __init__(self, **official_kwargs):
        super().__init__(**translate_official_kwargs(**official_kwargs))
