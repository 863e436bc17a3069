"""Triton cross-scan / cross-merge against the PyTorch references: outputs and gradients."""
import importlib

import pytest
import torch

import mmvmamba_kernels as mk
from tests.utils import assert_close

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (1, 2, 5, 300): wider than the flat merge's limit, so the tiled merge runs
SHAPES = [(1, 3, 7, 9), (3, 5, 13, 17), (1, 2, 56, 57), (3, 1, 33, 40), (1, 2, 1, 5), (1, 1, 1, 1), (1, 2, 5, 300)]


def _cases():
    for batch, channels, height, width in SHAPES:
        for dtype in DTYPES:
            yield pytest.param(batch, channels, height, width, dtype,
                               id=f'B{batch}-C{channels}-H{height}-W{width}-{str(dtype)[6:]}')


@pytest.mark.parametrize('batch, channels, height, width, dtype', list(_cases()))
def test_cross_scan(batch, channels, height, width, dtype):
    x32 = torch.randn(batch, channels, height, width, device=DEVICE)
    x = x32.to(dtype).clone().requires_grad_()
    out = mk.cross_scan(x, use_triton=True)
    grad = torch.randn_like(out, dtype=torch.float32)
    (out * grad.to(dtype)).sum().backward()

    x_ref = x32.clone().requires_grad_()
    out_ref = mk.cross_scan_ref(x_ref)
    (out_ref * grad).sum().backward()
    x_lp = x32.to(dtype).clone().requires_grad_()
    out_lp = mk.cross_scan_ref(x_lp)
    (out_lp * grad.to(dtype)).sum().backward()

    assert out.dtype == dtype and out.shape == (batch, 4, channels, height * width)
    assert_close('out', out, out_ref, out_lp, dtype)
    assert_close('dx', x.grad, x_ref.grad, x_lp.grad, dtype)


@pytest.mark.parametrize('batch, channels, height, width, dtype', list(_cases()))
def test_cross_merge(batch, channels, height, width, dtype):
    y32 = torch.randn(batch, 4, channels, height, width, device=DEVICE)
    y = y32.to(dtype).clone().requires_grad_()
    out = mk.cross_merge(y, use_triton=True)
    grad = torch.randn_like(out, dtype=torch.float32)
    (out * grad.to(dtype)).sum().backward()

    y_ref = y32.clone().requires_grad_()
    out_ref = mk.cross_merge_ref(y_ref)
    (out_ref * grad).sum().backward()
    y_lp = y32.to(dtype).clone().requires_grad_()
    out_lp = mk.cross_merge_ref(y_lp)
    (out_lp * grad.to(dtype)).sum().backward()

    assert out.dtype == dtype and out.shape == (batch, channels, height, width)
    assert_close('out', out, out_ref, out_lp, dtype)
    assert_close('dy', y.grad, y_ref.grad, y_lp.grad, dtype)


@pytest.mark.parametrize('batch, channels, height, width, dtype', list(_cases()))
def test_per_direction_scan_and_its_inverse(batch, channels, height, width, dtype):
    """The fused backward's layout changes: direction k of a ``[B, 4, X, H, W]`` tensor into direction k's order
    and back; pure permutations, so they must equal the PyTorch references exactly."""
    from mmvmamba_kernels.cross_selective_scan_ref import seq_to_spatial, spatial_to_seq
    from mmvmamba_kernels.scan_launch import launch_seq_to_spatial, launch_spatial_to_seq

    t = torch.randn(batch, 4, channels, height, width, device=DEVICE).to(dtype)
    seq = launch_spatial_to_seq(t)
    assert seq.dtype == dtype and torch.equal(seq, spatial_to_seq(t))
    back = launch_seq_to_spatial(seq, height, width)
    assert back.dtype == dtype and torch.equal(back, t)
    seq32 = torch.randn(batch, 4, channels, height * width, device=DEVICE)
    cast = launch_seq_to_spatial(seq32, height, width, out_dtype=dtype)
    # the fp32 -> 16-bit rounding may differ by one unit between Triton (or its interpreter) and PyTorch
    assert cast.dtype == dtype
    torch.testing.assert_close(cast.float(), seq_to_spatial(seq32, height, width).to(dtype).float(), atol=0,
                               rtol=torch.finfo(dtype).eps)


@pytest.mark.parametrize('path', ['flat', 'tiled'])
@pytest.mark.parametrize('height, width', [(13, 17), (9, 300), (1, 130)])
def test_both_merge_kernels(monkeypatch, path, height, width):
    """The flat and the tiled merge kernel (chosen by the map's width) each on maps of both kinds, summed and per
    direction; the permutations must be exact."""
    from mmvmamba_kernels.cross_selective_scan_ref import seq_to_spatial
    launch = importlib.import_module('mmvmamba_kernels.scan_launch')

    monkeypatch.setattr(launch, 'MERGE_TILE_MIN_ROWS', 0 if path == 'flat' else 10**9)
    seq = torch.randn(2, 4, 3, height * width, device=DEVICE)
    merged = launch.launch_cross_merge(seq, height, width)
    torch.testing.assert_close(merged, mk.cross_merge_ref(seq.view(2, 4, 3, height, width)), rtol=1e-6, atol=1e-6)
    assert torch.equal(launch.launch_seq_to_spatial(seq, height, width), seq_to_spatial(seq, height, width))


def test_cross_scan_accepts_strided_input():
    x = torch.randn(2, 3, 9, 7, device=DEVICE).transpose(2, 3)  # [2, 3, 7, 9], not contiguous
    assert_close('out', mk.cross_scan(x, use_triton=True), mk.cross_scan_ref(x))
