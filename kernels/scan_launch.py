"""Where every Triton kernel of this package is configured and launched: tile sizes, warps, grids and routes.

* Selective scan (selective_scan_fwd.py, selective_scan_bwd.py): :data:`TUNING` and :func:`scan_config` pick the
  tiles, :func:`launch_scan_fwd` / :func:`launch_scan_bwd` allocate the outputs and launch a scan in the sequence
  layout (``hw=None``) or the spatial one (``hw=(H, W)``, the fused scan's), and :func:`sequence_scan_fwd` /
  :func:`sequence_scan_bwd` are the sequence-layout entry points of ``selective_scan``'s custom ops.
* Cross-scan and cross-merge (cross_scan_kernels.py): :func:`launch_cross_scan`, :func:`launch_cross_merge` and the
  per-direction layout changes :func:`launch_spatial_to_seq`, :func:`launch_seq_to_spatial` (the Triton versions of
  ``cross_scan_ref``, ``cross_merge_ref``, ``spatial_to_seq`` and ``seq_to_spatial``).
* The fused scan's route (cross_selective_scan.py): :func:`sequence_route` picks the spatial kernel or the
  sequence-layout kernel on cross-scanned copies by the map's length.

The autograd Functions and custom ops that call these live in selective_scan.py, cross_scan.py and
cross_selective_scan.py. The numbers were measured on an H100 (docs/benchmarks.md).
"""
import torch
import triton

from .cross_scan_kernels import cross_merge_flat_kernel, cross_merge_tile_kernel, cross_scan_kernel
from .selective_scan_bwd import selective_scan_bwd_kernel
from .selective_scan_fwd import selective_scan_fwd_kernel
from .utils import input_guard, next_power_of_2, sm_count

# Tile sizes (hand-tuned on an H100, see docs/benchmarks.md); a dict so that a tuning script can try others.
# Small tiles (BLOCK_D * BLOCK_N * BLOCK_T = 256 elements on 2 warps) keep the register count low enough for
# several programs per SM, which the latency-bound chunk loop needs more than wide tiles.
TUNING = dict(block_t=256, block_t_short=128, tile_fwd=256, tile_bwd=256, warps_fwd=2, warps_bwd=2,
              programs_per_sm=2, prefetch=True, fwd_split_long=2, long_length=8192, bc_slots=2)


