"""Triton selective scan, backward kernel: the adjoint of selective_scan_fwd.py, parallel along L the same way.

The adjoint ``s_t = C_t dy_t + a_{t+1} s_{t+1}`` runs as a reverse ``tl.associative_scan`` per chunk, the chunks
walked from the last to the first; ``h`` is recomputed from the chunk-start states the forward saved. With several
L-segments a summary pass (``SUMMARY``) stores each segment's (product of ``a_{t+1}``, adjoint at its start from
zero) and the main pass folds its successors' summaries into its end adjoint. Launched from scan_launch.py;
derivation in kernels/README.md.
"""
import triton
import triton.language as tl

from .selective_scan_fwd import affine_combine, seq_to_spatial_index, softplus


@triton.jit
def _bwd_chunk_loads(p_delta, p_dout, p_C, p_u, p_B, p_hs, o_x, o_bc, o_hs, c, t_lo, m_d, m_n, i_k, L, H, W, N,
                     SPATIAL: tl.constexpr, SUMMARY: tl.constexpr, BLOCK_T: tl.constexpr):
    # the backward's loads for chunk c (raw dtypes); steps before t_lo (another segment's) are not read
    o_t = c * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = (o_t < L) & (o_t >= t_lo)
    m_dt = m_d[:, None] & m_t[None, :]
    m_nt = m_n[:, None] & m_t[None, :]
    m_dt1 = m_d[:, None] & ((o_t + 1 < L) & (o_t >= t_lo))[None, :]
    if SPATIAL:
        o_p = seq_to_spatial_index(o_t, i_k, L, H, W)
        o_pn = seq_to_spatial_index(o_t + 1, i_k, L, H, W)
    else:
        o_p = o_t
        o_pn = o_t + 1
    x = tl.load(p_delta + o_x + o_p[None, :], mask=m_dt, other=0.)
    xn = tl.load(p_delta + o_x + o_pn[None, :], mask=m_dt1, other=0.)
    dy = tl.load(p_dout + o_x + o_p[None, :], mask=m_dt, other=0.)
    cm = tl.load(p_C + o_bc + o_p[None, :], mask=m_nt, other=0.)
    if SUMMARY:
        u = x
        bm = cm
        h0 = tl.zeros([m_d.shape[0], m_n.shape[0]], dtype=tl.float32)
    else:
        u = tl.load(p_u + o_x + o_p[None, :], mask=m_dt, other=0.)
        bm = tl.load(p_B + o_bc + o_p[None, :], mask=m_nt, other=0.)
        h0 = tl.load(p_hs + o_hs + tl.maximum(c, 0) * N, mask=m_d[:, None] & m_n[None, :], other=0.)
    return x, xn, dy, cm, u, bm, h0


