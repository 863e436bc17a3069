"""The VSS block: ``x + DropPath(SS2D(norm(x)))``, then ``x + DropPath(MLP(norm2(x)))`` when the MLP is on."""
import torch
import torch.nn as nn

from .drop_path import DropPath
from .layout import linear_layer, norm_layer
from .ss2d import SS2D


class Mlp(nn.Module):
    """``fc1 -> GELU (exact erf form) -> fc2`` over channels, in either layout."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, channel_first: bool = False):
        super().__init__()
        self.fc1 = linear_layer(dim, hidden_dim, bias=True, channel_first=channel_first)
        self.act = nn.GELU()
        self.fc2 = linear_layer(hidden_dim, dim, bias=True, channel_first=channel_first)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class VSSBlock(nn.Module):
    """One VMamba block.

    Args:
        dim: Channels of the block.
        drop_path: Stochastic-depth rate of both residual branches. Default: 0.
        mlp_ratio: Hidden width of the MLP over ``dim``; 0 removes the MLP (vanilla models). Default: 4.0.
        mlp_dropout: Dropout inside the MLP. Default: 0.
        channel_first: ``[B, C, H, W]`` layout instead of ``[B, H, W, C]``. Default: False.
        **ssm_kwargs: Passed to :class:`SS2D`.
    """

    def __init__(self,
                 dim: int,
                 drop_path: float = 0.0,
                 mlp_ratio: float = 4.0,
                 mlp_dropout: float = 0.0,
                 channel_first: bool = False,
                 **ssm_kwargs):
        super().__init__()
        self.norm = norm_layer(dim, channel_first, output='autocast')
        self.op = SS2D(dim, channel_first=channel_first, **ssm_kwargs)
        self.drop_path = DropPath(drop_path)
        if mlp_ratio > 0:
            self.norm2 = norm_layer(dim, channel_first, output='autocast')
            self.mlp = Mlp(dim, int(dim * mlp_ratio), mlp_dropout, channel_first)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
