"""Triton cross-scan and cross-merge kernels (VMamba SS2D, K = 4 directions); each is the other's backward.

A cross-scan program owns one ``[BLOCK_H, BLOCK_W]`` tile of one ``(b, c)`` plane, in two arrangements:
forward (element ``[i, j]`` is position ``(h0 + i, w0 + j)``) and reversed (``(h0 + BLOCK_H-1-i, w0 + BLOCK_W-1-j)``).
Row-major and column-major addresses increase along ``j`` and ``i`` in the forward arrangement, and the reversed
directions' addresses ``L-1-p`` increase along ``j`` and ``i`` in the reversed one, so every global access is
contiguous along one axis of its tile and Triton can coalesce it. The merge walks flat blocks over all output
positions and lets the caches absorb the strided column-major reads; on wide maps, where a flat block spans too few
rows for that, it works in [rows, columns] tiles instead. ``PER_DIRECTION`` turns them into the layout changes
``spatial_to_seq`` and ``seq_to_spatial`` of cross_selective_scan_ref.py. Launched from scan_launch.py; see
kernels/README.md.
"""
import triton
import triton.language as tl


@triton.jit(do_not_specialize=['C', 'H', 'W'])
def cross_scan_kernel(
    p_x,   # [B, C, H, W], or [B, 4, C, H, W] with PER_DIRECTION
    p_xs,  # [B, 4, C, L]
    C,
    H,
    W,
    L,  # H * W, passed so that Triton can see when planes start 16-aligned (vector loads and stores)
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    PER_DIRECTION: tl.constexpr,  # direction k reads its own plane k (step sizes, B and C of the fused backward)
):
    i_p, i_t = tl.program_id(0), tl.program_id(1)
    n_tw = tl.cdiv(W, BLOCK_W)
    h0 = (i_t // n_tw) * BLOCK_H
    w0 = (i_t % n_tw) * BLOCK_W
    i_b = i_p // C
    i_c = i_p - i_b * C
    o_seq = (i_b.to(tl.int64) * 4 * C + i_c) * L
    s_dir = C.to(tl.int64) * L
    if PER_DIRECTION:
        o_src = o_seq
        s_src = s_dir
    else:
        o_src = i_p.to(tl.int64) * L
        s_src = 0
    o_i = tl.arange(0, BLOCK_H)
    o_j = tl.arange(0, BLOCK_W)

    f_h = h0 + o_i
    f_w = w0 + o_j
    m_f = (f_h[:, None] < H) & (f_w[None, :] < W)
    o_f = f_h[:, None] * W + f_w[None, :]
    b_x = tl.load(p_x + o_src + o_f, mask=m_f)
    tl.store(p_xs + o_seq + o_f, b_x, mask=m_f)
    if PER_DIRECTION:
        b_x = tl.load(p_x + o_src + s_src + o_f, mask=m_f)
    tl.store(p_xs + o_seq + s_dir + f_w[None, :] * H + f_h[:, None], b_x, mask=m_f)

    # reversed arrangement: a second read of the same tile (cache hits) instead of a register flip
    r_h = h0 + BLOCK_H - 1 - o_i
    r_w = w0 + BLOCK_W - 1 - o_j
    m_r = (r_h[:, None] < H) & (r_w[None, :] < W)
    o_r = r_h[:, None] * W + r_w[None, :]
    b_xr = tl.load(p_x + o_src + 2 * s_src + o_r, mask=m_r)
    e_2 = (L - 1 - (h0 + BLOCK_H - 1) * W - (w0 + BLOCK_W - 1)) + o_i[:, None] * W + o_j[None, :]
    e_3 = (L - 1 - (w0 + BLOCK_W - 1) * H - (h0 + BLOCK_H - 1)) + o_j[None, :] * H + o_i[:, None]
    tl.store(p_xs + o_seq + 2 * s_dir + e_2, b_xr, mask=m_r)
    if PER_DIRECTION:
        b_xr = tl.load(p_x + o_src + 3 * s_src + o_r, mask=m_r)
    tl.store(p_xs + o_seq + 3 * s_dir + e_3, b_xr, mask=m_r)


@triton.jit
def _merge_store(p_dx, o_out, s_out, b_0, b_1, b_2, b_3, m, PER_DIRECTION: tl.constexpr):
    out_ty = p_dx.dtype.element_ty
    if PER_DIRECTION:
        tl.store(p_dx + o_out, b_0.to(out_ty), mask=m)
        tl.store(p_dx + o_out + s_out, b_1.to(out_ty), mask=m)
        tl.store(p_dx + o_out + 2 * s_out, b_2.to(out_ty), mask=m)
        tl.store(p_dx + o_out + 3 * s_out, b_3.to(out_ty), mask=m)
    else:
        tl.store(p_dx + o_out, ((b_0 + b_1) + (b_2 + b_3)).to(out_ty), mask=m)


# total keeps Triton's divisibility specialisation: the contiguous loads and the store are vectorised only when it
# shows that a group of 16 outputs is all in or all out of range (measured 1.6x at 224 batch 128)
@triton.jit(do_not_specialize=['C', 'H', 'W'])
def cross_merge_flat_kernel(
    p_dxs,  # [B, 4, C, L]
    p_dx,   # [B, C, H, W], or [B, 4, C, H, W] with PER_DIRECTION
    C,
    H,
    W,
    L,
    total,  # B * C * L output positions (per direction)
    BLOCK: tl.constexpr,
    PER_DIRECTION: tl.constexpr,  # write direction k to its own plane k instead of summing the four
    INT64: tl.constexpr,          # offsets beyond int32 (32-bit division is several times cheaper)
):
    # Flat blocks over all (b, c, position) of the output, so no program is left mostly empty at the end of a plane
    # (a per-plane grid lost 40 % at L = 3,136). The column-major loads are strided: a block covers several whole
    # rows, so each column's sectors serve neighbouring rows from the caches. Addresses of the reversed directions
    # descend: those loads are coalesced but not vectorised.
    i_blk = tl.program_id(0)
    if INT64:
        i_blk = i_blk.to(tl.int64)
    o = i_blk * BLOCK + tl.arange(0, BLOCK)
    m = o < total
    i_plane = o // L
    o_pos = o - i_plane * L
    i_b = i_plane // C
    o_seq = (i_b * 3 * C + i_plane) * L                     # (b * 4C + c) * L
    s_dir = C * L
    o_h = o_pos // W
    o_col = (o_pos - o_h * W) * H + o_h                     # column-major index of the same position
    b_0 = tl.load(p_dxs + o_seq + o_pos, mask=m, other=0.).to(tl.float32)
    b_1 = tl.load(p_dxs + o_seq + s_dir + o_col, mask=m, other=0.).to(tl.float32)
    b_2 = tl.load(p_dxs + o_seq + 2 * s_dir + (L - 1 - o_pos), mask=m, other=0.).to(tl.float32)
    b_3 = tl.load(p_dxs + o_seq + 3 * s_dir + (L - 1 - o_col), mask=m, other=0.).to(tl.float32)
    if PER_DIRECTION:
        o_out = o_seq + o_pos                               # plane k of [B, 4, C, L] for direction k
    else:
        o_out = o
    _merge_store(p_dx, o_out, s_dir, b_0, b_1, b_2, b_3, m, PER_DIRECTION)


@triton.jit(do_not_specialize=['C', 'H', 'W'])
def cross_merge_tile_kernel(
    p_dxs,  # [B, 4, C, L]
    p_dx,   # [B, C, H, W], or [B, 4, C, H, W] with PER_DIRECTION
    C,
    H,
    W,
    L,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    PER_DIRECTION: tl.constexpr,
):
    # Wide maps, where a flat block spans only a few rows and each column's sectors would be fetched again by every
    # block: a [BLOCK_H, BLOCK_W] tile of one plane. Triton gives each load the layout its addresses are contiguous
    # in (row-major for k = 0, 2, column-major for k = 1); k = 3 descends along h, so it is loaded as the transposed
    # [BLOCK_W, BLOCK_H] tile, whose last axis is h, and transposed in registers.
    i_p, i_t = tl.program_id(0), tl.program_id(1)
    n_tw = tl.cdiv(W, BLOCK_W)
    h0 = (i_t // n_tw) * BLOCK_H
    w0 = (i_t % n_tw) * BLOCK_W
    i_b = i_p // C
    o_seq = (i_b.to(tl.int64) * 3 * C + i_p) * L            # (b * 4C + c) * L
    s_dir = C.to(tl.int64) * L
    o_h = h0 + tl.arange(0, BLOCK_H)
    o_w = w0 + tl.arange(0, BLOCK_W)
    m = (o_h[:, None] < H) & (o_w[None, :] < W)
    o_row = o_h[:, None] * W + o_w[None, :]
    b_0 = tl.load(p_dxs + o_seq + o_row, mask=m, other=0.).to(tl.float32)
    b_1 = tl.load(p_dxs + o_seq + s_dir + (o_w[None, :] * H + o_h[:, None]), mask=m, other=0.).to(tl.float32)
    b_2 = tl.load(p_dxs + o_seq + 2 * s_dir + (L - 1 - o_row), mask=m, other=0.).to(tl.float32)
    m_t = (o_w[:, None] < W) & (o_h[None, :] < H)
    b_3t = tl.load(p_dxs + o_seq + 3 * s_dir + (L - 1 - (o_w[:, None] * H + o_h[None, :])), mask=m_t, other=0.)
    b_3 = tl.trans(b_3t).to(tl.float32)
    if PER_DIRECTION:
        o_out = o_seq + o_row
    else:
        o_out = i_p.to(tl.int64) * L + o_row
    _merge_store(p_dx, o_out, s_dir, b_0, b_1, b_2, b_3, m, PER_DIRECTION)