@triton.jit(do_not_specialize=['K', 'DIM', 'N', 'NCHUNK', 'NSLOT', 'SEG_CHUNKS', 'NSEG', 'H', 'W'])
def selective_scan_bwd_kernel(
    p_u,           # [B, K*D, L]
    p_delta,       # [B, K*D, L]
    p_A,           # [K*D, N]
    p_B,           # [B, K, N, L]
    p_C,           # [B, K, N, L]
    p_D,           # [K*D]
    p_delta_bias,  # [K*D]
    p_dout,        # [B, K*D, L]
    p_hs,          # [B*K*D, NCHUNK, N] fp32 from the forward
    p_seg,         # [B*K*D, NSEG, 2, N] fp32: per segment (product of a_{t+1}, adjoint at its start from zero)
    p_du,          # [B, K*D, L] u's dtype
    p_ddelta,      # [B, K*D, L] delta's dtype
    p_dA,          # [B*NSEG, K*D, N] fp32 partial sums
    p_dB,          # [B, K, NSLOT, N, L] fp32 partial sums over row blocks
    p_dC,          # [B, K, NSLOT, N, L] fp32
    p_dD,          # [B*NSEG, K*D] fp32
    p_ddelta_bias,  # [B*NSEG, K*D] fp32
    K,
    DIM,
    L,
    N,
    NCHUNK,
    NSLOT,          # partial-sum slots of dB, dC: one per row block, or fewer shared through atomics
    SEG_CHUNKS,
    NSEG,
    H,
    W,
    HAS_D: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr,
    SUMMARY: tl.constexpr,
    SPATIAL: tl.constexpr,
    PREFETCH: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
    ATOMIC_BC: tl.constexpr,  # row blocks share the NSLOT slots (zeroed) through atomic adds
):
    i_r, i_s = tl.program_id(0), tl.program_id(1)
    n_db = tl.cdiv(DIM, BLOCK_D)
    i_db = i_r % n_db
    i_bk = i_r // n_db
    i_k = i_bk % K
    i_b = i_bk // K

    o_d = i_db * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < DIM
    o_row = i_k * DIM + o_d
    o_grow = (i_b * K * DIM + o_row).to(tl.int64)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    b_A = tl.load(p_A + o_row[:, None] * N + o_n[None, :], mask=m_dn, other=0.).to(tl.float32)
    if HAS_D:
        b_D = tl.load(p_D + o_row, mask=m_d, other=0.).to(tl.float32)
    if HAS_DELTA_BIAS:
        b_bias = tl.load(p_delta_bias + o_row, mask=m_d, other=0.).to(tl.float32)
    o_row0 = (i_bk * DIM + i_db * BLOCK_D).to(tl.int64) * L
    if SPATIAL:
        o_u0 = (i_b * DIM + i_db * BLOCK_D).to(tl.int64) * L  # u, dout and du are [B, D, H, W]
    else:
        o_u0 = o_row0
    p_delta += o_row0
    p_ddelta += o_row0
    p_u += o_u0
    p_dout += o_u0
    p_du += o_u0
    p_B += i_bk.to(tl.int64) * N * L
    p_C += i_bk.to(tl.int64) * N * L
    p_dB += (i_bk * NSLOT + i_db % NSLOT).to(tl.int64) * N * L
    p_dC += (i_bk * NSLOT + i_db % NSLOT).to(tl.int64) * N * L
    o_x = tl.arange(0, BLOCK_D)[:, None] * L
    o_bc = o_n[:, None] * L
    o_tl = tl.arange(0, BLOCK_T)
    m_first = (o_tl == 0)[None, None, :]

    c_begin = i_s * SEG_CHUNKS
    c_end = tl.minimum(c_begin + SEG_CHUNKS, NCHUNK)
    b_s = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)     # adjoint at the first step after the chunk
    b_Pseg = tl.full([BLOCK_D, BLOCK_N], 1., dtype=tl.float32)
    # per-element accumulators, reduced over the steps once at the end
    b_dA = tl.zeros([BLOCK_D, BLOCK_N, BLOCK_T], dtype=tl.float32)
    b_dD = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    b_dbias = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    if not SUMMARY:
        for i in range(0, NSEG - 1 - i_s):
            o_sg = (o_grow[:, None] * NSEG + (NSEG - 1 - i)) * 2 * N + o_n[None, :]
            b_s = tl.load(p_seg + o_sg + N, mask=m_dn, other=0.) + tl.load(p_seg + o_sg, mask=m_dn, other=1.) * b_s

    o_hs = (o_grow[:, None] * NCHUNK) * N + o_n[None, :]
    if PREFETCH:  # the loads of chunk c - 1 are issued before chunk c is computed
        nx_x, nx_xn, nx_dy, nx_C, nx_u, nx_B, nx_h0 = _bwd_chunk_loads(
            p_delta, p_dout, p_C, p_u, p_B, p_hs, o_x, o_bc, o_hs, c_end - 1, c_begin * BLOCK_T, m_d, m_n, i_k, L, H,
            W, N, SPATIAL, SUMMARY, BLOCK_T)
    for i in range(0, c_end - c_begin):
        c = c_end - 1 - i
        o_t = c * BLOCK_T + o_tl
        m_t = o_t < L
        m_dt = m_d[:, None] & m_t[None, :]
        m_nt = m_n[:, None] & m_t[None, :]
        m_dt1 = m_d[:, None] & (o_t + 1 < L)[None, :]
        if SPATIAL:
            o_p = seq_to_spatial_index(o_t, i_k, L, H, W)
        else:
            o_p = o_t
        if PREFETCH:
            r_x, r_xn, r_dy, r_C, r_u, r_B, b_h0 = nx_x, nx_xn, nx_dy, nx_C, nx_u, nx_B, nx_h0
            nx_x, nx_xn, nx_dy, nx_C, nx_u, nx_B, nx_h0 = _bwd_chunk_loads(
                p_delta, p_dout, p_C, p_u, p_B, p_hs, o_x, o_bc, o_hs, c - 1, c_begin * BLOCK_T, m_d, m_n, i_k, L,
                H, W, N, SPATIAL, SUMMARY, BLOCK_T)
        else:
            r_x, r_xn, r_dy, r_C, r_u, r_B, b_h0 = _bwd_chunk_loads(
                p_delta, p_dout, p_C, p_u, p_B, p_hs, o_x, o_bc, o_hs, c, c_begin * BLOCK_T, m_d, m_n, i_k, L, H, W, N,
                SPATIAL, SUMMARY, BLOCK_T)
        b_x = r_x.to(tl.float32)
        b_xn = r_xn.to(tl.float32)
        if HAS_DELTA_BIAS:
            b_x += b_bias[:, None]
            b_xn += b_bias[:, None]
        if DELTA_SOFTPLUS:
            b_dt = softplus(b_x)
            b_dtn = softplus(b_xn)
        else:
            b_dt = b_x
            b_dtn = b_xn
        b_dt = tl.where(m_dt, b_dt, 0.)
        b_dtn = tl.where(m_dt1, b_dtn, 0.)
        b_dy = r_dy.to(tl.float32)
        b_Cm = r_C.to(tl.float32)
        # adjoint: s_t = g_t + alpha_t s_{t+1} with alpha_t = a_{t+1}, as a reverse scan
        b_alpha = tl.exp(b_dtn[:, None, :] * b_A[:, :, None])
        b_g = b_dy[:, None, :] * b_Cm[None, :, :]
        b_Pa, b_sl = tl.associative_scan((b_alpha, b_g), axis=2, combine_fn=affine_combine, reverse=True)
        b_sall = b_sl + b_Pa * b_s[:, :, None]
        b_s = tl.sum(tl.where(m_first, b_sall, 0.), axis=2)
        if SUMMARY:
            b_Pseg *= tl.sum(tl.where(m_first, b_Pa, 0.), axis=2)
        else:
            b_u = r_u.to(tl.float32)
            b_Bm = r_B.to(tl.float32)
            b_dtu = b_dt * b_u
            b_a = tl.exp(b_dt[:, None, :] * b_A[:, :, None])
            b_b = b_dtu[:, None, :] * b_Bm[None, :, :]
            b_Pc, b_hl = tl.associative_scan((b_a, b_b), axis=2, combine_fn=affine_combine)
            b_hall = b_hl + b_Pc * b_h0[:, :, None]
            b_ah = b_hall - b_b                                # a_t * h_{t-1}
            b_sB = tl.sum(b_sall * b_Bm[None, :, :], axis=1)   # [BLOCK_D, BLOCK_T]
            b_sahA = b_sall * b_ah * b_A[:, :, None]
            b_ddt = b_sB * b_u + tl.sum(b_sahA, axis=1)
            b_du = b_sB * b_dt
            if HAS_D:
                b_du += b_dy * b_D[:, None]
                b_dD += b_dy * b_u
            b_dA += b_sall * b_ah * b_dt[:, None, :]
            b_dBp = tl.sum(b_sall * b_dtu[:, None, :], axis=0)  # [BLOCK_N, BLOCK_T]
            b_dCp = tl.sum(b_hall * b_dy[:, None, :], axis=0)
            if DELTA_SOFTPLUS:
                b_ddt = b_ddt * tl.exp(b_x - b_dt)                # sigmoid(x) = exp(x - softplus(x))
            b_ddt = tl.where(m_dt, b_ddt, 0.)
            if HAS_DELTA_BIAS:
                b_dbias += b_ddt
            if SPATIAL:
                tl.atomic_add(p_du + o_x + o_p[None, :], b_du, mask=m_dt, sem='relaxed')
            else:
                tl.store(p_du + o_x + o_t[None, :], b_du.to(p_du.dtype.element_ty), mask=m_dt)
            tl.store(p_ddelta + o_x + o_p[None, :], b_ddt.to(p_ddelta.dtype.element_ty), mask=m_dt)
            if ATOMIC_BC:
                tl.atomic_add(p_dB + o_bc + o_p[None, :], b_dBp, mask=m_nt, sem='relaxed')
                tl.atomic_add(p_dC + o_bc + o_p[None, :], b_dCp, mask=m_nt, sem='relaxed')
            else:
                tl.store(p_dB + o_bc + o_p[None, :], b_dBp, mask=m_nt)
                tl.store(p_dC + o_bc + o_p[None, :], b_dCp, mask=m_nt)

    if SUMMARY:
        o_sg = (o_grow[:, None] * NSEG + i_s) * 2 * N + o_n[None, :]
        tl.store(p_seg + o_sg, b_Pseg, mask=m_dn)
        tl.store(p_seg + o_sg + N, b_s, mask=m_dn)
    else:
        o_red = (i_b * NSEG + i_s).to(tl.int64) * K * DIM + o_row
        tl.store(p_dA + o_red[:, None] * N + o_n[None, :], tl.sum(b_dA, axis=2), mask=m_dn)
        if HAS_D:
            tl.store(p_dD + o_red, tl.sum(b_dD, axis=1), mask=m_d)
        if HAS_DELTA_BIAS:
            tl.store(p_ddelta_bias + o_red, tl.sum(b_dbias, axis=1), mask=m_d)
