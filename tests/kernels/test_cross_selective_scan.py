"""Fused Triton cross_selective_scan against the composition of the references (spatial-layout inputs)."""
import importlib

import pytest
import torch

import mmvmamba_kernels as mk
from mmvmamba_kernels.cross_selective_scan import CrossSelectiveScanFunction
from mmvmamba_kernels.cross_selective_scan_ref import spatial_to_seq
from tests.kernels.test_selective_scan import DEVICE, DTYPES, check_against_ref
from tests.utils import assert_close

css = importlib.import_module('mmvmamba_kernels.cross_selective_scan')
launch = importlib.import_module('mmvmamba_kernels.scan_launch')   # routes, tiles and the kernels' launches


def make_spatial_inputs(batch: int, dim: int, height: int, width: int, d_state: int, device: str = DEVICE) -> dict:
    rows = 4 * dim
    return dict(
        x=torch.randn(batch, dim, height, width, device=device),
        delta=0.5 * torch.randn(batch, 4, dim, height, width, device=device) - 1.0,
        A=-torch.exp(torch.rand(rows, d_state, device=device) * 2.5 - 1.0),
        B=torch.randn(batch, 4, d_state, height, width, device=device),
        C=torch.randn(batch, 4, d_state, height, width, device=device),
        D=torch.randn(rows, device=device),
        delta_bias=0.5 * torch.randn(rows, device=device),
    )


def _unfused_ref(x, delta, A, B, C, D, delta_bias):
    """The spec's definition, written out: cross_scan, selective scan on seq(.) inputs, cross_merge."""
    batch, dim, height, width = x.shape
    xs = mk.cross_scan_ref(x).reshape(batch, 4 * dim, -1)
    ys = mk.selective_scan_ref(xs, spatial_to_seq(delta).reshape(batch, 4 * dim, -1), A, spatial_to_seq(B),
                               spatial_to_seq(C), D, delta_bias)
    return mk.cross_merge_ref(ys.view(batch, 4, dim, height, width))


SHAPES = [(1, 3, 7, 9, 1), (3, 5, 5, 7, 1), (1, 3, 6, 5, 16)]


def _cases():
    for batch, dim, height, width, d_state in SHAPES:
        for dtype in DTYPES:
            yield pytest.param(batch, dim, height, width, d_state, dtype,
                               id=f'B{batch}-D{dim}-H{height}-W{width}-N{d_state}-{str(dtype)[6:]}')


@pytest.mark.parametrize('batch, dim, height, width, d_state, dtype', list(_cases()))
def test_cross_selective_scan(batch, dim, height, width, d_state, dtype):
    inputs = make_spatial_inputs(batch, dim, height, width, d_state)
    check_against_ref(lambda **kw: mk.cross_selective_scan(**kw, use_triton=True), mk.cross_selective_scan_ref,
                      inputs, dtype)


# spatial kernels both ways; the sequence-layout backward only (as on mid-length maps); sequence layout both ways
ROUTES = {'spatial': {}, 'sequence-bwd': dict(SPATIAL_BWD_MAX_LENGTH=0),
          'sequence': dict(SPATIAL_BWD_MAX_LENGTH=0, SPATIAL_FWD_MAX_LENGTH=0)}


def _route(monkeypatch, route: str) -> None:
    for name, value in ROUTES[route].items():
        monkeypatch.setattr(launch, name, value)


