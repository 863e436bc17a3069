"""Triton fused SS2D scan stage: cross-scan + selective scan + cross-merge without the ``[B, 4, D, L]`` copies.

The forward is the selective-scan kernel of selective_scan_fwd.py run with ``SPATIAL=True``: step ``t`` of direction
``k`` reads ``x``, ``delta``, ``B`` and ``C`` at map position ``p = pos_k(t)`` (the cross-scan orders:
``seq_to_spatial_index`` there), and the output is accumulated over the four directions into the spatial
``[B, D, H, W]`` tensor with fp32 atomics, so the ``[B, 4, D, L]`` copies are never materialised. The backward
does the same (``dx`` by atomics). On long maps each direction instead runs the sequence-layout kernel on
cross-scanned copies, which measured faster there (the spatial kernel's column-order directions read the map with a
stride of a row; docs/benchmarks.md): beyond ``SPATIAL_FWD_MAX_LENGTH`` for the forward, ``SPATIAL_BWD_MAX_LENGTH``
for the backward (both in scan_launch.py). With a low-rank ``delta`` that route copies the low-rank step sizes
(``R`` rows, not ``D``) into the scan orders and forms the full ones there. Under
``torch.use_deterministic_algorithms(True)`` both directions take the sequence-layout route, whose sums have a fixed
order (the atomics' order varies from run to run).
"""
import torch
import triton

from .scan_launch import (
    launch_cross_merge,
    launch_cross_scan,
    launch_scan_bwd,
    launch_scan_fwd,
    launch_seq_to_spatial,
    launch_spatial_to_seq,
    scan_config,
    sequence_route,
)
from .utils import eager_or_custom_op, input_guard


