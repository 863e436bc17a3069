"""Triton selective scan (Mamba S6 with grouped B/C), forward and backward, parallel along L.

Rows ``r = k*D + d`` of one batch element and one group ``k`` share ``B[b, k]`` and ``C[b, k]``; a program owns
``BLOCK_D`` such rows and one segment of ``L`` (``seg_chunks`` chunks of ``BLOCK_T`` steps). Within a chunk the
recurrence ``h_t = a_t h_{t-1} + b_t`` is a ``tl.associative_scan`` over ``[BLOCK_D, BLOCK_N, BLOCK_T]`` tiles; the
state carries from chunk to chunk in registers. When the rows alone do not fill the GPU (dense prediction: few
rows, long L), L is also split into segments: a summary pass stores each segment's (decay product, end state from
zero), and the main pass folds its predecessors' summaries into its start state. The backward runs the adjoint
``s_t = C_t dy_t + a_{t+1} s_{t+1}`` as a reverse scan the same way, recomputing ``h`` from the chunk-start states
the forward saved. Derivation in kernels/README.md.
"""

import torch
import triton
import triton.language as tl

from .utils import eager_or_custom_op, input_guard, next_power_of_2, sm_count


@triton.jit
def _scan_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): x -> a2 * (a1 * x + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus (beta 1, linear above 20); log(1 + exp(x)) costs two MUFU ops and no division
    return tl.where(x > 20., x, tl.log(1. + tl.exp(x)))


@triton.jit
def _seq_to_pos(t, i_k, L, H, W):
    # step t of direction k -> row-major map position (VMamba's four cross-scan orders)
    tt = tl.where(i_k >= 2, L - 1 - t, t)
    return tl.where(i_k % 2 == 1, (tt % H) * W + tt // H, tt)


@triton.jit
def _bwd_chunk_loads(p_delta, p_dout, p_C, p_u, p_B, p_hs, o_x, o_bc, o_hs, c, t_lo, m_d, m_n, i_k, L, H, W, N,
                     NCHUNK, SPATIAL: tl.constexpr, SUMMARY: tl.constexpr, BLOCK_T: tl.constexpr):
    # the backward's loads for chunk c (raw dtypes); steps before t_lo (another segment's) are not read
    o_t = c * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = (o_t < L) & (o_t >= t_lo)
    m_dt = m_d[:, None] & m_t[None, :]
    m_nt = m_n[:, None] & m_t[None, :]
    m_dt1 = m_d[:, None] & ((o_t + 1 < L) & (o_t >= t_lo))[None, :]
    if SPATIAL:
        o_p = _seq_to_pos(o_t, i_k, L, H, W)
        o_pn = _seq_to_pos(o_t + 1, i_k, L, H, W)
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


# L keeps Triton's divisibility specialisation (vector loads when L % 16 == 0); the other sizes never recompile.
@triton.jit(do_not_specialize=['K', 'DIM', 'N', 'NCHUNK', 'NHS', 'SEG_CHUNKS', 'NSEG', 'H', 'W'])
def _selective_scan_fwd_kernel(
    p_u,           # [B, K*D, L]
    p_delta,       # [B, K*D, L]
    p_A,           # [K*D, N]
    p_B,           # [B, K, N, L]
    p_C,           # [B, K, N, L]
    p_D,           # [K*D]
    p_delta_bias,  # [K*D]
    p_out,         # [B, K*D, L] fp32
    p_hs,          # [B*K*D, NHS, N] fp32: state before each chunk of BLOCK_T // HS_SPLIT steps (the backward's chunks)
    p_seg,         # [B*K*D, NSEG, 2, N] fp32: per segment (decay product, end state from a zero start)
    K,
    DIM,
    L,
    N,
    NCHUNK,
    NHS,
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
    HS_SPLIT: tl.constexpr,  # states saved per chunk: the forward may walk longer chunks than the backward
):
    i_r, i_s = tl.program_id(0), tl.program_id(1)
    n_db = tl.cdiv(DIM, BLOCK_D)
    i_db = i_r % n_db
    i_bk = i_r // n_db
    i_k = i_bk % K
    i_b = i_bk // K

    o_d = i_db * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < DIM
    o_row = i_k * DIM + o_d                                   # [BLOCK_D] rows of K*D
    o_grow = (i_b * K * DIM + o_row).to(tl.int64)             # [BLOCK_D] rows of B*K*D
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    b_A = tl.load(p_A + o_row[:, None] * N + o_n[None, :], mask=m_dn, other=0.).to(tl.float32)
    if HAS_D:
        b_D = tl.load(p_D + o_row, mask=m_d, other=0.).to(tl.float32)
    if HAS_DELTA_BIAS:
        b_bias = tl.load(p_delta_bias + o_row, mask=m_d, other=0.).to(tl.float32)
    # int64 base of the row block once per program; int32 offsets within it
    o_row0 = (i_bk * DIM + i_db * BLOCK_D).to(tl.int64) * L  # first row of the block in [B, K*D, L]
    if SPATIAL:
        o_u0 = (i_b * DIM + i_db * BLOCK_D).to(tl.int64) * L  # u and out are [B, D, H, W]
    else:
        o_u0 = o_row0
    p_delta += o_row0
    p_u += o_u0
    p_out += o_u0
    p_B += i_bk.to(tl.int64) * N * L
    p_C += i_bk.to(tl.int64) * N * L
    o_x = tl.arange(0, BLOCK_D)[:, None] * L                  # [BLOCK_D, 1]
    o_bc = o_n[:, None] * L                                   # [BLOCK_N, 1]
    o_tl = tl.arange(0, BLOCK_T)
    m_last = (o_tl == BLOCK_T - 1)[None, None, :]

    c_begin = i_s * SEG_CHUNKS
    c_end = tl.minimum(c_begin + SEG_CHUNKS, NCHUNK)
    b_h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    b_Pseg = tl.full([BLOCK_D, BLOCK_N], 1., dtype=tl.float32)
    if not SUMMARY:
        for j in range(0, i_s):
            o_sg = (o_grow[:, None] * NSEG + j) * 2 * N + o_n[None, :]
            b_h = b_h * tl.load(p_seg + o_sg, mask=m_dn, other=1.) + tl.load(p_seg + o_sg + N, mask=m_dn, other=0.)

    if PREFETCH:  # the loads of chunk c + 1 are issued before chunk c is computed, to hide their latency
        o_t = c_begin * BLOCK_T + o_tl
        m_dt = m_d[:, None] & (o_t < L)[None, :]
        m_nt = m_n[:, None] & (o_t < L)[None, :]
        if SPATIAL:
            o_p = _seq_to_pos(o_t, i_k, L, H, W)
        else:
            o_p = o_t
        nx_u = tl.load(p_u + o_x + o_p[None, :], mask=m_dt, other=0.)
        nx_dl = tl.load(p_delta + o_x + o_p[None, :], mask=m_dt, other=0.)
        nx_B = tl.load(p_B + o_bc + o_p[None, :], mask=m_nt, other=0.)
        if not SUMMARY:
            nx_C = tl.load(p_C + o_bc + o_p[None, :], mask=m_nt, other=0.)
    for c in range(c_begin, c_end):
        o_t = c * BLOCK_T + o_tl
        m_t = o_t < L
        m_dt = m_d[:, None] & m_t[None, :]
        m_nt = m_n[:, None] & m_t[None, :]
        if SPATIAL:
            o_p = _seq_to_pos(o_t, i_k, L, H, W)
        else:
            o_p = o_t
        if PREFETCH:
            b_u, b_dt, b_Bm = nx_u.to(tl.float32), nx_dl.to(tl.float32), nx_B.to(tl.float32)
            if not SUMMARY:
                b_Cm = nx_C.to(tl.float32)
            o_tn = o_t + BLOCK_T
            m_tn = (o_tn < L) & (o_tn < c_end * BLOCK_T)
            if SPATIAL:
                o_pn = _seq_to_pos(o_tn, i_k, L, H, W)
            else:
                o_pn = o_tn
            nx_u = tl.load(p_u + o_x + o_pn[None, :], mask=m_d[:, None] & m_tn[None, :], other=0.)
            nx_dl = tl.load(p_delta + o_x + o_pn[None, :], mask=m_d[:, None] & m_tn[None, :], other=0.)
            nx_B = tl.load(p_B + o_bc + o_pn[None, :], mask=m_n[:, None] & m_tn[None, :], other=0.)
            if not SUMMARY:
                nx_C = tl.load(p_C + o_bc + o_pn[None, :], mask=m_n[:, None] & m_tn[None, :], other=0.)
        else:
            b_u = tl.load(p_u + o_x + o_p[None, :], mask=m_dt, other=0.).to(tl.float32)
            b_dt = tl.load(p_delta + o_x + o_p[None, :], mask=m_dt, other=0.).to(tl.float32)
            b_Bm = tl.load(p_B + o_bc + o_p[None, :], mask=m_nt, other=0.).to(tl.float32)
            if not SUMMARY:
                b_Cm = tl.load(p_C + o_bc + o_p[None, :], mask=m_nt, other=0.).to(tl.float32)
        if not SUMMARY:
            tl.store(p_hs + (o_grow[:, None] * NHS + c * HS_SPLIT) * N + o_n[None, :], b_h, mask=m_dn)
        if HAS_DELTA_BIAS:
            b_dt += b_bias[:, None]
        if DELTA_SOFTPLUS:
            b_dt = _softplus(b_dt)
        b_dt = tl.where(m_dt, b_dt, 0.)                        # padding: a = 1, b = 0
        b_a = tl.exp(b_dt[:, None, :] * b_A[:, :, None])       # [BLOCK_D, BLOCK_N, BLOCK_T]
        b_b = (b_dt * b_u)[:, None, :] * b_Bm[None, :, :]
        b_Pc, b_hl = tl.associative_scan((b_a, b_b), axis=2, combine_fn=_scan_combine)
        b_hall = b_hl + b_Pc * b_h[:, :, None]
        if SUMMARY:
            b_Pseg *= tl.sum(tl.where(m_last, b_Pc, 0.), axis=2)
        else:
            for q in tl.static_range(1, HS_SPLIT):  # states inside the chunk, at the backward's chunk starts
                b_hq = tl.sum(tl.where((o_tl == q * (BLOCK_T // HS_SPLIT) - 1)[None, None, :], b_hall, 0.), axis=2)
                o_q = c * HS_SPLIT + q + 0 * o_n                 # [BLOCK_N]: a tensor mask, as the interpreter needs
                tl.store(p_hs + (o_grow[:, None] * NHS + o_q[None, :]) * N + o_n[None, :], b_hq,
                         mask=m_dn & (o_q < NHS)[None, :])
            b_y = tl.sum(b_hall * b_Cm[None, :, :], axis=1)
            if HAS_D:
                b_y += b_D[:, None] * b_u
            if SPATIAL:
                tl.atomic_add(p_out + o_x + o_p[None, :], b_y, mask=m_dt, sem='relaxed')
            else:
                tl.store(p_out + o_x + o_t[None, :], b_y, mask=m_dt)
        b_h = tl.sum(tl.where(m_last, b_hall, 0.), axis=2)

    if SUMMARY:
        o_sg = (o_grow[:, None] * NSEG + i_s) * 2 * N + o_n[None, :]
        tl.store(p_seg + o_sg, b_Pseg, mask=m_dn)
        tl.store(p_seg + o_sg + N, b_h, mask=m_dn)


@triton.jit(do_not_specialize=['K', 'DIM', 'N', 'NCHUNK', 'NSLOT', 'SEG_CHUNKS', 'NSEG', 'H', 'W'])
def _selective_scan_bwd_kernel(
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
            W, N, NCHUNK, SPATIAL, SUMMARY, BLOCK_T)
    for i in range(0, c_end - c_begin):
        c = c_end - 1 - i
        o_t = c * BLOCK_T + o_tl
        m_t = o_t < L
        m_dt = m_d[:, None] & m_t[None, :]
        m_nt = m_n[:, None] & m_t[None, :]
        m_dt1 = m_d[:, None] & (o_t + 1 < L)[None, :]
        if SPATIAL:
            o_p = _seq_to_pos(o_t, i_k, L, H, W)
        else:
            o_p = o_t
        if PREFETCH:
            r_x, r_xn, r_dy, r_C, r_u, r_B, b_h0 = nx_x, nx_xn, nx_dy, nx_C, nx_u, nx_B, nx_h0
            nx_x, nx_xn, nx_dy, nx_C, nx_u, nx_B, nx_h0 = _bwd_chunk_loads(
                p_delta, p_dout, p_C, p_u, p_B, p_hs, o_x, o_bc, o_hs, c - 1, c_begin * BLOCK_T, m_d, m_n, i_k, L,
                H, W, N, NCHUNK, SPATIAL, SUMMARY, BLOCK_T)
        else:
            r_x, r_xn, r_dy, r_C, r_u, r_B, b_h0 = _bwd_chunk_loads(
                p_delta, p_dout, p_C, p_u, p_B, p_hs, o_x, o_bc, o_hs, c, c_begin * BLOCK_T, m_d, m_n, i_k, L, H, W, N,
                NCHUNK, SPATIAL, SUMMARY, BLOCK_T)
        b_x = r_x.to(tl.float32)
        b_xn = r_xn.to(tl.float32)
        if HAS_DELTA_BIAS:
            b_x += b_bias[:, None]
            b_xn += b_bias[:, None]
        if DELTA_SOFTPLUS:
            b_dt = _softplus(b_x)
            b_dtn = _softplus(b_xn)
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
        b_Pa, b_sl = tl.associative_scan((b_alpha, b_g), axis=2, combine_fn=_scan_combine, reverse=True)
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
            b_Pc, b_hl = tl.associative_scan((b_a, b_b), axis=2, combine_fn=_scan_combine)
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


def _launch_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, block_t: int, seg_chunks: int,
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
        _selective_scan_fwd_kernel[grid](*args, SUMMARY=True, **meta)
    _selective_scan_fwd_kernel[grid](*args, SUMMARY=False, **meta)
    return out, hs


def _launch_bwd(u, delta, A, B, C, D, delta_bias, dout, hs, delta_softplus: bool, block_t: int, seg_chunks: int,
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
            _selective_scan_bwd_kernel[grid](*args, SUMMARY=True, **meta)
        _selective_scan_bwd_kernel[grid](*args, SUMMARY=False, **meta)
    else:
        for t in (dA, dB, dC, dD, ddb):
            t.zero_()
    dD = dD.sum(0).to(D.dtype) if D is not None else dD.new_zeros(groups * dim)
    ddb = ddb.sum(0).to(delta_bias.dtype) if delta_bias is not None else ddb.new_zeros(groups * dim)
    return (du.to(u.dtype), ddelta, dA.sum(0).to(A.dtype), dB.sum(2).to(grad_bc_dtype or B.dtype),
            dC.sum(2).to(grad_bc_dtype or C.dtype), dD, ddb)


@input_guard
def _selective_scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, block_t: int,
                        seg_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: ``(out [B, K*D, L] fp32, chunk-start states hs [B*K*D, NCHUNK, N] fp32)``."""
    batch, rows, length = u.shape
    return _launch_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, block_t, seg_chunks, batch,
                       rows // B.shape[1], length, None)


@input_guard
def _selective_scan_bwd(u, delta, A, B, C, D, delta_bias, dout, hs, delta_softplus: bool, block_t: int,
                        seg_chunks: int) -> tuple[torch.Tensor, ...]:
    """Launch the backward: ``(du, ddelta, dA, dB, dC, dD, ddelta_bias)``; dD/ddelta_bias are zeros when absent."""
    batch, rows, length = u.shape
    return _launch_bwd(u, delta, A, B, C, D, delta_bias, dout, hs, delta_softplus, block_t, seg_chunks, batch,
                       rows // B.shape[1], length, None)


@torch.library.custom_op('mmvmamba::selective_scan_fwd', mutates_args=())
def _selective_scan_fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool, block_t: int,
                           seg_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _selective_scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, block_t, seg_chunks)


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
    return _selective_scan_bwd(u, delta, A, B, C, D, delta_bias, dout, hs, delta_softplus, block_t, seg_chunks)


@_selective_scan_bwd_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, dout, hs, delta_softplus, block_t, seg_chunks):
    rows = u.shape[1]
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), u.new_empty(rows, **(f32 if D is None else dict(dtype=D.dtype))),
            u.new_empty(rows, **(f32 if delta_bias is None else dict(dtype=delta_bias.dtype))))


_scan_fwd = eager_or_custom_op('selective_scan_fwd', _selective_scan_fwd)
_scan_bwd = eager_or_custom_op('selective_scan_bwd', _selective_scan_bwd)


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
