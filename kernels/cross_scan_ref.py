"""Pure-PyTorch cross-scan and cross-merge: the CPU path and the oracle for the Triton kernels.

Directions (K = 4) for a (H, W) map flattened to L = H * W positions (see kernels/README.md):
k=0 row-major, k=1 column-major, k=2 and k=3 the reverses of k=0 and k=1.
"""
import torch


def cross_scan_ref(x: torch.Tensor) -> torch.Tensor:
    """Unfold a map into the four scan orders.

    Args:
        x: ``[B, C, H, W]`` feature map (any strides).

    Returns:
        ``[B, 4, C, H*W]`` tensor of ``x``'s dtype: row-major, column-major and their reverses.
    """
    rows = x.flatten(2)                      # [B, C, L], l = h*W + w
    cols = x.transpose(2, 3).flatten(2)      # [B, C, L], l = w*H + h
    forward = torch.stack([rows, cols], dim=1)
    return torch.cat([forward, forward.flip(-1)], dim=1)


def cross_merge_ref(y: torch.Tensor) -> torch.Tensor:
    """Sum the four scan orders back onto the map: the adjoint of :func:`cross_scan_ref`.

    Args:
        y: ``[B, 4, C, H, W]``, where ``y[:, k]`` holds direction ``k``'s sequence of ``L = H*W`` positions
            viewed as ``H x W`` (the view only carries the map size; it is not a spatial layout for k = 1, 3).

    Returns:
        ``[B, C, H, W]`` of ``y``'s dtype.
    """
    batch, _, channels, height, width = y.shape
    seq = y.reshape(batch, 4, channels, height * width)
    forward = seq[:, :2] + seq[:, 2:].flip(-1)                          # undo the reversal of k = 2, 3
    cols = forward[:, 1].reshape(batch, channels, width, height).transpose(2, 3)
    return forward[:, 0].reshape(batch, channels, height, width) + cols
