"""VMamba backbone (Visual State Space Model, arXiv 2401.10166) for dense prediction.

Parameter names and shapes are those of the official ``Backbone_VSSM`` (MzeroMiko/VMamba), so the released
classification, Mask R-CNN and UperNet checkpoints load as they are.
"""
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from mmvmamba.checkpoint import load_backbone_checkpoint
from mmvmamba.registry import MODELS
from ..layers.embed import PatchMerging2D, conv_downsample, overlap_stem, patch_stem
from ..layers.layout import norm_layer
from ..layers.vss_block import VSSBlock
from .compiled_forward import CompiledForward
from .cuda_graph import CudaGraphCache
from .vmamba_arch import resolve_arch


class VMambaStage(nn.Module):
    """The blocks of one stage followed by the downsampler to the next (``nn.Identity`` after the last)."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module, with_cp: bool = False):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample
        self.with_cp = with_cp

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


@MODELS.register_module()
class VMamba(BaseModule):
    """VMamba backbone.

    Args:
        arch: A preset name from ``ARCH_SETTINGS`` (``'tiny'``, ``'small'``, ``'base'``, ``'tiny-s2l5'``,
            ``'small-s1l20'``, ``'base-s1l20'``, ``'vanilla-tiny'``, ...) or a dict defining every field of
            ``ARCH_FIELDS``. Default: ``'tiny'``.
        in_channels: Input image channels. Default: 3.
        patch_size: Total stride of the stem. Default: 4.
        out_indices: Stages whose (normed) outputs are returned. Default: (0, 1, 2, 3).
        frozen_stages: Freeze the stem (0) and stages up to this index + 1 (parameters and train mode);
            -1 freezes nothing. Default: -1.
        with_cp: Gradient checkpointing of every block. Default: False.
        compile: Run the forward (and so the backward) through ``torch.compile`` with dynamic height and width
            (see :mod:`.compiled_forward`), for inputs whose H and W are multiples of 32: ``'auto'`` does it for
            CUDA inputs where Inductor works (Triton installed) and runs eagerly elsewhere (CPU); ``True`` requires
            it; ``False`` never compiles. Off by default until its speed and its recompiles are measured on the
            GPU (docs/benchmarks.md). ``'auto'`` stays eager with ``with_cp`` or ``cuda_graph``. Default: False.
        cuda_graph: Replay the forward and backward of input shapes that repeat from CUDA graphs (see
            :mod:`.cuda_graph`): for fixed-size inputs such as segmentation crops, where the eager step waits on the
            host. A shape is captured on its third call; call backward once per training forward. Default: False.
        dt_rank: Rank of SS2D's step projection; None gives ``ceil(C / 16)`` per stage. Default: None.
        conv_size: Kernel of SS2D's depthwise convolution. Default: 3.
        ssm_dropout: Dropout after SS2D's out_proj. Default: 0.
        mlp_dropout: Dropout inside the MLP. Default: 0.
        init_cfg: mmengine init config. ``dict(type='Pretrained', checkpoint=PATH)`` loads an official
            classification, detection or segmentation checkpoint or a converted one; add ``use_ema=True`` to
            take a classification checkpoint's ``model_ema``. Default: None (from-scratch initialisation).
        **arch_overrides: Any field of ``ARCH_FIELDS`` (``dims``, ``depths``, ``d_state``, ``ssm_ratio``, ``gate``,
            ``ssm_conv_bias``, ``mlp_ratio``, ``stem``, ``downsample``, ``channel_first``, ``drop_path_rate``)
            to replace the preset's value.
    """

    def __init__(self,
                 arch: str | dict = 'tiny',
                 in_channels: int = 3,
                 patch_size: int = 4,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 compile: bool | str = False,
                 cuda_graph: bool = False,
                 dt_rank: int | None = None,
                 conv_size: int = 3,
                 ssm_dropout: float = 0.0,
                 mlp_dropout: float = 0.0,
                 init_cfg: dict | None = None,
                 **arch_overrides):
        super().__init__(init_cfg=init_cfg)
        settings = resolve_arch(arch, **arch_overrides)
        out_indices = tuple(out_indices)
        num_stages = len(settings['depths'])
        if any(not 0 <= i < num_stages for i in out_indices):
            raise ValueError(f'out_indices must be stage indices in 0..{num_stages - 1}, got {out_indices}')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in -1..{num_stages}, got {frozen_stages}')
        self.arch_settings = settings
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.channel_first = settings['channel_first']
        self.dims = settings['dims']
        channel_first = self.channel_first

        stem = patch_stem if settings['stem'] == 'patch' else overlap_stem
        self.patch_embed = stem(in_channels, self.dims[0], patch_size, channel_first)

        depths = settings['depths']
        rates = torch.linspace(0, settings['drop_path_rate'], sum(depths), device='cpu').tolist()
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(self.dims, depths)):
            blocks = [
                VSSBlock(
                    dim,
                    drop_path=rates[sum(depths[:i]) + j],
                    mlp_ratio=settings['mlp_ratio'],
                    mlp_dropout=mlp_dropout,
                    channel_first=channel_first,
                    d_state=settings['d_state'],
                    ssm_ratio=settings['ssm_ratio'],
                    dt_rank=dt_rank,
                    gate=settings['gate'],
                    conv_size=conv_size,
                    conv_bias=settings['ssm_conv_bias'],
                    dropout=ssm_dropout) for j in range(depth)
            ]
            if i == num_stages - 1:
                downsample = nn.Identity()
            elif settings['downsample'] == 'conv':
                downsample = conv_downsample(dim, self.dims[i + 1], channel_first)
            else:
                downsample = PatchMerging2D(dim, self.dims[i + 1], channel_first)
            self.layers.append(VMambaStage(blocks, downsample, with_cp))
        for i in out_indices:
            self.add_module(f'outnorm{i}', norm_layer(self.dims[i], channel_first))

        self.apply(_init_linear_and_norm)
        self._freeze_stages()
        if cuda_graph and with_cp:
            raise ValueError('cuda_graph and with_cp cannot be combined: checkpointing recomputes the forward '
                             'inside the backward, which a captured backward cannot do')
        self.cuda_graphs = CudaGraphCache() if cuda_graph else None
        if compile is True and (with_cp or cuda_graph):
            raise ValueError('compile=True cannot be combined with with_cp or cuda_graph; pass compile="auto" or False')
        self.compiled_forward = CompiledForward(False if with_cp or cuda_graph else compile)

    @property
    def with_cp(self) -> bool:
        return self.layers[0].with_cp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[B, in_channels, H, W]`` images -> tuple of ``[B, C_i, H_i, W_i]`` maps for ``i in out_indices``."""
        self._check_input(x)
        if self.cuda_graphs is not None:
            return self.cuda_graphs(self, self._forward_features, x)
        return self.compiled_forward(self._forward_features, x)

    def _forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Channel-first models keep their [B, C, H, W] maps stored channels-last from the stem's first norm on
        # (LayerNorm2d writes that layout, and the convolutions keep it), so LayerNorm2d and Linear2d work on
        # contiguous channel rows. The image itself stays NCHW: a 3-channel channels-last convolution is slow.
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer.forward_blocks(x)
            if i in self.out_indices:
                out = getattr(self, f'outnorm{i}')(x)
                outs.append((out if self.channel_first else out.permute(0, 3, 1, 2)).contiguous())
            x = layer.downsample(x)
        return tuple(outs)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f'VMamba expects a 4-D [B, C, H, W] input, got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'VMamba expects {self.in_channels} input channels, got {x.shape[1]} '
                             f'(input shape {tuple(x.shape)})')
        min_size = self.patch_size if self.arch_settings['stem'] == 'patch' else 1
        if min(x.shape[2:]) < min_size:
            raise ValueError(f'VMamba with the {self.arch_settings["stem"]!r} stem needs H and W >= {min_size}, '
                             f'got {tuple(x.shape[2:])}')

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed]
        for i in range(self.frozen_stages):
            frozen.append(self.layers[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'outnorm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def _apply(self, fn, recurse=True):
        # Moving or casting the parameters gives them new storage, which the captured graphs do not read.
        if getattr(self, 'cuda_graphs', None) is not None:
            self.cuda_graphs.clear()
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> 'VMamba':
        super().train(mode)
        self._freeze_stages()
        return self

    def init_weights(self) -> None:
        """Load the checkpoint of ``init_cfg``'s ``Pretrained`` entry; otherwise mmengine's default behaviour.

        ``init_cfg`` is a dict or, as mmengine allows, a list of dicts: as in mmengine, the other entries are applied
        first and the checkpoint is loaded last.
        """
        init_cfgs = [self.init_cfg] if isinstance(self.init_cfg, dict) else list(self.init_cfg or [])
        if not all(isinstance(cfg, dict) for cfg in init_cfgs):
            raise TypeError(f'init_cfg must be a dict or a list of dicts, got {self.init_cfg!r}')
        pretrained = [cfg for cfg in init_cfgs if cfg.get('type') == 'Pretrained']
        if not pretrained:
            super().init_weights()
            return
        if len(pretrained) > 1:
            raise ValueError(f'init_cfg has {len(pretrained)} Pretrained entries; give one checkpoint: {self.init_cfg}')
        others = [cfg for cfg in init_cfgs if cfg.get('type') != 'Pretrained']
        if others:
            from mmengine.model import initialize
            initialize(self, others)
        cfg = dict(pretrained[0])
        if 'checkpoint' not in cfg:
            raise ValueError(f"init_cfg of type 'Pretrained' needs a 'checkpoint' path, got {cfg}")
        unknown = sorted(set(cfg) - {'type', 'checkpoint', 'use_ema', 'prefix', 'map_location'})
        if unknown:
            raise ValueError(f"unknown keys {unknown} in VMamba's Pretrained init_cfg")
        logger = MMLogger.get_current_instance()
        report = load_backbone_checkpoint(
            self,
            cfg['checkpoint'],
            use_ema=cfg.get('use_ema', False),
            prefix=cfg.get('prefix'),
            map_location=cfg.get('map_location', 'cpu'))
        logger.info(f"VMamba: loaded {cfg['checkpoint']}: {report}")
        self._is_init = True


def _init_linear_and_norm(module: nn.Module) -> None:
    """From-scratch initialisation of the official models: trunc-normal linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