def _pad_rank(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` with zeros appended along ``dim`` (the low rank R) up to a multiple of 8: with R = ceil(d_model / 16)
    (6 and 12 for VMamba-T's first stages) cuBLAS picks 2-element-aligned GEMM kernels several times slower
    (measured on an H100), and zero rows change no product."""
    pad = -t.shape[dim] % 8
    if not pad:
        return t
    widths = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [0, pad]
    return torch.nn.functional.pad(t, widths)


def _expand(dt: torch.Tensor, weight: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Full step sizes ``[B, 4, D, *]`` from low-rank ``dt [B, 4, R, *]`` (``weight [4, D, R]``), in ``dtype``."""
    if weight is None:
        return dt
    full = torch.matmul(_pad_rank(weight.to(dtype), -1), _pad_rank(dt.flatten(3).to(dtype), -2))
    return full.unflatten(3, dt.shape[3:])


def _sequence_layout(x, delta, B, C, weight, delta_dtype) -> tuple[torch.Tensor, ...]:
    """The sequence-layout inputs of the four directions: cross-scanned ``x`` ``[B, 4*D, L]``, the per-direction
    orders of ``delta`` ``[B, 4*D, L]`` (with ``weight``: of the low-rank ``delta``, then expanded), ``B`` and ``C``
    ``[B, 4, N, L]``; and the low-rank ``delta`` in the scan orders (``None`` without ``weight``)."""
    batch, dim, height, width = x.shape
    rows, length = 4 * dim, height * width
    dt_s = launch_spatial_to_seq(delta)
    delta_s = dt_s if weight is None else _expand(dt_s, weight, delta_dtype)
    return (launch_cross_scan(x).view(batch, rows, length), delta_s.view(batch, rows, length),
            launch_spatial_to_seq(B), launch_spatial_to_seq(C),
            None if weight is None else dt_s)


def _low_rank_grads(ddelta, dt, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_expand` for ``ddelta [B, 4, D, *]``: ``(d dt [B, 4, R, *], d weight [4, D, R])``."""
    rank = weight.shape[-1]
    flat = ddelta.flatten(3)
    ddt = torch.matmul(_pad_rank(weight.to(ddelta.dtype), -1).transpose(1, 2), flat)[:, :, :rank]
    dweight = torch.matmul(flat, _pad_rank(dt.flatten(3).to(ddelta.dtype), -2).transpose(2, 3))
    # contiguous, as the custom op's fake implementation promises
    return (ddt.unflatten(3, dt.shape[3:]).contiguous(),
            dweight.sum(0, dtype=torch.float32)[..., :rank].to(weight.dtype).contiguous())


@input_guard
def cross_selective_scan_fwd(x, delta, A, B, C, D, delta_bias, delta_proj_weight, delta_dtype: torch.dtype,
                              delta_softplus: bool, block_t: int, seg_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused forward: ``(out [B, D, H, W] fp32, chunk-start states [B*4*D, NCHUNK, N] fp32)``.

    With ``delta_proj_weight``, ``delta`` is the low-rank dt and the full step sizes are formed in ``delta_dtype``.
    """
    batch, dim, height, width = x.shape
    length = height * width
    if not sequence_route(length, 'fwd'):
        full = _expand(delta, delta_proj_weight, delta_dtype)
        return launch_scan_fwd(x, full, A, B, C, D, delta_bias, delta_softplus, block_t, seg_chunks, batch, dim, length,
                           (height, width))
    # the four directions in the sequence layout, summed by the merge kernel
    xs, delta_s, B_s, C_s, _ = _sequence_layout(x, delta, B, C, delta_proj_weight, delta_dtype)
    out, hs = launch_scan_fwd(xs, delta_s, A, B_s, C_s, D, delta_bias, delta_softplus, block_t, seg_chunks, batch, dim,
                          length, None)
    return launch_cross_merge(out.view(batch, 4, dim, length), height, width), hs


@input_guard
def cross_selective_scan_bwd(x, delta, A, B, C, D, delta_bias, delta_proj_weight, delta_dtype: torch.dtype, dout,
                              hs, delta_softplus: bool, block_t: int, seg_chunks: int) -> tuple[torch.Tensor, ...]:
    """Launch the fused backward: ``(dx, ddelta, dA, dB, dC, dD, ddelta_bias, ddelta_proj_weight)`` in the spatial
    layout; ``ddelta`` has ``delta``'s shape (low-rank with ``delta_proj_weight``), and ``ddelta_proj_weight`` is
    empty without it."""
    batch, dim, height, width = x.shape
    length = height * width
    weight = delta_proj_weight
    if not sequence_route(length, 'bwd'):
        full = _expand(delta, weight, delta_dtype)
        dx, ddelta, dA, dB, dC, dD, ddb = launch_scan_bwd(x, full, A, B, C, D, delta_bias, dout, hs, delta_softplus,
                                                      block_t, seg_chunks, batch, dim, length, (height, width))
        dweight = x.new_empty(0)
        if weight is not None:
            ddelta, dweight = _low_rank_grads(ddelta, delta, weight)
        return dx, ddelta, dA, dB.view(B.shape), dC.view(C.shape), dD, ddb, dweight
    # sequence layout; dout is cross-scanned like x (the adjoint of the forward's merge)
    xs, delta_s, B_s, C_s, dt_s = _sequence_layout(x, delta, B, C, weight, delta_dtype)
    dout_s = launch_cross_scan(dout).view(batch, 4 * dim, length)
    du, ddelta, dA, dB, dC, dD, ddb = launch_scan_bwd(xs, delta_s, A, B_s, C_s, D, delta_bias, dout_s, hs,
                                                  delta_softplus, block_t, seg_chunks, batch, dim, length, None,
                                                  grad_bc_dtype=torch.float32)
    ddelta = ddelta.view(batch, 4, dim, length)
    dweight = x.new_empty(0)
    if weight is not None:  # the low-rank gradients in the scan orders: R rows go back to the map, not D
        ddelta, dweight = _low_rank_grads(ddelta, dt_s, weight)
    return (launch_cross_merge(du.view(batch, 4, dim, length), height, width),
            launch_seq_to_spatial(ddelta, height, width), dA,
            launch_seq_to_spatial(dB, height, width, out_dtype=B.dtype),
            launch_seq_to_spatial(dC, height, width, out_dtype=C.dtype), dD, ddb, dweight)


@torch.library.custom_op('mmvmamba::cross_selective_scan_fwd', mutates_args=())
def _cross_selective_scan_fwd_op(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                                 C: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None,
                                 delta_proj_weight: torch.Tensor | None, delta_dtype: torch.dtype,
                                 delta_softplus: bool, block_t: int,
                                 seg_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    return cross_selective_scan_fwd(x, delta, A, B, C, D, delta_bias, delta_proj_weight, delta_dtype,
                                     delta_softplus, block_t, seg_chunks)


@_cross_selective_scan_fwd_op.register_fake
def _(x, delta, A, B, C, D, delta_bias, delta_proj_weight, delta_dtype, delta_softplus, block_t, seg_chunks):
    batch, dim, height, width = x.shape
    out = x.new_empty(batch, dim, height, width, dtype=torch.float32)
    hs = x.new_empty(batch * 4 * dim, triton.cdiv(height * width, block_t), A.shape[1], dtype=torch.float32)
    return out, hs


@torch.library.custom_op('mmvmamba::cross_selective_scan_bwd', mutates_args=())
def _cross_selective_scan_bwd_op(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                                 C: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None,
                                 delta_proj_weight: torch.Tensor | None, delta_dtype: torch.dtype,
                                 dout: torch.Tensor, hs: torch.Tensor, delta_softplus: bool, block_t: int,
                                 seg_chunks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                           torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return cross_selective_scan_bwd(x, delta, A, B, C, D, delta_bias, delta_proj_weight, delta_dtype, dout, hs,
                                     delta_softplus, block_t, seg_chunks)


@_cross_selective_scan_bwd_op.register_fake
def _(x, delta, A, B, C, D, delta_bias, delta_proj_weight, delta_dtype, dout, hs, delta_softplus, block_t,
      seg_chunks):
    rows = A.shape[0]
    f32 = dict(dtype=torch.float32)
    # the low-rank ddelta comes from a matmul in the full step sizes' dtype
    ddelta = torch.empty_like(delta) if delta_proj_weight is None else delta.new_empty(delta.shape, dtype=delta_dtype)
    return (torch.empty_like(x), ddelta, torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), x.new_empty(rows, **(f32 if D is None else dict(dtype=D.dtype))),
            x.new_empty(rows, **(f32 if delta_bias is None else dict(dtype=delta_bias.dtype))),
            x.new_empty(0) if delta_proj_weight is None else torch.empty_like(delta_proj_weight))


_fused_fwd = eager_or_custom_op('cross_selective_scan_fwd', cross_selective_scan_fwd)
_fused_bwd = eager_or_custom_op('cross_selective_scan_bwd', cross_selective_scan_bwd)


def _autocast_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of ``t`` gets here: autocast's where it is on for ``t``'s device, else ``t``'s own."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class CrossSelectiveScanFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, delta_softplus, block_t, seg_chunks, delta_proj_weight):
        # Low-rank delta: the full step sizes (4x the size of x) are formed inside, in the dtype autocast gives the
        # projection, and again in the backward (which runs without autocast); they are never kept.
        delta_dtype = delta.dtype if delta_proj_weight is None else _autocast_dtype(delta)
        out, hs = _fused_fwd(x, delta, A, B, C, D, delta_bias, delta_proj_weight, delta_dtype, delta_softplus,
                             block_t, seg_chunks)
        ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, hs, delta_proj_weight)
        ctx.delta_softplus, ctx.block_t, ctx.seg_chunks = delta_softplus, block_t, seg_chunks
        ctx.delta_dtype = delta_dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        x, delta, A, B, C, D, delta_bias, hs, weight = ctx.saved_tensors
        dx, ddelta, dA, dB, dC, dD, ddb, dweight = _fused_bwd(
            x, delta, A, B, C, D, delta_bias, weight, ctx.delta_dtype, dout, hs, ctx.delta_softplus, ctx.block_t,
            ctx.seg_chunks)
        return (dx, ddelta, dA, dB, dC, dD if D is not None else None, ddb if delta_bias is not None else None,
                None, None, None, dweight if weight is not None else None)


def cross_selective_scan(x: torch.Tensor,
                         delta: torch.Tensor,
                         A: torch.Tensor,
                         B: torch.Tensor,
                         C: torch.Tensor,
                         D: torch.Tensor | None = None,
                         delta_bias: torch.Tensor | None = None,
                         delta_softplus: bool = True,
                         seg_chunks: int | None = None,
                         delta_proj_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Fused SS2D scan stage with the Triton kernels (same math and arguments as :func:`cross_selective_scan_ref`).

    Args:
        x: ``[B, D, H, W]`` fp32/fp16/bf16.
        delta: ``[B, 4, D, H, W]`` (spatial layout), or ``[B, 4, R, H, W]`` with ``delta_proj_weight``.
        A: ``[4*D, N]``.
        B: ``[B, 4, N, H, W]`` (spatial layout).
        C: ``[B, 4, N, H, W]``.
        D: ``[4*D]``. Default: None.
        delta_bias: ``[4*D]``. Default: None.
        delta_softplus: apply softplus to ``delta + delta_bias``. Default: True.
        seg_chunks: chunks per L-segment. Default: None (chosen from the GPU's size).
        delta_proj_weight: ``[4, D, R]`` low-rank projection of ``delta``. Default: None.

    Returns:
        ``[B, D, H, W]`` fp32.
    """
    block_t = scan_config(x.shape[2] * x.shape[3], A.shape[1])['block_t']
    return CrossSelectiveScanFunction.apply(x, delta, A, B, C, D, delta_bias, delta_softplus, block_t,
                                            seg_chunks or 0, delta_proj_weight)
