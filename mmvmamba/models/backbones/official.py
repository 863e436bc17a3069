"""``MM_VSSM``: the official detection/segmentation configs' backbone type, built as a :class:`VMamba`.

The official configs (``type='MM_VSSM'`` with the official keyword names) then run unchanged after adding
``custom_imports=dict(imports=['mmvmamba'])``. Each official keyword is translated into our explicit options;
values that no released model uses are refused with the supported ones listed.

The official configs inherit a stock Swin config (``swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``,
``swin/swin-{tiny,small,base}-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py``) and replace the
backbone's ``type`` without ``_delete_``, so the backbone dict still holds the Swin arguments those bases set. The
official ``MM_VSSM`` swallows them unread, Swin's ``init_cfg`` included, and loads ``pretrained=PATH`` itself.
Here they are accepted and ignored with one warning that names them, and ``pretrained`` is loaded by our strict
loader (see :func:`translate_official_kwargs`).
"""
import logging
import os

from mmengine.logging import print_log
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
# Arguments of mmdet's and mmseg's SwinTransformer that the stock Swin base configs set, that are not official
# keywords and mean nothing to VMamba: ignored. The Swin arguments those bases share with the official keywords (depths,
# mlp_ratio, drop_path_rate, patch_norm, patch_size, out_indices) are the official ones: the official configs set
# dims/depths/mlp_ratio themselves, and the vanilla ones inherit Swin's drop_path_rate as the official code does.
SWIN_IGNORED_KWARGS = frozenset({
    # mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_{1x,ms-crop-3x}_coco.py
    'embed_dims', 'num_heads', 'window_size', 'qkv_bias', 'qk_scale', 'drop_rate', 'attn_drop_rate',
    'convert_weights',
    # mmseg::_base_/models/upernet_swin.py, under mmseg::swin/swin-*-patch4-window7-in1k-pre_upernet_*.py
    'pretrain_img_size', 'strides', 'use_abs_pos_embed', 'act_cfg', 'norm_cfg',
})
# mmdet's gradient-checkpointing switch (Swin's with_cp=False is in every stock base): honoured, like use_checkpoint.
SWIN_WITH_CP = 'with_cp'
KNOWN_KWARGS = frozenset(OFFICIAL_DEFAULTS) | frozenset(FIXED_KWARGS) | SWIN_IGNORED_KWARGS | {SWIN_WITH_CP, 'init_cfg'}


def _lookup(table: dict, name: str, value):
    if value not in table:
        raise ValueError(f'MM_VSSM: {name}={value!r} is not supported; supported: {sorted(table)}')
    return table[value]


def _backbone_init_cfg(kwargs: dict, swin_leftovers: list[str]) -> dict | None:
    """The ``init_cfg`` our :class:`VMamba` loads with, from ``pretrained`` and ``init_cfg``.

    ``pretrained`` (the official way) becomes ``dict(type='Pretrained', checkpoint=pretrained)``, so it is loaded by
    ``VMamba.init_weights`` with our strict loader, as mmdet's Swin turns its deprecated ``pretrained`` into an
    ``init_cfg``; empty or None loads nothing. An ``init_cfg`` that comes with Swin leftovers is the Swin base's
    (a Swin checkpoint) and is dropped; without them it is the user's own and is kept.
    """
    pretrained = kwargs.get('pretrained')
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f'MM_VSSM: pretrained must be a checkpoint path, empty or None, got {pretrained!r}')
    init_cfg = None if swin_leftovers else kwargs.get('init_cfg')
    if not pretrained:
        return init_cfg
    if init_cfg is not None:
        raise ValueError(f'MM_VSSM: give either pretrained ({pretrained!r}) or init_cfg ({init_cfg!r}), not both')
    return dict(type='Pretrained', checkpoint=os.fspath(pretrained))


def translate_official_kwargs(**kwargs) -> dict:
    """Official ``MM_VSSM`` keyword arguments -> :class:`VMamba` keyword arguments.

    Accepted besides the official keywords (``OFFICIAL_DEFAULTS``, ``FIXED_KWARGS``):

    * ``SWIN_IGNORED_KWARGS``, the Swin arguments that an official config inherits from its stock Swin base, and
      then also that base's ``init_cfg``: ignored, with one warning naming them (the official code swallows them).
    * ``with_cp`` (every Swin base sets it, mmdet's usual switch): gradient checkpointing of every block when it or
      the official ``use_checkpoint`` is true. It only trades compute for memory, so honouring it never changes
      results, and a user who sets ``model.backbone.with_cp=True`` gets what they asked for.
    * ``init_cfg`` without Swin leftovers: our ``init_cfg`` (e.g. ``dict(type='Pretrained', checkpoint=PATH)``).

    ``pretrained=PATH`` is loaded by ``init_weights`` (which mmengine's runner calls before training) with the strict
    loader that ``init_cfg`` uses, not at construction as in the official code; ``''`` and None load nothing.
    mmseg's ``EncoderDecoder`` hands its own ``pretrained`` down only when the backbone's is None (the official
    configs set ``''``, so set ``model.backbone.pretrained``). Any other unknown keyword is an error that lists them.
    """
    unknown = sorted(set(kwargs) - KNOWN_KWARGS)
    if unknown:
        raise ValueError(f'MM_VSSM: unknown arguments {unknown}; known: official {sorted(OFFICIAL_DEFAULTS)} and '
                         f'{sorted(FIXED_KWARGS)}, init_cfg, with_cp, and the Swin arguments the stock Swin base '
                         f'configs leave behind (ignored) {sorted(SWIN_IGNORED_KWARGS)}')
    for name, value in FIXED_KWARGS.items():
        if kwargs.get(name, value) != value:
            raise ValueError(f'MM_VSSM: {name}={kwargs[name]!r} is not supported; only {value!r} is')
    swin_leftovers = sorted(set(kwargs) & SWIN_IGNORED_KWARGS)
    init_cfg = _backbone_init_cfg(kwargs, swin_leftovers)
    official = {**OFFICIAL_DEFAULTS, **{k: v for k, v in kwargs.items() if k in OFFICIAL_DEFAULTS}}
    if official['ssm_conv'] < 2:
        raise ValueError(f"MM_VSSM: ssm_conv={official['ssm_conv']} (no convolution) is not supported")

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
    if swin_leftovers:
        message = (f'MM_VSSM: ignoring the Swin arguments {swin_leftovers} that the Swin base config leaves in the '
                   'backbone dict')
        if kwargs.get('init_cfg') is not None:
            message += (f" and its init_cfg {kwargs['init_cfg']!r}; such a config loads backbone weights from "
                        'pretrained=PATH (to use init_cfg, replace the backbone dict with _delete_=True)')
        print_log(message, logger='current', level=logging.WARNING)
    return dict(
        arch=arch,
        in_channels=official['in_chans'],
        patch_size=official['patch_size'],
        out_indices=tuple(official['out_indices']),
        with_cp=bool(official['use_checkpoint'] or kwargs.get(SWIN_WITH_CP, False)),
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
