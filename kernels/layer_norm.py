"""Triton LayerNorm over the last dimension: fp32 statistics, output in a chosen dtype (e.g. bf16 under autocast).

Under autocast PyTorch runs LayerNorm in fp32 and writes an fp32 result that the next 16-bit matmul reads and
casts again; writing the 16-bit result directly moves 6 instead of 14 bytes per element of an fp32 input.
A program handles blocks of ``BLOCK_M`` rows of ``C <= BLOCK_N`` channels; the backward keeps the weight and bias
gradients of its rows in fp32 registers and writes one partial row per program, summed on the host.
"""
import torch
import triton
import triton.language as tl

from .utils import eager_or_custom_op, input_guard, next_power_of_2, sm_count

MAX_CHANNELS = 8192


@triton.jit(do_not_specialize=['M'])
def _layer_norm_fwd_kernel(
    p_x,     # [M, N]
    p_w,     # [N]
    p_b,     # [N]
    p_y,     # [M, N] out dtype
    p_mean,  # [M] fp32
    p_rstd,  # [M] fp32
    M,
    N,
    eps,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_m = tl.program_id(0)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = tl.arange(0, BLOCK_N)
    m_m, m_n = o_m < M, o_n < N
    mask = m_m[:, None] & m_n[None, :]
    o_x = o_m.to(tl.int64)[:, None] * N + o_n[None, :]
    b_x = tl.load(p_x + o_x, mask=mask, other=0.).to(tl.float32)
    b_mean = tl.sum(b_x, 1) / N
    b_xc = tl.where(mask, b_x - b_mean[:, None], 0.)
    b_rstd = 1. / tl.sqrt(tl.sum(b_xc * b_xc, 1) / N + eps)
    b_w = tl.load(p_w + o_n, mask=m_n, other=0.).to(tl.float32)
    b_b = tl.load(p_b + o_n, mask=m_n, other=0.).to(tl.float32)
    b_y = b_xc * b_rstd[:, None] * b_w[None, :] + b_b[None, :]
    tl.store(p_y + o_x, b_y.to(p_y.dtype.element_ty), mask=mask)
    tl.store(p_mean + o_m, b_mean, mask=m_m)
    tl.store(p_rstd + o_m, b_rstd, mask=m_m)


@triton.jit(do_not_specialize=['M', 'BLOCKS_PER_PROGRAM'])
def _layer_norm_bwd_kernel(
    p_x,     # [M, N]
    p_w,     # [N]
    p_dy,    # [M, N]
    p_mean,  # [M] fp32
    p_rstd,  # [M] fp32
    p_dx,    # [M, N] x dtype
    p_dwb,   # [programs, 2, N] fp32 partial sums of dw and db (one buffer: one reduction launch after)
    M,
    N,
    BLOCKS_PER_PROGRAM,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_p = tl.program_id(0)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    b_w = tl.load(p_w + o_n, mask=m_n, other=0.).to(tl.float32)
    b_dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    b_db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for i_blk in range(BLOCKS_PER_PROGRAM):
        o_m = (i_p * BLOCKS_PER_PROGRAM + i_blk) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_m = o_m < M
        mask = m_m[:, None] & m_n[None, :]
        o_x = o_m.to(tl.int64)[:, None] * N + o_n[None, :]
        b_x = tl.load(p_x + o_x, mask=mask, other=0.).to(tl.float32)
        b_dy = tl.load(p_dy + o_x, mask=mask, other=0.).to(tl.float32)
        b_mean = tl.load(p_mean + o_m, mask=m_m, other=0.)
        b_rstd = tl.load(p_rstd + o_m, mask=m_m, other=0.)
        b_xhat = tl.where(mask, (b_x - b_mean[:, None]) * b_rstd[:, None], 0.)
        b_wdy = b_w[None, :] * b_dy
        c1 = tl.sum(b_xhat * b_wdy, 1) / N
        c2 = tl.sum(b_wdy, 1) / N
        b_dx = (b_wdy - (b_xhat * c1[:, None] + c2[:, None])) * b_rstd[:, None]
        tl.store(p_dx + o_x, b_dx.to(p_dx.dtype.element_ty), mask=mask)
        b_dw += tl.sum(b_dy * b_xhat, 0)
        b_db += tl.sum(b_dy, 0)
    tl.store(p_dwb + i_p * 2 * N + o_n, b_dw, mask=m_n)
    tl.store(p_dwb + i_p * 2 * N + N + o_n, b_db, mask=m_n)


def _block_m(n: int) -> int:
    # about 4K elements a program: many rows for narrow VMamba channels (96), one row for the widest
    return max(1, min(64, 4096 // next_power_of_2(n)))


@input_guard
def _layer_norm_fwd(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                    out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, channels = x2d.shape
    y = torch.empty((rows, channels), dtype=out_dtype, device=x2d.device)
    mean = torch.empty(rows, dtype=torch.float32, device=x2d.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x2d.device)
    block_m, block_n = _block_m(channels), next_power_of_2(channels)
    _layer_norm_fwd_kernel[(triton.cdiv(rows, block_m), )](x2d, weight, bias, y, mean, rstd, rows, channels, eps,
                                                          BLOCK_M=block_m, BLOCK_N=block_n)
    return y, mean, rstd


@input_guard
def _layer_norm_bwd(x2d, weight, dy, mean, rstd) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, [dweight; dbias] as one [2, N] tensor)``."""
    rows, channels = x2d.shape
    block_m, block_n = _block_m(channels), next_power_of_2(channels)
    blocks = triton.cdiv(rows, block_m)
    programs = min(blocks, 4 * sm_count(x2d.device))
    per_program = triton.cdiv(blocks, programs)
    programs = triton.cdiv(blocks, per_program)
    dx = torch.empty_like(x2d)
    dwb = torch.empty((programs, 2, channels), dtype=torch.float32, device=x2d.device)
    _layer_norm_bwd_kernel[(programs, )](x2d, weight, dy, mean, rstd, dx, dwb, rows, channels, per_program,
                                         BLOCK_M=block_m, BLOCK_N=block_n)
    return dx, dwb.sum(0).to(weight.dtype)


@torch.library.custom_op('mmvmamba::layer_norm_fwd', mutates_args=())
def _layer_norm_fwd_op(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                       out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _layer_norm_fwd(x2d, weight, bias, eps, out_dtype)


@_layer_norm_fwd_op.register_fake
def _(x2d, weight, bias, eps, out_dtype):
    rows = x2d.shape[0]
    stats = x2d.new_empty(rows, dtype=torch.float32)
    return x2d.new_empty(x2d.shape, dtype=out_dtype), stats, torch.empty_like(stats)


@torch.library.custom_op('mmvmamba::layer_norm_bwd', mutates_args=())
def _layer_norm_bwd_op(x2d: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, mean: torch.Tensor,
                       rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _layer_norm_bwd(x2d, weight, dy, mean, rstd)


@_layer_norm_bwd_op.register_fake
def _(x2d, weight, dy, mean, rstd):
    return torch.empty_like(x2d), weight.new_empty(2, weight.shape[0])


_norm_fwd = eager_or_custom_op('layer_norm_fwd', _layer_norm_fwd)
_norm_bwd = eager_or_custom_op('layer_norm_bwd', _layer_norm_bwd)


class LayerNormFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        x2d = x.reshape(-1, x.shape[-1])
        y, mean, rstd = _norm_fwd(x2d, weight, bias, eps, out_dtype)
        ctx.save_for_backward(x2d, weight, mean, rstd)
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, mean, rstd = ctx.saved_tensors
        dx, dwb = _norm_bwd(x2d, weight, dy.reshape(x2d.shape), mean, rstd)
        return dx.view(ctx.x_shape), dwb[0], dwb[1], None, None


def layer_norm(x: torch.Tensor,
               weight: torch.Tensor,
               bias: torch.Tensor,
               eps: float = 1e-5,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Triton LayerNorm of the last dimension (see :func:`layer_norm_ref`)."""
    if x.shape[-1] > MAX_CHANNELS:
        raise ValueError(f'layer_norm supports up to {MAX_CHANNELS} channels, got {x.shape[-1]}')
    return LayerNormFunction.apply(x, weight, bias, eps, out_dtype or x.dtype)
