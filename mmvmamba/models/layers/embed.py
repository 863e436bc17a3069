"""Resolution changes: the stems (patch embeddings) and the downsamplers between stages.

The official checkpoints name these modules by their ``nn.Sequential`` index (``patch_embed.5``,
``layers.0.downsample.3``), so the Sequentials below keep every placeholder at its position.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import OpaqueConv2d
from .layout import linear_layer, norm_layer, to_channel_first, to_channel_last


def patch_stem(in_channels: int, dim: int, patch_size: int, channel_first: bool) -> nn.Sequential:
    """Official patch-embed "v1": one ``patch_size`` x ``patch_size`` convolution with stride ``patch_size``, then norm.

    Output ``floor(H / p) x floor(W / p)``; leftover rows and columns are dropped.
    """
    return nn.Sequential(
        OpaqueConv2d(in_channels, dim, patch_size, stride=patch_size),
        to_channel_last(channel_first),
        norm_layer(dim, channel_first),
    )


def overlap_stem(in_channels: int, dim: int, patch_size: int, channel_first: bool) -> nn.Sequential:
    """Official patch-embed "v2": two overlapping stride ``patch_size // 2`` convolutions with norms and a GELU.

    Output ``ceil(ceil(H / 2) / 2)`` for patch size 4; any size works.
    """
    stride = patch_size // 2
    kernel = stride + 1
    return nn.Sequential(
        OpaqueConv2d(in_channels, dim // 2, kernel, stride=stride, padding=1),
        to_channel_last(channel_first),
        norm_layer(dim // 2, channel_first),  # fp32 under autocast: the GELU runs in fp32, as in the official model
        to_channel_first(channel_first),
        nn.GELU(),
        OpaqueConv2d(dim // 2, dim, kernel, stride=stride, padding=1),
        to_channel_last(channel_first),
        norm_layer(dim, channel_first),
    )


def conv_downsample(dim: int, out_dim: int, channel_first: bool) -> nn.Sequential:
    """Official downsample "v3": 3x3 stride-2 convolution, then norm; output ``ceil(H / 2) x ceil(W / 2)``."""
    return nn.Sequential(
        to_channel_first(channel_first),
        OpaqueConv2d(dim, out_dim, 3, stride=2, padding=1),
        to_channel_last(channel_first),
        norm_layer(out_dim, channel_first),
    )


class PatchMerging2D(nn.Module):
    """Official downsample "v1": gather each 2x2 neighbourhood into channels, norm, then a linear without bias.

    Odd maps are zero-padded by one row at the bottom / one column at the right. The 2x2 pieces are concatenated
    in the official order (row, column offsets) (0, 0), (1, 0), (0, 1), (1, 1).
    """

    def __init__(self, dim: int, out_dim: int, channel_first: bool = False):
        super().__init__()
        self.channel_first = channel_first
        self.norm = norm_layer(4 * dim, channel_first, output='autocast')
        self.reduction = linear_layer(4 * dim, out_dim, bias=False, channel_first=channel_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_first:
            height, width = x.shape[2:]
            x = F.pad(x, (0, width % 2, 0, height % 2))
            pieces = [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]]
            x = torch.cat(pieces, dim=1)
        else:
            height, width = x.shape[1:3]
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
            pieces = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
            x = torch.cat(pieces, dim=-1)
        return self.reduction(self.norm(x))
