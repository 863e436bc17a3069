"""SS2D, the 2-D selective-scan mixer of VMamba.

``in_proj -> depthwise conv -> SiLU -> cross-scan -> x_proj / dt_proj -> selective scan -> cross-merge
-> out_norm [-> * SiLU(z)] -> out_proj``. Parameter names and shapes are the official ones (checkpoint format).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvmamba_kernels import cross_selective_scan
from .conv import OpaqueConv2d
from .layout import linear_layer, norm_layer

NUM_DIRECTIONS = 4


class SS2D(nn.Module):
    """2-D selective scan over four directions.

    Args:
        dim: Channels ``C`` of the input and output.
        d_state: State size ``N`` per channel. Default: 16.
        ssm_ratio: Inner width ``D = int(ssm_ratio * C)``. Default: 2.0.
        dt_rank: Rank ``R`` of the step-size projection; ``None`` means ``ceil(C / 16)``. Default: None.
        gate: Multiply the output by ``SiLU(z)`` from a second half of ``in_proj`` (the vanilla "v0" models;
            the v2 "v05_noz" models have no gate). Default: True.
        conv_size: Kernel size of the depthwise convolution. Default: 3.
        conv_bias: Whether the depthwise convolution has a bias. Default: True.
        dropout: Dropout after ``out_proj``. Default: 0.
        channel_first: Work on ``[B, C, H, W]`` maps instead of ``[B, H, W, C]``. Default: False.
    """

    # The fused scan stage (cross_selective_scan's signature); mmvmamba.deploy.export_scan sets one per instance.
    scan_fn = staticmethod(cross_selective_scan)

    def __init__(self,
                 dim: int,
                 d_state: int = 16,
                 ssm_ratio: float = 2.0,
                 dt_rank: int | None = None,
                 gate: bool = True,
                 conv_size: int = 3,
                 conv_bias: bool = True,
                 dropout: float = 0.0,
                 channel_first: bool = False):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.d_inner = d_inner
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        self.gate = gate
        self.channel_first = channel_first

        self.in_proj = linear_layer(dim, d_inner * (2 if gate else 1), bias=False, channel_first=channel_first)
        self.conv2d = OpaqueConv2d(d_inner, d_inner, conv_size, padding=(conv_size - 1) // 2, groups=d_inner,
                                   bias=conv_bias)
        k = NUM_DIRECTIONS
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        # The gate multiplies the normed output in fp32 (as the official v0); without it, it goes straight to out_proj.
        self.out_norm = norm_layer(d_inner, channel_first, output='fp32' if gate else 'autocast')
        self.out_proj = linear_layer(d_inner, dim, bias=False, channel_first=channel_first)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """From-scratch initialisation of the SSM parameters (Mamba's "v0" scheme)."""
        for weight in self.x_proj_weight:  # each direction like an nn.Linear(D, R + 2N)
            bound = 1 / math.sqrt(self.d_inner)
            weight.uniform_(-bound, bound)
        bound = self.dt_rank**-0.5
        self.dt_projs_weight.uniform_(-bound, bound)
        # Bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], so softplus(bias) starts in that range.
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` (channel-first) or ``[B, H, W, C]`` -> same layout and shape."""
        channel_dim = 1 if self.channel_first else -1
        x = self.in_proj(x)
        if self.gate:
            x, z = x.chunk(2, dim=channel_dim)
            z = F.silu(z)
        if not self.channel_first:
            x = x.permute(0, 3, 1, 2)
        x = F.silu(self.conv2d(x))                   # [B, D, H, W]
        y = self.scan(x)                             # [B, D, H, W], fp32
        if not self.channel_first:
            y = y.permute(0, 2, 3, 1)
        y = self.out_norm(y)                         # in fp32, as the official models
        if self.gate:
            y = y * z
        return self.dropout(self.out_proj(y.to(x.dtype)))

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """Cross-scan, selective scan and cross-merge of a ``[B, D, H, W]`` map; returns fp32 ``[B, D, H, W]``.

        x_proj and dt_proj are 1x1 projections, so they commute with the scan orders: they are applied in the
        spatial layout, and the fused scan reads every direction's values through its index map (on the GPU the
        ``[B, 4, D, L]`` cross-scanned copies are never built). x_proj is a matmul that produces the dense
        ``[B, 4, R + 2N, H, W]`` layout the scan reads; dt_proj is applied inside the scan op.
        """
        height, width = x.shape[2:]
        k, rank, d_state = NUM_DIRECTIONS, self.dt_rank, self.d_state
        x = x.contiguous()
        x_dbl = torch.matmul(self.x_proj_weight.flatten(0, 1), x.flatten(2))       # [B, 4 * (R + 2N), L]
        x_dbl = x_dbl.unflatten(1, (k, rank + 2 * d_state))
        dt, B, C = torch.split(x_dbl, [rank, d_state, d_state], dim=2)           # [B, 4, *, L]
        spatial = (height, width)
        # dt_proj is handed to the scan, which forms the step sizes ([B, 4, D, L], four times x) itself and keeps
        # only the low-rank dt for the backward.
        return self.scan_fn(
            x,
            dt.unflatten(-1, spatial),
            -torch.exp(self.A_logs.float()),
            B.unflatten(-1, spatial),
            C.unflatten(-1, spatial),
            D=self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().flatten(),
            delta_softplus=True,
            delta_proj_weight=self.dt_projs_weight)
