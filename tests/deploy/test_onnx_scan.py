"""The export-friendly chunked scan against the references, the SS2D switch, and its graph in ONNX Runtime."""
import math

import pytest
import torch

from mmvmamba import VMamba
from mmvmamba.deploy import chunked_affine_scan, chunked_cross_selective_scan, chunked_selective_scan, export_scan
from mmvmamba.models.layers.ss2d import SS2D
from mmvmamba_kernels import cross_selective_scan, cross_selective_scan_ref, selective_scan_ref
from tests.utils import assert_close


def _scan_inputs(batch, groups, d_inner, d_state, length, a_scale=8.0):
    rows = groups * d_inner
    return dict(
        u=torch.randn(batch, rows, length),
        delta=torch.randn(batch, rows, length),
        A=-torch.rand(rows, d_state) * a_scale - 0.05,
        B=torch.randn(batch, groups, d_state, length),
        C=torch.randn(batch, groups, d_state, length),
        D=torch.randn(rows),
        delta_bias=torch.randn(rows))


@pytest.mark.parametrize('batch,d_inner,d_state,length,chunk,levels', [
    pytest.param(1, 3, 1, 1, 64, 3, id='B1-D3-N1-L1'),
    pytest.param(2, 5, 16, 63, 64, 3, id='B2-D5-N16-L63'),
    pytest.param(1, 4, 1, 64, 64, 3, id='B1-D4-N1-L64-one-chunk'),
    pytest.param(1, 4, 1, 65, 64, 3, id='B1-D4-N1-L65-two-chunks'),
    pytest.param(2, 3, 16, 3249, 64, 3, id='B2-D3-N16-L3249-57x57'),
    pytest.param(1, 2, 1, 4097, 64, 3, id='B1-D2-N1-L4097-three-levels'),
    pytest.param(1, 3, 2, 999, 4, 5, id='B1-D3-N2-L999-chunk4-levels5'),
    pytest.param(1, 2, 1, 64, 4, 3, id='B1-D2-N1-L64-chunk4-full'),
])
def test_chunked_selective_scan_matches_the_reference(batch, d_inner, d_state, length, chunk, levels):
    inputs = _scan_inputs(batch, 4, d_inner, d_state, length)
    out = chunked_selective_scan(**inputs, chunk=chunk, levels=levels)
    assert_close('chunked_selective_scan', out, selective_scan_ref(**inputs))


def test_long_sequence_with_fast_decays_does_not_underflow_to_nan():
    # Decay products exp(sum delta * A) underflow to 0 within a few steps; a formulation that divides cumulative
    # products (or exponentiates positive cumulative sums) gives NaN/inf here.
    inputs = _scan_inputs(1, 4, 2, 4, 70_000, a_scale=200.0)
    inputs['delta'] = inputs['delta'] + 3.0
    out = chunked_selective_scan(**inputs)
    assert_close('chunked_selective_scan, L=70000', out, selective_scan_ref(**inputs))


def test_chunked_affine_scan_matches_a_loop():
    a, b = torch.rand(3, 2, 150, dtype=torch.float64), torch.randn(3, 2, 150, dtype=torch.float64)
    h, states = torch.zeros(3, 2, dtype=torch.float64), []
    for t in range(150):
        h = a[..., t] * h + b[..., t]
        states.append(h)
    torch.testing.assert_close(chunked_affine_scan(a, b, chunk=8, levels=3), torch.stack(states, -1))


@pytest.mark.parametrize('height,width,d_state,low_rank', [
    pytest.param(7, 9, 1, True, id='7x9-N1-low-rank'),
    pytest.param(13, 17, 16, False, id='13x17-N16'),
    pytest.param(1, 5, 1, True, id='1x5-N1-low-rank'),
])
def test_chunked_cross_selective_scan_matches_the_reference(height, width, d_state, low_rank):
    batch, dim, rank = 2, 6, 2
    x = torch.randn(batch, dim, height, width)
    delta = torch.randn(batch, 4, rank if low_rank else dim, height, width)
    args = (x, delta, -torch.rand(4 * dim, d_state) - 0.1, torch.randn(batch, 4, d_state, height, width),
            torch.randn(batch, 4, d_state, height, width), torch.randn(4 * dim), torch.randn(4 * dim), True,
            torch.randn(4, dim, rank) if low_rank else None)
    out = chunked_cross_selective_scan(*args, chunk=8, levels=3)
    assert_close('chunked_cross_selective_scan', out, cross_selective_scan_ref(*args))


def test_lengths_past_the_chunk_levels_raise():
    with pytest.raises(ValueError, match='L <= chunk'):
        chunked_affine_scan(torch.rand(1, 17), torch.rand(1, 17), chunk=4, levels=2)
    with pytest.raises(ValueError, match='power of two'):
        chunked_affine_scan(torch.rand(1, 8), torch.rand(1, 8), chunk=6, levels=2)


def _small_vmamba() -> VMamba:
    return VMamba(arch='tiny', dims=8, depths=(1, 1, 1, 1)).eval()


def test_export_scan_switches_every_ss2d_and_restores_them():
    model = _small_vmamba()
    x = torch.randn(1, 3, 37, 45)
    layers = [m for m in model.modules() if isinstance(m, SS2D)]
    with torch.no_grad():
        expected = model(x)
        with export_scan(model, chunk=8, levels=4):
            assert all(layer.scan_fn.func is chunked_cross_selective_scan for layer in layers)
            got = model(x)
    assert all('scan_fn' not in vars(layer) and layer.scan_fn is cross_selective_scan for layer in layers)
    for i, (out, ref) in enumerate(zip(got, expected)):
        assert_close(f'backbone output {i}', out, ref)


def test_export_scan_restores_on_error_and_refuses_nesting_and_non_vmamba_models():
    model = _small_vmamba()
    with pytest.raises(KeyError), export_scan(model):
        raise KeyError('inside the block')
    assert not any('scan_fn' in vars(m) for m in model.modules())
    with export_scan(model), pytest.raises(RuntimeError, match='nested'):
        with export_scan(model):
            pass
    with pytest.raises(ValueError, match='no SS2D'):
        with export_scan(torch.nn.Conv2d(3, 3, 1)):
            pass


def test_dynamic_ss2d_graph_is_correct_at_other_sizes_and_poisons_lengths_past_its_levels(tmp_path):
    """A strided conv and an SS2D exported with dynamic H and W (chunk 4, levels 3: up to 64 positions): correct in
    ONNX Runtime at sizes it was not traced at (one, two and three chunk levels, odd and non-square maps), and NaN
    past 64 positions, where eager code would raise."""
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        SS2D(8, d_state=2, ssm_ratio=1.0, gate=False, conv_bias=False, channel_first=True)).eval()
    path = tmp_path / 'ss2d.onnx'
    with torch.no_grad(), export_scan(model, chunk=4, levels=3):
        program = torch.onnx.export(model, (torch.randn(1, 3, 9, 12), ), input_names=['input'], dynamo=True,
                                    optimize=False, dynamic_shapes=({2: 'height', 3: 'width'}, ))
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for height, width in [(9, 12), (1, 5), (4, 4), (7, 15), (16, 16)]:  # maps of 3 to 64 positions
        x = torch.randn(1, 3, height, width)
        out = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
        with torch.no_grad():
            assert_close(f'SS2D graph at {height}x{width}', out, model(x))
    x = torch.randn(1, 3, 10, 26)  # a 5 x 13 map: 65 positions > 4 ** 3
    assert math.isnan(session.run(None, {'input': x.numpy()})[0].sum()), 'lengths past chunk ** levels must poison'
