"""Triton selective scan (Mamba S6 with grouped B/C): the custom ops, the autograd Function and the public function.

The kernels are in selective_scan_fwd.py and selective_scan_bwd.py; their tiles, grids and launchers in
scan_launch.py. The custom ops (``mmvmamba::selective_scan_fwd/_bwd``) keep the launchers opaque to
``torch.compile``; in eager mode the launchers are called directly (utils.eager_or_custom_op). Derivation in
kernels/README.md.
"""
import torch
import triton

from .scan_launch import scan_config, sequence_scan_bwd, sequence_scan_fwd
from .utils import eager_or_custom_op


@torch.library.custom_op('mmvmamba::selective_scan_fwd', mutates_args=())
def _selective_scan_fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool, block_t: int,
                           seg_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    return sequence_scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, block_t, seg_chunks)


@_selective_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, block_t, seg_chunks):
    batch, rows, length = u.shape
    out = u.new_empty(batch, rows, length, dtype=torch.float32)
    hs = u.new_empty(batch * rows, triton.cdiv(length, block_t), A.shape[1], dtype=torch.float32)
    return out, hs


@torch.library.custom_op('mmvmamba::selective_scan_bwd', mutates_args=())
def _selective_scan_bwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor | None, delta_bias: torch.Tensor | None, dout: torch.Tensor,
                           hs: torch.Tensor, delta_softplus: bool, block_t: int,
                           seg_chunks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor, torch.Tensor, torch.Tensor]:
    return sequence_scan_bwd(u, delta, A, B, C, D, delta_bias, dout, hs, delta_softplus, block_t, seg_chunks)


@_selective_scan_bwd_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, dout, hs, delta_softplus, block_t, seg_chunks):
    rows = u.shape[1]
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), u.new_empty(rows, **(f32 if D is None else dict(dtype=D.dtype))),
            u.new_empty(rows, **(f32 if delta_bias is None else dict(dtype=delta_bias.dtype))))


_scan_fwd = eager_or_custom_op('selective_scan_fwd', sequence_scan_fwd)
_scan_bwd = eager_or_custom_op('selective_scan_bwd', sequence_scan_bwd)


class SelectiveScanFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, block_t, seg_chunks):
        out, hs = _scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, block_t, seg_chunks)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, hs)
        ctx.delta_softplus, ctx.block_t, ctx.seg_chunks = delta_softplus, block_t, seg_chunks
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, delta_bias, hs = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddb = _scan_bwd(
            u, delta, A, B, C, D, delta_bias, dout, hs, ctx.delta_softplus, ctx.block_t, ctx.seg_chunks)
        return (du, ddelta, dA, dB, dC, dD if D is not None else None, ddb if delta_bias is not None else None,
                None, None, None)


def selective_scan(u: torch.Tensor,
                   delta: torch.Tensor,
                   A: torch.Tensor,
                   B: torch.Tensor,
                   C: torch.Tensor,
                   D: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = True,
                   seg_chunks: int | None = None) -> torch.Tensor:
    """Selective scan with the Triton kernels (same math and arguments as :func:`selective_scan_ref`).

    Args:
        u: ``[B, K*D, L]`` fp32/fp16/bf16.
        delta: ``[B, K*D, L]``.
        A: ``[K*D, N]``.
        B: ``[B, K, N, L]``, shared by the D rows of group k.
        C: ``[B, K, N, L]``.
        D: ``[K*D]``. Default: None.
        delta_bias: ``[K*D]``. Default: None.
        delta_softplus: apply softplus to ``delta + delta_bias``. Default: True.
        seg_chunks: chunks per L-segment (parallelism along L). Default: None (chosen from the GPU's size, separately
            for the forward and the backward).

    Returns:
        ``[B, K*D, L]`` fp32.
    """
    block_t = scan_config(u.shape[2], A.shape[1])['block_t']
    return SelectiveScanFunction.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, block_t, seg_chunks or 0)
