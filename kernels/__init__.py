"""SS2D kernels of VMamba: cross-scan, selective scan and cross-merge.

This module is the one place that picks an implementation. Each public function takes ``use_triton``:
``None`` picks the Triton kernel for CUDA tensors (when Triton is installed) and the pure-PyTorch reference
otherwise; ``True`` forces the Triton kernel (CPU tensors too, under ``TRITON_INTERPRET=1``); ``False`` forces
the reference.
"""
import torch

from .cross_scan_ref import cross_merge_ref, cross_scan_ref
from .selective_scan_ref import selective_scan_ref

__all__ = ['cross_scan', 'cross_merge', 'selective_scan', 'cross_scan_ref', 'cross_merge_ref', 'selective_scan_ref']


def _want_triton(use_triton: bool | None, tensor: torch.Tensor) -> bool:
    if use_triton is None:
        return False
    if use_triton:
        raise NotImplementedError('the Triton SS2D kernels are not part of this build; pass use_triton=None/False')
    return False


def cross_scan(x: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, 4, C, H*W]`` in the four VMamba scan orders (see :func:`cross_scan_ref`)."""
    _want_triton(use_triton, x)
    return cross_scan_ref(x)


def cross_merge(y: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
    """``[B, 4, C, H, W]`` -> ``[B, C, H, W]``: the adjoint of :func:`cross_scan` (see :func:`cross_merge_ref`)."""
    _want_triton(use_triton, y)
    return cross_merge_ref(y)


def selective_scan(u: torch.Tensor,
                   delta: torch.Tensor,
                   A: torch.Tensor,
                   B: torch.Tensor,
                   C: torch.Tensor,
                   D: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = True,
                   use_triton: bool | None = None) -> torch.Tensor:
    """Selective scan with grouped B/C; fp32 state and fp32 ``[B, K*D, L]`` output (see :func:`selective_scan_ref`)."""
    _want_triton(use_triton, u)
    return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus)