def scan_config(length: int, d_state: int) -> dict[str, int]:
    """Tile sizes for a scan of ``length`` steps and ``d_state`` states (forward and backward must agree on
    ``block_t``: the forward saves one state per chunk)."""
    block_n = next_power_of_2(d_state)
    block_t = TUNING['block_t'] if block_n <= 2 else max(16, 1024 // block_n)
    if length <= block_t:  # short sequences: smaller chunks (written so that a symbolic length only adds guards)
        block_t = min(TUNING['block_t_short'], max(16, next_power_of_2(length)))
    return dict(block_t=block_t,
                block_n=block_n,
                block_d_fwd=max(1, min(16, TUNING['tile_fwd'] // (block_n * block_t))),
                block_d_bwd=max(1, min(16, TUNING['tile_bwd'] // (block_n * block_t))))


def num_warps(tile: int, direction: str) -> int:
    """Warps of a program whose tile holds ``tile`` elements (``direction``: 'fwd' or 'bwd')."""
    return TUNING['warps_' + direction] if tile <= 256 else 4


def forward_split(length: int, d_state: int) -> int:
    """How many backward chunks one forward chunk spans: on long maps the forward walks chunks twice as long
    (fewer steps in its latency chain) and saves the state at each backward chunk's start on the way."""
    return TUNING['fwd_split_long'] if length >= TUNING['long_length'] and d_state == 1 else 1


def default_seg_chunks(row_programs: int, n_chunks: int, device: torch.device) -> int:
    """Chunks per segment: split L only when the row blocks alone leave the GPU short of programs."""
    if device.type != 'cuda':
        return n_chunks
    target = TUNING['programs_per_sm'] * sm_count(device)
    n_seg = max(1, min(n_chunks, target // max(row_programs, 1)))
    return triton.cdiv(n_chunks, n_seg)


def launch_scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, block_t: int, seg_chunks: int,
                batch: int, dim: int, length: int, hw: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    # hw=None: sequence layout (u, delta [B, 4D, L]); hw=(H, W): spatial layout (u [B, D, H, W], delta
    # [B, 4, D, H, W], B/C [B, 4, N, H, W]); the output is then [B, D, H, W], summed over the directions.
    groups, d_state = B.shape[1], A.shape[1]
    cfg = scan_config(length, d_state)
    hs_split = forward_split(length, d_state)
    block_d = cfg['block_d_fwd']
    n_hs = triton.cdiv(length, block_t)
    fwd_t = block_t * hs_split                     # the forward's chunk; a state is saved every block_t steps
    n_chunk = triton.cdiv(length, fwd_t)
    if seg_chunks <= 0:
        seg_chunks = default_seg_chunks(batch * groups * triton.cdiv(dim, block_d), n_chunk, u.device)
    else:  # seg_chunks counts the backward's chunks
        seg_chunks = triton.cdiv(seg_chunks, hs_split)
    seg_chunks = max(1, min(seg_chunks, n_chunk))
    n_seg = triton.cdiv(n_chunk, seg_chunks)
    dev = u.device
    if hw is None:
        out = torch.empty(batch, groups * dim, length, dtype=torch.float32, device=dev)
    else:
        out = torch.zeros(batch, dim, *hw, dtype=torch.float32, device=dev)
    hs = torch.empty(batch * groups * dim, n_hs, d_state, dtype=torch.float32, device=dev)
    seg = torch.empty(batch * groups * dim, n_seg, 2, d_state, dtype=torch.float32, device=dev) if n_seg > 1 else hs
    if out.numel() == 0:
        return out, hs
    grid = (batch * groups * triton.cdiv(dim, block_d), n_seg)
    height, width = hw if hw is not None else (1, length)
    args = (u, delta, A, B, C, D if D is not None else u, delta_bias if delta_bias is not None else u, out, hs, seg,
            groups, dim, length, d_state, n_chunk, n_hs, seg_chunks, n_seg, height, width)
    meta = dict(HAS_D=D is not None, HAS_DELTA_BIAS=delta_bias is not None, DELTA_SOFTPLUS=delta_softplus,
                SPATIAL=hw is not None, PREFETCH=TUNING['prefetch'] and seg_chunks > 1, BLOCK_D=block_d,
                BLOCK_N=cfg['block_n'], BLOCK_T=fwd_t, HS_SPLIT=hs_split,
                # the longer chunks keep the warps of the backward's chunk (measured faster on long maps)
                num_warps=num_warps(block_d * cfg['block_n'] * block_t, 'fwd'))
    if n_seg > 1:
        selective_scan_fwd_kernel[grid](*args, SUMMARY=True, **meta)
    selective_scan_fwd_kernel[grid](*args, SUMMARY=False, **meta)
    return out, hs


def launch_scan_bwd(u, delta, A, B, C, D, delta_bias, dout, hs, delta_softplus: bool, block_t: int, seg_chunks: int,
                batch: int, dim: int, length: int, hw: tuple[int, int] | None,
                grad_bc_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
    # grad_bc_dtype: dtype of the returned dB, dC (default: B's, C's); fp32 skips a cast when the caller converts them
    # again anyway (the fused backward's layout change casts on its way).
    groups, d_state = B.shape[1], A.shape[1]
    cfg = scan_config(length, d_state)
    block_d = cfg['block_d_bwd']
    n_db = triton.cdiv(dim, block_d)
    n_chunk = triton.cdiv(length, block_t)
    if seg_chunks <= 0:
        seg_chunks = default_seg_chunks(batch * groups * n_db, n_chunk, u.device)
    seg_chunks = max(1, min(seg_chunks, n_chunk))
    n_seg = triton.cdiv(n_chunk, seg_chunks)
    dev = u.device
    # spatial: the four directions add into one fp32 du (atomics), cast to u's dtype at the end
    du = torch.empty_like(u) if hw is None else torch.zeros(u.shape, dtype=torch.float32, device=dev)
    ddelta = torch.empty_like(delta)
    dA = torch.empty(batch * n_seg, groups * dim, d_state, dtype=torch.float32, device=dev)
    # dB, dC: with many row blocks, their partial sums (16 bytes per element of u at BLOCK_D = 1, more than the
    # kernel's own traffic) go through atomics into a few slots instead
    # (one slot per row block, no atomics, when the user asked for deterministic algorithms)
    shared = TUNING['bc_slots'] > 0 and not torch.are_deterministic_algorithms_enabled()
    n_slot = min(n_db, TUNING['bc_slots']) if shared else n_db
    new_bc = torch.zeros if n_slot < n_db else torch.empty
    dB = new_bc(batch, groups, n_slot, d_state, length, dtype=torch.float32, device=dev)
    dC = new_bc(batch, groups, n_slot, d_state, length, dtype=torch.float32, device=dev)
    dD = torch.empty(batch * n_seg, groups * dim, dtype=torch.float32, device=dev)
    ddb = torch.empty(batch * n_seg, groups * dim, dtype=torch.float32, device=dev)
    seg = torch.empty(batch * groups * dim, n_seg, 2, d_state, dtype=torch.float32, device=dev) if n_seg > 1 else hs
    if u.numel():
        grid = (batch * groups * n_db, n_seg)
        height, width = hw if hw is not None else (1, length)
        args = (u, delta, A, B, C, D if D is not None else u, delta_bias if delta_bias is not None else u, dout, hs,
                seg, du, ddelta, dA, dB, dC, dD, ddb, groups, dim, length, d_state, n_chunk, n_slot, seg_chunks, n_seg,
                height, width)
        meta = dict(HAS_D=D is not None, HAS_DELTA_BIAS=delta_bias is not None, DELTA_SOFTPLUS=delta_softplus,
                    SPATIAL=hw is not None, PREFETCH=TUNING['prefetch'] and seg_chunks > 1, BLOCK_D=block_d,
                    BLOCK_N=cfg['block_n'], BLOCK_T=block_t, ATOMIC_BC=n_slot < n_db,
                    num_warps=num_warps(block_d * cfg['block_n'] * block_t, 'bwd'))
        if n_seg > 1:
            selective_scan_bwd_kernel[grid](*args, SUMMARY=True, **meta)
        selective_scan_bwd_kernel[grid](*args, SUMMARY=False, **meta)
    else:
        for t in (dA, dB, dC, dD, ddb):
            t.zero_()
    dD = dD.sum(0).to(D.dtype) if D is not None else dD.new_zeros(groups * dim)
    ddb = ddb.sum(0).to(delta_bias.dtype) if delta_bias is not None else ddb.new_zeros(groups * dim)
    return (du.to(u.dtype), ddelta, dA.sum(0).to(A.dtype), dB.sum(2).to(grad_bc_dtype or B.dtype),
            dC.sum(2).to(grad_bc_dtype or C.dtype), dD, ddb)


@input_guard
def sequence_scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, block_t: int,
                      seg_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: ``(out [B, K*D, L] fp32, chunk-start states hs [B*K*D, NCHUNK, N] fp32)``."""
    batch, rows, length = u.shape
    return launch_scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, block_t, seg_chunks, batch,
                           rows // B.shape[1], length, None)


@input_guard
def sequence_scan_bwd(u, delta, A, B, C, D, delta_bias, dout, hs, delta_softplus: bool, block_t: int,
                      seg_chunks: int) -> tuple[torch.Tensor, ...]:
    """Launch the backward: ``(du, ddelta, dA, dB, dC, dD, ddelta_bias)``; dD/ddelta_bias are zeros when absent."""
    batch, rows, length = u.shape
    return launch_scan_bwd(u, delta, A, B, C, D, delta_bias, dout, hs, delta_softplus, block_t, seg_chunks, batch,
                           rows // B.shape[1], length, None)


# Cross-scan and cross-merge: tiles (measured on an H100, docs/benchmarks.md) and launchers

BLOCK_H = 64      # cross-scan tile
BLOCK_W = 64
NUM_WARPS = 4
MERGE_BLOCK = 2048     # flat merge blocks
MERGE_WARPS = 4
MERGE_TILE_MIN_ROWS = 8   # a flat block covering fewer whole rows than this uses the tiled merge
MERGE_TILE_H = 8
MERGE_TILE_W = 128


def _grid(planes: int, height: int, width: int) -> tuple[int, int]:
    return planes, triton.cdiv(height, BLOCK_H) * triton.cdiv(width, BLOCK_W)


@input_guard
def _cross_scan(x: torch.Tensor, per_direction: bool = False) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, 4, C, H*W]`` of ``x``'s dtype; with ``per_direction`` ``x`` is ``[B, 4, C, H, W]``
    and direction ``k`` reads plane ``k`` (the spatial layout of per-direction values such as the step sizes)."""
    batch, channels, height, width = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
    xs = torch.empty(batch, 4, channels, height * width, dtype=x.dtype, device=x.device)
    if xs.numel():
        cross_scan_kernel[_grid(batch * channels, height, width)](
            x, xs, channels, height, width, height * width, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W,
            PER_DIRECTION=per_direction, num_warps=NUM_WARPS)
    return xs


@input_guard
def _cross_merge(dxs: torch.Tensor, height: int, width: int, per_direction: bool = False,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[B, 4, C, H*W]`` -> ``[B, C, H, W]``, or ``[B, 4, C, H, W]`` with ``per_direction`` (nothing summed)."""
    batch, _, channels, _ = dxs.shape
    shape = (batch, 4, channels, height, width) if per_direction else (batch, channels, height, width)
    dx = torch.empty(shape, dtype=out_dtype or dxs.dtype, device=dxs.device)
    if not dx.numel():
        return dx
    if MERGE_BLOCK // width >= MERGE_TILE_MIN_ROWS:
        total = batch * channels * height * width
        cross_merge_flat_kernel[(triton.cdiv(total, MERGE_BLOCK),)](
            dxs, dx, channels, height, width, height * width, total, BLOCK=MERGE_BLOCK, PER_DIRECTION=per_direction,
            INT64=dxs.numel() >= 2**31, num_warps=MERGE_WARPS)
    else:
        grid = (batch * channels, triton.cdiv(height, MERGE_TILE_H) * triton.cdiv(width, MERGE_TILE_W))
        cross_merge_tile_kernel[grid](dxs, dx, channels, height, width, height * width, BLOCK_H=MERGE_TILE_H,
                                       BLOCK_W=MERGE_TILE_W, PER_DIRECTION=per_direction, num_warps=MERGE_WARPS)
    return dx


def launch_cross_scan(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, 4, C, H*W]`` in the four scan orders (:func:`cross_scan_ref`)."""
    return _cross_scan(x)


def launch_spatial_to_seq(t: torch.Tensor) -> torch.Tensor:
    """``[B, 4, C, H, W]`` -> ``[B, 4, C, H*W]``: direction ``k``'s plane in direction ``k``'s order
    (:func:`spatial_to_seq`)."""
    return _cross_scan(t, per_direction=True)


def launch_cross_merge(dxs: torch.Tensor, height: int, width: int,
                       out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[B, 4, C, H*W]`` -> ``[B, C, H, W]``: the four directions summed at each position (:func:`cross_merge_ref`),
    in ``out_dtype`` (default: the input's)."""
    return _cross_merge(dxs, height, width, out_dtype=out_dtype)


def launch_seq_to_spatial(t: torch.Tensor, height: int, width: int,
                          out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[B, 4, C, H*W]`` -> ``[B, 4, C, H, W]``: the inverse of :func:`launch_spatial_to_seq`
    (:func:`seq_to_spatial`), in ``out_dtype`` (default: the input's)."""
    return _cross_merge(t, height, width, per_direction=True, out_dtype=out_dtype)


# The fused scan's route. Up to these lengths it runs the spatial kernel; beyond them, the sequence-layout kernel on
# cross-scanned copies (measured on an H100, docs/benchmarks.md).
SPATIAL_FWD_MAX_LENGTH = 8192
SPATIAL_BWD_MAX_LENGTH = 1024


def sequence_route(length: int, direction: str) -> bool:
    """Whether the fused scan's ``direction`` ('fwd' or 'bwd') runs in the sequence layout for a map of ``length``
    positions: beyond the spatial kernel's maximum, and always under deterministic algorithms (no atomics)."""
    max_spatial_length = SPATIAL_FWD_MAX_LENGTH if direction == 'fwd' else SPATIAL_BWD_MAX_LENGTH
    return length > max_spatial_length or torch.are_deterministic_algorithms_enabled()
