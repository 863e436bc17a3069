"""Stochastic depth. Written here because torch has no DropPath module and mmcv's would make the backbone depend
on mmcv, which has to be compiled from source; the backbone needs only torch and mmengine."""
import torch
import torch.nn as nn


class DropPath(nn.Module):
    """Zero whole samples of a residual branch with probability ``drop_prob`` in training, rescaling the rest.

    Args:
        drop_prob: Probability of dropping a sample's branch. Default: 0.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}')
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'
