"""Triton selective scan, forward kernel (Mamba S6 with grouped B/C), parallel along L.

Rows ``r = k*D + d`` of one batch element and one group ``k`` share ``B[b, k]`` and ``C[b, k]``; a program owns
``BLOCK_D`` such rows and one segment of ``L`` (``SEG_CHUNKS`` chunks of ``BLOCK_T`` steps). Within a chunk the
recurrence ``h_t = a_t h_{t-1} + b_t`` is a ``tl.associative_scan`` over ``[BLOCK_D, BLOCK_N, BLOCK_T]`` tiles; the
state carries from chunk to chunk in registers. When the rows alone do not fill the GPU (dense prediction: few
rows, long L), L is also split into segments: a summary pass (``SUMMARY``) stores each segment's (decay product, end
state from zero), and the main pass folds its predecessors' summaries into its start state. The chunk-start states
are saved for the backward (selective_scan_bwd.py). Launched from scan_launch.py; derivation in kernels/README.md.

The ``@triton.jit`` helpers here are shared with the backward kernel.
"""
import triton
import triton.language as tl


@triton.jit
def affine_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): x -> a2 * (a1 * x + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def softplus(x):
    # torch.nn.functional.softplus (beta 1, linear above 20); log(1 + exp(x)) costs two MUFU ops and no division
    return tl.where(x > 20., x, tl.log(1. + tl.exp(x)))


@triton.jit
def seq_to_spatial_index(t, i_k, L, H, W):
    # step t of direction k -> its row-major map position (the four cross-scan orders; seq_to_spatial of
    # cross_selective_scan_ref.py does this to whole tensors)
    tt = tl.where(i_k >= 2, L - 1 - t, t)
    return tl.where(i_k % 2 == 1, (tt % H) * W + tt // H, tt)


# L keeps Triton's divisibility specialisation (vector loads when L % 16 == 0); the other sizes never recompile.
@triton.jit(do_not_specialize=['K', 'DIM', 'N', 'NCHUNK', 'NHS', 'SEG_CHUNKS', 'NSEG', 'H', 'W'])
def selective_scan_fwd_kernel(
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
            o_p = seq_to_spatial_index(o_t, i_k, L, H, W)
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
            o_p = seq_to_spatial_index(o_t, i_k, L, H, W)
        else:
            o_p = o_t
        if PREFETCH:
            b_u, b_dt, b_Bm = nx_u.to(tl.float32), nx_dl.to(tl.float32), nx_B.to(tl.float32)
            if not SUMMARY:
                b_Cm = nx_C.to(tl.float32)
            o_tn = o_t + BLOCK_T
            m_tn = (o_tn < L) & (o_tn < c_end * BLOCK_T)
            if SPATIAL:
                o_pn = seq_to_spatial_index(o_tn, i_k, L, H, W)
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
            b_dt = softplus(b_dt)
        b_dt = tl.where(m_dt, b_dt, 0.)                        # padding: a = 1, b = 0
        b_a = tl.exp(b_dt[:, None, :] * b_A[:, :, None])       # [BLOCK_D, BLOCK_N, BLOCK_T]
        b_b = (b_dt * b_u)[:, None, :] * b_Bm[None, :, :]
        b_Pc, b_hl = tl.associative_scan((b_a, b_b), axis=2, combine_fn=affine_combine)
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

