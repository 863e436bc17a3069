"""The pure-PyTorch SS2D references against the specification's definitions, written independently here."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from mmvmamba_kernels import cross_merge_ref, cross_scan_ref, selective_scan_ref


def test_cross_scan_orders_match_the_spec_example():
    # spec 3.8: H=2, W=3, positions numbered row-major
    x = torch.arange(6.).view(1, 1, 2, 3)
    xs = cross_scan_ref(x)[0, :, 0].long().tolist()
    assert xs == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]


@pytest.mark.parametrize('height,width', [(2, 3), (7, 9), (5, 1), (1, 4)])
def test_cross_merge_is_the_adjoint_of_cross_scan(height, width):
    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    y = torch.randn(2, 4, 3, height, width, dtype=torch.float64)
    lhs = (cross_scan_ref(x) * y.flatten(3)).sum()
    rhs = (x * cross_merge_ref(y)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_cross_merge_formula():
    height, width = 3, 4
    length = height * width
    y = torch.randn(1, 4, 2, height, width)
    seq = y.flatten(3)
    merged = cross_merge_ref(y)
    for h, w in itertools.product(range(height), range(width)):
        p, q = h * width + w, w * height + h
        expected = seq[0, 0, :, p] + seq[0, 2, :, length - 1 - p] + seq[0, 1, :, q] + seq[0, 3, :, length - 1 - q]
        torch.testing.assert_close(merged[0, :, h, w], expected)


def _scan_elementwise(u, delta, A, B, C, D, delta_bias):
    """Spec 3.9, one scalar at a time, in float64."""
    batch, rows, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    y = torch.zeros(batch, rows, length, dtype=torch.float64)
    for b, r in itertools.product(range(batch), range(rows)):
        k = r // (rows // groups)
        h = [0.0] * d_state
        for t in range(length):
            dt = F.softplus(delta[b, r, t] + delta_bias[r]).item()
            for n in range(d_state):
                h[n] = torch.exp(torch.tensor(dt * A[r, n].item())).item() * h[n] + dt * B[b, k, n, t] * u[b, r, t]
            y[b, r, t] = sum(C[b, k, n, t] * h[n] for n in range(d_state)) + D[r] * u[b, r, t]
    return y


@pytest.mark.parametrize('d_state', [1, 3])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_selective_scan_matches_the_recurrence(d_state, dtype):
    batch, groups, d_inner, length = 2, 4, 3, 7
    rows = groups * d_inner
    u = torch.randn(batch, rows, length).to(dtype)
    delta = torch.randn(batch, rows, length).to(dtype)
    A = -torch.rand(rows, d_state) * 2
    B = torch.randn(batch, groups, d_state, length).to(dtype)
    C = torch.randn(batch, groups, d_state, length).to(dtype)
    D = torch.randn(rows)
    delta_bias = torch.randn(rows)
    out = selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus=True)
    assert out.dtype == torch.float32
    expected = _scan_elementwise(*(t.double() for t in (u, delta, A, B, C, D, delta_bias)))
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_selective_scan_without_optional_terms():
    u, delta = torch.rand(1, 4, 5), torch.rand(1, 4, 5)
    A, B, C = -torch.ones(4, 1), torch.ones(1, 4, 1, 5), torch.ones(1, 4, 1, 5)
    out = selective_scan_ref(u, delta, A, B, C, delta_softplus=False)
    h = torch.zeros(1, 4)
    for t in range(5):
        h = torch.exp(-delta[..., t]) * h + delta[..., t] * u[..., t]
        torch.testing.assert_close(out[..., t], h)
