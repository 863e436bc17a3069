"""Layout-aware building blocks.

VMamba has two memory layouts with identical parameters: channel-first ``[B, C, H, W]`` (the official
``norm_layer='ln2d'``) and channel-last ``[B, H, W, C]`` (``'ln'``). Linear weights are stored ``(out, in)`` in both.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvmamba_kernels import layer_norm


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dimension with fp32 statistics (eps 1e-5 like the official models).

    Its output dtype is an explicit policy. Outside autocast it is the input's dtype. Under autocast (any device):

    * ``'fp32'``: fp32, what ``nn.LayerNorm`` returns under CUDA autocast. The norms that start a residual stream
      (stems, downsamplers) and the ``outnorm*`` use it, so the blocks' inputs and outputs have the official models'
      dtype.
    * ``'autocast'``: the autocast dtype, for norms whose output only feeds a matmul (which would cast it anyway):
      it writes half the bytes.

    Args:
        channels: Size of the last dimension.
        output: ``'fp32'`` or ``'autocast'``, see above. Default: ``'fp32'``.
    """

    OUTPUTS = ('fp32', 'autocast')

    def __init__(self, channels: int, output: str = 'fp32'):
        super().__init__(channels)
        if output not in self.OUTPUTS:
            raise ValueError(f'LayerNorm output must be one of {self.OUTPUTS}, got {output!r}')
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = None
        device = x.device.type
        if torch.is_autocast_enabled(device):
            out_dtype = torch.get_autocast_dtype(device) if self.output == 'autocast' else torch.float32
        return layer_norm(x, self.weight, self.bias, self.eps, out_dtype)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, output={self.output}'


class LayerNorm2d(LayerNorm):
    """:class:`LayerNorm` over the channels of a ``[B, C, H, W]`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A Linear applied to the channels of a ``[B, C, H, W]`` map (a 1x1 convolution with an ``(out, in)`` weight).

    Like the official channel-first models it also accepts conv-shaped ``(out, in, 1, 1)`` weights when loading.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A matmul over the channels: free of copies when x is stored channels-last (see VMamba.forward).
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + 'weight'
        weight = state_dict.get(key)
        if weight is not None and weight.dim() == 4 and weight.shape[2:] == (1, 1):
            state_dict = dict(state_dict)  # never mutate the caller's dict
            state_dict[key] = weight.flatten(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Permute(nn.Module):
    """Permute dimensions; a placeholder that keeps the official ``nn.Sequential`` indices (``patch_embed.5``)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f'dims={self.dims}'


TO_CHANNEL_LAST = (0, 2, 3, 1)
TO_CHANNEL_FIRST = (0, 3, 1, 2)


def norm_layer(channels: int, channel_first: bool, output: str = 'fp32') -> nn.Module:
    """LayerNorm over channels for the given layout (see :class:`LayerNorm` for ``output``)."""
    return (LayerNorm2d if channel_first else LayerNorm)(channels, output)


def linear_layer(in_features: int, out_features: int, bias: bool, channel_first: bool) -> nn.Module:
    """Channel projection for the given layout."""
    cls = Linear2d if channel_first else nn.Linear
    return cls(in_features, out_features, bias=bias)


def to_channel_last(channel_first: bool) -> nn.Module:
    """Identity for channel-last models; ``[B, C, H, W] -> [B, H, W, C]`` placeholder otherwise (see stems)."""
    return nn.Identity() if channel_first else Permute(*TO_CHANNEL_LAST)


def to_channel_first(channel_first: bool) -> nn.Module:
    return nn.Identity() if channel_first else Permute(*TO_CHANNEL_FIRST)
