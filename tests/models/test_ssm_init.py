"""From-scratch initialisation of SS2D's SSM parameters (Mamba's "v0" scheme; spec 3.11).

A checkpoint overwrites all of them, so only training from scratch (``init_cfg=None``) sees these values:
``A_logs[k*D + d, n] = log(n + 1)``, ``Ds = 1``, ``softplus(dt_projs_bias)`` log-uniform in [dt_min, dt_max] with a
floor, ``x_proj_weight`` ~ U(-D^-0.5, D^-0.5) per direction (nn.Linear's default), ``dt_projs_weight`` ~
U(-R^-0.5, R^-0.5).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmvmamba import VMamba
from mmvmamba.models.layers.ss2d import SS2D

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 0.1, 1e-4


def _assert_uniform(values: torch.Tensor, bound: float, name: str) -> None:
    """Samples of U(-bound, bound): inside the bounds, reaching close to both, with the uniform's spread."""
    values = values.detach().double().flatten()
    assert values.abs().max() <= bound, f'{name}: {values.abs().max():.4g} outside +-{bound:.4g}'
    assert values.min() < -0.9 * bound and values.max() > 0.9 * bound, f'{name}: does not span +-{bound:.4g}'
    std = bound / math.sqrt(3)
    assert abs(values.mean()) < 5 * std / math.sqrt(values.numel()), f'{name}: mean {values.mean():.3g}'
    assert abs(values.std() / std - 1) < 0.1, f'{name}: std {values.std():.4g} vs {std:.4g}'


@pytest.mark.parametrize('dim, d_state, ssm_ratio, dt_rank', [(96, 1, 2.0, None), (100, 16, 1.0, 3)],
                         ids=['C96-N1-D192-R6', 'C100-N16-D100-R3'])
def test_ssm_parameters_from_scratch(dim, d_state, ssm_ratio, dt_rank):
    ss2d = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank)
    k, d_inner, rank = 4, int(ssm_ratio * dim), math.ceil(dim / 16) if dt_rank is None else dt_rank
    assert (ss2d.d_inner, ss2d.dt_rank) == (d_inner, rank)

    expected_a = torch.tensor([math.log(n + 1) for n in range(d_state)]).expand(k * d_inner, d_state)
    torch.testing.assert_close(ss2d.A_logs.detach(), expected_a, rtol=1e-6, atol=0)
    assert torch.equal(ss2d.Ds.detach(), torch.ones(k * d_inner))

    # softplus(bias) = dt, with log(dt) uniform over [log dt_min, log dt_max].
    dt = F.softplus(ss2d.dt_projs_bias.detach().double()).flatten()
    assert dt.min() >= DT_MIN * (1 - 1e-5) and dt.max() <= DT_MAX * (1 + 1e-5), (dt.min(), dt.max())
    position = (dt.log() - math.log(DT_MIN)) / (math.log(DT_MAX) - math.log(DT_MIN))  # U(0, 1) if log-uniform
    assert position.min() < 0.05 and position.max() > 0.95
    assert abs(position.mean() - 0.5) < 5 * (1 / math.sqrt(12)) / math.sqrt(dt.numel()), position.mean()
    assert abs((position < 0.5).double().mean() - 0.5) < 0.1

    assert ss2d.x_proj_weight.shape == (k, rank + 2 * d_state, d_inner)
    for direction in range(k):
        _assert_uniform(ss2d.x_proj_weight[direction], d_inner**-0.5, f'x_proj_weight[{direction}]')
    _assert_uniform(ss2d.dt_projs_weight, rank**-0.5, 'dt_projs_weight')


def test_dt_floor():
    """Step sizes drawn below the floor start at the floor."""
    ss2d = SS2D(32, d_state=4)
    ss2d.reset_ssm_parameters(dt_min=1e-6, dt_max=1e-5, dt_floor=DT_FLOOR)
    dt = F.softplus(ss2d.dt_projs_bias.detach().double())
    torch.testing.assert_close(dt, torch.full_like(dt, DT_FLOOR), rtol=1e-5, atol=0)


def test_backbone_from_scratch_uses_the_scheme():
    model = VMamba(arch='tiny', dims=16, depths=(1, 1, 2, 1))
    model.init_weights()
    blocks = [m for m in model.modules() if isinstance(m, SS2D)]
    assert len(blocks) == 5
    for block in blocks:
        expected_a = torch.tensor([math.log(n + 1) for n in range(block.d_state)]).expand_as(block.A_logs)
        torch.testing.assert_close(block.A_logs.detach(), expected_a, rtol=1e-6, atol=0)
        dt = F.softplus(block.dt_projs_bias.detach().double())
        assert dt.min() >= DT_MIN * (1 - 1e-5) and dt.max() <= DT_MAX * (1 + 1e-5)