@pytest.mark.parametrize('dtype', DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize('route', list(ROUTES))
def test_cross_selective_scan_low_rank_delta(route, dtype, monkeypatch):
    """delta_proj_weight: the step sizes formed inside from the low-rank dt (forward and again in the backward)."""
    _route(monkeypatch, route)
    batch, dim, height, width, rank = 2, 5, 6, 7, 3
    inputs = make_spatial_inputs(batch, dim, height, width, 1)
    inputs['delta'] = torch.randn(batch, 4, rank, height, width, device=DEVICE)
    inputs['delta_proj_weight'] = 0.3 * torch.randn(4, dim, rank, device=DEVICE)
    inputs['delta_bias'] = inputs['delta_bias'] - 1.0
    check_against_ref(lambda **kw: mk.cross_selective_scan(**kw, use_triton=True), mk.cross_selective_scan_ref,
                      inputs, dtype)


@pytest.mark.parametrize('d_state', [1, 2])
def test_cross_selective_scan_sequence_route(d_state, monkeypatch):
    """Maps longer than SPATIAL_FWD_MAX_LENGTH run forward and backward through cross-scanned copies."""
    _route(monkeypatch, 'sequence')
    launches = []
    for name in ('selective_scan_fwd_kernel', 'selective_scan_bwd_kernel'):
        monkeypatch.setattr(launch, name, _RecordLaunches(getattr(launch, name), launches))
    inputs = make_spatial_inputs(2, 3, 7, 5, d_state)
    check_against_ref(lambda **kw: mk.cross_selective_scan(**kw, use_triton=True), mk.cross_selective_scan_ref,
                      inputs, torch.float32)
    assert [meta['SPATIAL'] for meta in launches] == [False, False]


def test_low_rank_delta_shape_errors():
    inputs = make_spatial_inputs(1, 3, 4, 5, 1)
    weight = torch.randn(4, 3, 2, device=DEVICE)
    with pytest.raises(ValueError, match='delta has shape'):
        mk.cross_selective_scan(**inputs, delta_proj_weight=weight)  # full-size delta given with a weight
    inputs['delta'] = torch.randn(1, 4, 2, 4, 5, device=DEVICE)
    with pytest.raises(ValueError, match='delta_proj_weight has shape'):
        mk.cross_selective_scan(**inputs, delta_proj_weight=torch.randn(4, 5, 2, device=DEVICE))


@pytest.mark.parametrize('fwd_split', [1, 2], ids=lambda n: f'fwdsplit{n}')
@pytest.mark.parametrize('seg_chunks', [1, 2], ids=lambda s: f'seg{s}')
def test_cross_selective_scan_split_along_L(seg_chunks, fwd_split, monkeypatch):
    """Chunks, L-segments and (fwd_split 2) forward chunks of two backward chunks, at a small L."""
    monkeypatch.setitem(launch.TUNING, 'long_length', 0)
    monkeypatch.setitem(launch.TUNING, 'fwd_split_long', fwd_split)
    inputs = make_spatial_inputs(2, 3, 9, 7, 1)   # L = 63: 4 chunks of 16 steps

    def fn(x, delta, A, B, C, D, delta_bias):
        return CrossSelectiveScanFunction.apply(x, delta, A, B, C, D, delta_bias, True, 16, seg_chunks, None)

    check_against_ref(fn, mk.cross_selective_scan_ref, inputs, torch.float32)


def test_cross_selective_scan_ref_matches_its_definition():
    inputs = make_spatial_inputs(2, 3, 5, 7, 2)
    torch.testing.assert_close(mk.cross_selective_scan_ref(**inputs), _unfused_ref(**inputs))


def test_cross_selective_scan_sequence_route_backward(monkeypatch):
    """Maps longer than SPATIAL_BWD_MAX_LENGTH run the backward through cross-scanned copies."""
    _route(monkeypatch, 'sequence-bwd')
    inputs = make_spatial_inputs(2, 3, 7, 5, 1)
    check_against_ref(lambda **kw: mk.cross_selective_scan(**kw, use_triton=True), mk.cross_selective_scan_ref,
                      inputs, torch.float32)


@pytest.mark.parametrize('low_rank', [False, True], ids=['full-delta', 'low-rank'])
def test_spatial_and_sequence_routes_agree(low_rank, monkeypatch):
    """The launchers of both routes give the same forward and the same gradients, the low-rank ones included."""
    s = make_spatial_inputs(2, 3, 6, 7, 2)
    weight = 0.3 * torch.randn(4, 3, 2, device=DEVICE) if low_rank else None
    if low_rank:
        s['delta'] = torch.randn(2, 4, 2, 6, 7, device=DEVICE)
    args = [s[k] for k in ('x', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')] + [weight, torch.float32]
    out, hs = css.cross_selective_scan_fwd(*args, True, 16, 2)
    dout = torch.randn_like(out)
    spatial = css.cross_selective_scan_bwd(*args, dout, hs, True, 16, 2)
    _route(monkeypatch, 'sequence')
    out_seq, hs_seq = css.cross_selective_scan_fwd(*args, True, 16, 2)
    assert_close('out', out_seq, out)
    assert_close('hs', hs_seq, hs)
    sequence = css.cross_selective_scan_bwd(*args, dout, hs, True, 16, 2)
    names = ('dx', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'ddelta_bias', 'ddelta_proj_weight')
    for name, a, b in zip(names, spatial, sequence, strict=True):
        assert a.shape == b.shape, name
        assert a.is_contiguous() and b.is_contiguous(), f'{name}: the custom op promises contiguous gradients'
        assert_close(name, a, b)
    assert spatial[-1].shape == (weight.shape if low_rank else (0, ))


class _RecordLaunches:
    """Stands in for a Triton kernel: records each launch's compile-time options, then launches the kernel."""

    def __init__(self, kernel, launches: list):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.launches.append(meta)
            self.kernel[grid](*args, **meta)
        return launch


@pytest.mark.parametrize('deterministic', [False, True], ids=['default', 'deterministic'])
def test_deterministic_algorithms_avoid_atomics(deterministic, monkeypatch):
    """Under torch.use_deterministic_algorithms the scan takes the sequence-layout routes and one dB/dC buffer per row
    block (no atomics, whose order varies); by default the same call uses the spatial kernels and shared slots."""
    launches = []
    for name in ('selective_scan_fwd_kernel', 'selective_scan_bwd_kernel'):
        monkeypatch.setattr(launch, name, _RecordLaunches(getattr(launch, name), launches))
    inputs = make_spatial_inputs(2, 9, 5, 7, 1)   # L = 35: spatial backward by default; 3 row blocks of 4 rows
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        check_against_ref(lambda **kw: mk.cross_selective_scan(**kw, use_triton=True), mk.cross_selective_scan_ref,
                          inputs, torch.float32)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert len(launches) == 2
    uses_atomics = [meta['SPATIAL'] or meta.get('ATOMIC_BC', False) for meta in launches]
    assert uses_atomics == ([False, False] if deterministic else [True, True])
