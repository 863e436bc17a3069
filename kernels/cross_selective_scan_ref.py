"""Pure-PyTorch fused SS2D scan: cross-scan, selective scan and cross-merge composed from the references.

Unlike the unfused API, every per-direction input is given in the SPATIAL layout: ``delta[:, k]``, ``B[:, k]`` and
``C[:, k]`` hold direction ``k``'s values at their map positions (x_proj and dt_proj are pointwise, so they can be
computed before the scan order is applied). This is the oracle for the Triton ``cross_selective_scan``.
"""
import torch

from .cross_scan_ref import cross_merge_ref, cross_scan_ref
from .selective_scan_ref import selective_scan_ref


def spatial_to_seq(t: torch.Tensor) -> torch.Tensor:
    """``[B, 4, X, H, W]`` spatial -> ``[B, 4, X, H*W]``: direction ``k``'s values in direction ``k``'s order."""
    rows = t[:, 0].flatten(2)
    cols = t[:, 1].transpose(-1, -2).flatten(2)
    rows_rev = t[:, 2].flatten(2).flip(-1)
    cols_rev = t[:, 3].transpose(-1, -2).flatten(2).flip(-1)
    return torch.stack([rows, cols, rows_rev, cols_rev], dim=1)


def expand_delta(dt: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Low-rank step sizes to full ones: ``dt [B, 4, R, H, W]``, ``weight [4, D, R]`` -> ``[B, 4, D, H, W]``.

    The matmul runs in ``dt``'s dtype (what autocast gives SS2D's dt_proj).
    """
    return torch.matmul(weight.to(dt.dtype), dt.flatten(3)).unflatten(3, dt.shape[3:])


def cross_selective_scan_ref(x: torch.Tensor,
                             delta: torch.Tensor,
                             A: torch.Tensor,
                             B: torch.Tensor,
                             C: torch.Tensor,
                             D: torch.Tensor | None = None,
                             delta_bias: torch.Tensor | None = None,
                             delta_softplus: bool = True,
                             delta_proj_weight: torch.Tensor | None = None) -> torch.Tensor:
    """SS2D's scan stage on spatial-layout inputs, in fp32.

    Args:
        x: ``[B, D, H, W]`` input map (the scan's ``u`` for all four directions).
        delta: ``[B, 4, D, H, W]`` step sizes of direction k at each position (before bias and softplus).
        A: ``[4*D, N]``.
        B: ``[B, 4, N, H, W]``.
        C: ``[B, 4, N, H, W]``.
        D: ``[4*D]``. Default: None.
        delta_bias: ``[4*D]``. Default: None.
        delta_softplus: apply softplus to ``delta + delta_bias``. Default: True.
        delta_proj_weight: ``[4, D, R]``: if given, ``delta`` is the low-rank ``[B, 4, R, H, W]`` and the step sizes
            are :func:`expand_delta` of it (SS2D's dt_proj). Default: None.

    Returns:
        ``[B, D, H, W]`` fp32: the four directions' outputs summed at each position.
    """
    if delta_proj_weight is not None:
        delta = expand_delta(delta, delta_proj_weight)
    batch, dim, height, width = x.shape
    length = height * width
    xs = cross_scan_ref(x).reshape(batch, 4 * dim, length)
    ys = selective_scan_ref(xs, spatial_to_seq(delta).reshape(batch, 4 * dim, length), A, spatial_to_seq(B),
                            spatial_to_seq(C), D, delta_bias, delta_softplus)
    return cross_merge_ref(ys.view(batch, 4, dim, height, width))


def seq_to_spatial(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, 4, X, H*W]`` in each direction's order -> ``[B, 4, X, H, W]`` spatial: the inverse of spatial_to_seq."""
    batch, _, chans, _ = t.shape
    rows = t[:, 0].reshape(batch, chans, height, width)
    cols = t[:, 1].reshape(batch, chans, width, height).transpose(-1, -2)
    rows_rev = t[:, 2].flip(-1).reshape(batch, chans, height, width)
    cols_rev = t[:, 3].flip(-1).reshape(batch, chans, width, height).transpose(-1, -2)
    return torch.stack([rows, cols, rows_rev, cols_rev], dim=1)
