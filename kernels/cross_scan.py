"""Triton cross-scan and cross-merge (VMamba SS2D, K = 4 directions): custom ops, autograd Functions and the public
functions; each op is the other's backward.

The kernels are in cross_scan_kernels.py, their tiles and launchers in scan_launch.py; see kernels/README.md.
"""
import torch

from .scan_launch import launch_cross_merge, launch_cross_scan
from .utils import eager_or_custom_op


@torch.library.custom_op('mmvmamba::cross_scan', mutates_args=())
def _cross_scan_op(x: torch.Tensor) -> torch.Tensor:
    return launch_cross_scan(x)


@_cross_scan_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    return x.new_empty(batch, 4, channels, height * width)


def _cross_merge(y: torch.Tensor) -> torch.Tensor:
    """``[B, 4, C, H, W]`` -> ``[B, C, H, W]``."""
    batch, _, channels, height, width = y.shape
    return launch_cross_merge(y.reshape(batch, 4, channels, height * width), height, width)


@torch.library.custom_op('mmvmamba::cross_merge', mutates_args=())
def _cross_merge_op(y: torch.Tensor) -> torch.Tensor:
    return _cross_merge(y)


@_cross_merge_op.register_fake
def _(y: torch.Tensor) -> torch.Tensor:
    batch, _, channels, height, width = y.shape
    return y.new_empty(batch, channels, height, width)


_scan = eager_or_custom_op('cross_scan', launch_cross_scan)
_merge = eager_or_custom_op('cross_merge', _cross_merge)


class CrossScanFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.hw = x.shape[2:]
        return _scan(x)

    @staticmethod
    def backward(ctx, dxs: torch.Tensor) -> torch.Tensor:
        batch, _, channels, _ = dxs.shape
        return _merge(dxs.contiguous().view(batch, 4, channels, *ctx.hw))


class CrossMergeFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        return _merge(y)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = dy.shape
        return _scan(dy).view(batch, 4, channels, height, width)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Unfold a map into the four VMamba scan orders with the Triton kernel.

    Args:
        x: ``[B, C, H, W]`` fp32/fp16/bf16.

    Returns:
        ``[B, 4, C, H*W]`` of ``x``'s dtype (row-major, column-major and their reverses).
    """
    return CrossScanFunction.apply(x)


def cross_merge(y: torch.Tensor) -> torch.Tensor:
    """Sum the four scan orders back onto the map with the Triton kernel (the adjoint of :func:`cross_scan`).

    Args:
        y: ``[B, 4, C, H, W]`` fp32/fp16/bf16, direction ``k``'s sequence viewed as ``H x W``.

    Returns:
        ``[B, C, H, W]`` of ``y``'s dtype, accumulated in fp32.
    """
    return CrossMergeFunction.apply(y)
