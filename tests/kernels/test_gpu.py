"""GPU-only checks: the real VMamba-T shapes of anchors.md, bounded compilation, torch.compile with Inductor."""
import importlib

import pytest
import torch

import mmvmamba_kernels as mk
from tests.kernels.test_cross_selective_scan import make_spatial_inputs
from tests.kernels.test_selective_scan import check_against_ref, make_inputs
from tests.utils import assert_close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

# anchors.md kernel rows (VMamba-T, N = 1, K = 4): (batch, groups, dim, height, width)
ANCHOR_SHAPES = {
    '224-b128-stage1': (128, 4, 96, 56, 56),
    '224-b128-stage3': (128, 4, 384, 14, 14),
    'coco-b2-stage1': (2, 4, 96, 200, 334),
    'coco-b2-stage3': (2, 4, 384, 50, 84),
}


@pytest.fixture(autouse=True)
def _no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.mark.parametrize('name', list(ANCHOR_SHAPES))
def test_selective_scan_anchor_shapes_bf16(name):
    batch, groups, dim, height, width = ANCHOR_SHAPES[name]
    inputs = make_inputs(batch, groups, dim, height * width, 1, device='cuda')
    check_against_ref(lambda **kw: mk.selective_scan(**kw), mk.selective_scan_ref, inputs, torch.bfloat16)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
def test_selective_scan_v0_shape_n16(dtype):
    """Vanilla (v0) models: N = 16 and D = 2C."""
    inputs = make_inputs(2, 4, 192, 56 * 57, 16, device='cuda')
    check_against_ref(lambda **kw: mk.selective_scan(**kw), mk.selective_scan_ref, inputs, dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16], ids=['fp32', 'fp16', 'bf16'])
def test_cross_scan_merge_anchor_shape(dtype):
    batch, _, dim, height, width = ANCHOR_SHAPES['224-b128-stage1']
    x = torch.randn(batch, dim, height, width, device='cuda').to(dtype)
    assert torch.equal(mk.cross_scan(x), mk.cross_scan_ref(x))
    y = torch.randn(batch, 4, dim, height, width, device='cuda')
    assert_close('merge', mk.cross_merge(y.to(dtype)), mk.cross_merge_ref(y), mk.cross_merge_ref(y.to(dtype)), dtype)


@pytest.mark.parametrize('name', ['224-b128-stage3', 'coco-b2-stage3'])
def test_cross_selective_scan_anchor_shapes_bf16(name):
    batch, _, dim, height, width = ANCHOR_SHAPES[name]
    inputs = make_spatial_inputs(batch, dim, height, width, 1, device='cuda')
    check_against_ref(lambda **kw: mk.cross_selective_scan(**kw), mk.cross_selective_scan_ref, inputs,
                      torch.bfloat16)


def _n_compiled(kernel) -> int:
    return sum(len(cache[0]) for cache in kernel.device_caches.values())


def test_new_sizes_do_not_recompile():
    """H, W and L are runtime arguments: once each L % 16 class has been seen, new sizes compile nothing."""
    launch = importlib.import_module('mmvmamba_kernels.scan_launch')
    kernels = [launch.cross_scan_kernel, launch.cross_merge_flat_kernel, launch.cross_merge_tile_kernel,
               launch.selective_scan_fwd_kernel, launch.selective_scan_bwd_kernel]

    def step(height, width, batch=1):
        x = torch.randn(batch, 8, height, width, device='cuda', dtype=torch.bfloat16, requires_grad=True)
        xs = mk.cross_scan(x)
        s = make_inputs(batch, 4, 8, height * width, 1, device='cuda')
        y = mk.selective_scan(xs.view(batch, 32, -1), s['delta'].bfloat16(), s['A'], s['B'].bfloat16(),
                              s['C'].bfloat16(), s['D'], s['delta_bias'])
        mk.cross_merge(y.view(batch, 4, 8, height, width)).sum().backward()

    # the variants: L % 16 == 0 or not (and the flat merge's B*C*L), times one chunk per L-segment or several
    # (PREFETCH), short or long maps (the forward's chunk split), narrow or wide maps (flat or tiled merge);
    # (50, 61) is the short map with L % 16 != 0 and several chunks per segment at batch 1
    for height, width in [(16, 17), (17, 19), (96, 100), (100, 97), (5, 300), (8, 300), (50, 61)]:
        step(height, width)
    before = [_n_compiled(k) for k in kernels]
    for height, width in [(56, 57), (23, 64), (200, 41), (37, 37), (64, 64), (113, 77), (7, 301), (9, 320)]:
        step(height, width, batch=2)
    after = [_n_compiled(k) for k in kernels]
    assert after == before, f'compiled variants grew from {before} to {after} over new sizes'


def test_torch_compile_inductor_fullgraph():
    def block(x, delta, A, B, C, D, delta_bias):
        batch, dim, height, width = x.shape
        xs = mk.cross_scan(x).view(batch, 4 * dim, -1)
        ys = mk.selective_scan(xs, delta, A, B, C, D, delta_bias)
        return mk.cross_merge(ys.view(batch, 4, dim, height, width)).square().mean()

    compiled = torch.compile(block, fullgraph=True)
    for height, width in [(9, 11), (14, 15)]:
        s = make_inputs(2, 4, 6, height * width, 1, device='cuda')
        x = torch.randn(2, 6, height, width, device='cuda', requires_grad=True)
        args = (x, s['delta'], s['A'], s['B'], s['C'], s['D'], s['delta_bias'])
        loss = compiled(*args)
        loss.backward()
        grad = x.grad.clone()
        x.grad = None
        block(*args).backward()
        torch.testing.assert_close(loss, block(*args))
        torch.testing.assert_close(grad, x.grad)
