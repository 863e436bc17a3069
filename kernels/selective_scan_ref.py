"""Pure-PyTorch selective scan (Mamba's S6 with grouped B/C): the CPU path and the oracle for the Triton kernel.

Per batch b, channel row r = k*D + d of group k, state n, with h_{-1} = 0:
    delta_t = softplus(delta[b, r, t] + delta_bias[r])              (softplus if delta_softplus)
    h_t[n]  = exp(delta_t * A[r, n]) * h_{t-1}[n] + delta_t * B[b, k, n, t] * u[b, r, t]
    y_t     = sum_n C[b, k, n, t] * h_t[n] + D[r] * u[b, r, t]
Everything is computed in fp32 and the output is fp32, whatever the input dtype. The recurrence runs as a log-depth
prefix scan of the affine maps ``h -> a h + b`` (tests check it against a step-by-step loop).
"""
import torch
import torch.nn.functional as F


def _affine_prefix_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """States ``h_t = a_t h_{t-1} + b_t`` (``h_{-1} = 0``) along the last axis, as a log-depth prefix scan.

    Step ``t`` is the affine map ``x -> a_t x + b_t``; after the round with offset ``k``, element ``t`` holds the
    composition of steps ``t-2k+1 .. t`` (Hillis-Steele). Same recurrence as the sequential loop, in ``log2(L)``
    whole-tensor rounds instead of ``L`` Python steps, with fewer roundings per state.
    """
    length = a.shape[-1]
    k = 1
    while k < length:
        # compose with the map k steps back: a_t (a_{t-k} x + b_{t-k}) + b_t
        b = torch.cat([b[..., :k], a[..., k:] * b[..., :-k] + b[..., k:]], dim=-1)
        if 2 * k < length:  # the last round needs no products
            a = torch.cat([a[..., :k], a[..., k:] * a[..., :-k]], dim=-1)
        k *= 2
    return b


class _AffineScan(torch.autograd.Function):
    """The prefix scan with its adjoint as backward: autograd through the rounds would keep ``2 log2(L)`` full-size
    tensors (8.7 GB for a 2 x 768 x 16 x 3,136 fp32 scan on the CPU); this keeps ``a`` and ``h``."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = _affine_prefix_scan(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, h = ctx.saved_tensors
        # adjoint s_t = dh_t + a_{t+1} s_{t+1}: the same scan over the reversed sequence
        a_next = torch.cat([a[..., 1:], torch.zeros_like(a[..., :1])], dim=-1)
        s = _affine_prefix_scan(a_next.flip(-1), dh.flip(-1)).flip(-1)
        h_prev = torch.cat([torch.zeros_like(h[..., :1]), h[..., :-1]], dim=-1)
        return s * h_prev, s                                          # d a_t = s_t h_{t-1}, d b_t = s_t


def selective_scan_ref(u: torch.Tensor,
                       delta: torch.Tensor,
                       A: torch.Tensor,
                       B: torch.Tensor,
                       C: torch.Tensor,
                       D: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None,
                       delta_softplus: bool = True) -> torch.Tensor:
    """Selective scan in fp32 (the recurrence evaluated as a prefix scan over L).

    Args:
        u: ``[B, K*D, L]`` input sequence.
        delta: ``[B, K*D, L]`` step sizes before the bias and softplus.
        A: ``[K*D, N]`` state matrix (diagonal per row; negative for a stable scan).
        B: ``[B, K, N, L]`` input projection, shared by the D rows of each group k.
        C: ``[B, K, N, L]`` output projection, shared likewise.
        D: ``[K*D]`` skip weight. Default: None (no skip).
        delta_bias: ``[K*D]`` added to ``delta`` before the softplus. Default: None.
        delta_softplus: apply softplus to ``delta + delta_bias``. Default: True.

    Returns:
        ``[B, K*D, L]`` fp32 output.
    """
    batch, rows, length = u.shape
    groups = B.shape[1]
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # Expand the shared B and C of each group to its rows: [B, K*D, N, L].
    B = B.repeat_interleave(rows // groups, dim=1)
    C = C.repeat_interleave(rows // groups, dim=1)
    decay = torch.exp(delta[:, :, None, :] * A[None, :, :, None])      # [B, K*D, N, L]
    drive = (delta * u)[:, :, None, :] * B                             # [B, K*D, N, L]
    h = _AffineScan.apply(decay, drive)
    y = (h * C).sum(2)
    if D is not None:
        y = y + D.float()[:, None] * u
    return y
