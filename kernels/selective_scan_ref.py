"""Pure-PyTorch selective scan (Mamba's S6 with grouped B/C): the CPU path and the oracle for the Triton kernel.

Per batch b, channel row r = k*D + d of group k, state n, with h_{-1} = 0:
    delta_t = softplus(delta[b, r, t] + delta_bias[r])              (softplus if delta_softplus)
    h_t[n]  = exp(delta_t * A[r, n]) * h_{t-1}[n] + delta_t * B[b, k, n, t] * u[b, r, t]
    y_t     = sum_n C[b, k, n, t] * h_t[n] + D[r] * u[b, r, t]
Everything is computed in fp32 and the output is fp32, whatever the input dtype.
"""
import torch
import torch.nn.functional as F


def selective_scan_ref(u: torch.Tensor,
                       delta: torch.Tensor,
                       A: torch.Tensor,
                       B: torch.Tensor,
                       C: torch.Tensor,
                       D: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None,
                       delta_softplus: bool = True) -> torch.Tensor:
    """Sequential selective scan in fp32.

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
    groups, d_state = B.shape[1], A.shape[1]
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
    h = u.new_zeros(batch, rows, d_state)
    ys = []
    for t in range(length):
        h = decay[..., t] * h + drive[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u
    return y
