"""Triton selective scan against the PyTorch reference: output and the gradients of every input."""
import importlib

import pytest
import torch

import mmvmamba_kernels as mk
from mmvmamba_kernels.scan_launch import scan_config
from mmvmamba_kernels.selective_scan import SelectiveScanFunction
from tests.utils import assert_close

launch = importlib.import_module('mmvmamba_kernels.scan_launch')   # tiles and launchers of the kernels

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')


def make_inputs(batch: int, groups: int, dim: int, length: int, d_state: int, device: str = DEVICE,
                has_D: bool = True, has_bias: bool = True) -> dict[str, torch.Tensor | None]:
    """fp32 inputs in VMamba's ranges: softplus(delta + bias) around 1e-2..1, A = -exp(A_log) < 0."""
    rows = groups * dim
    return dict(
        u=torch.randn(batch, rows, length, device=device),
        delta=0.5 * torch.randn(batch, rows, length, device=device) - 1.0,
        A=-torch.exp(torch.rand(rows, d_state, device=device) * 2.5 - 1.0),
        B=torch.randn(batch, groups, d_state, length, device=device),
        C=torch.randn(batch, groups, d_state, length, device=device),
        D=torch.randn(rows, device=device) if has_D else None,
        delta_bias=0.5 * torch.randn(rows, device=device) if has_bias else None,
    )


PARAMS = ('A', 'D', 'delta_bias', 'delta_proj_weight')  # fp32 parameters in VMamba, whatever the activations' dtype


def run_and_grad(fn, inputs: dict, dtype: torch.dtype, grad: torch.Tensor, params_fp32: bool = True):
    """Cast u, delta, B, C to ``dtype`` (A, D, delta_bias stay fp32, as in VMamba), run ``fn`` and backprop ``grad``."""
    leaves = {}
    for name, t in inputs.items():
        if t is None:
            leaves[name] = None
            continue
        cast = t if (params_fp32 and name in PARAMS) else t.to(dtype)
        leaves[name] = cast.detach().clone().requires_grad_()
    out = fn(**leaves)
    (out * grad).sum().backward()
    return out, {k: (v.grad if v is not None else None) for k, v in leaves.items()}


def check_against_ref(fn, ref_fn, inputs: dict, dtype: torch.dtype) -> None:
    grad_shape = ref_fn(**{k: v for k, v in inputs.items()}).shape
    grad = torch.randn(grad_shape, device=inputs['A'].device)
    out_ref, grads_ref = run_and_grad(ref_fn, inputs, torch.float32, grad)
    out, grads = run_and_grad(fn, inputs, dtype, grad)
    out_lp, grads_lp = (None, {}) if dtype == torch.float32 else run_and_grad(ref_fn, inputs, dtype, grad)
    assert out.dtype == torch.float32
    assert_close('out', out, out_ref, out_lp, dtype)
    for name in grads_ref:
        if grads_ref[name] is None:
            assert grads[name] is None
            continue
        assert grads[name].dtype == (inputs[name].dtype if name in PARAMS else dtype), name
        assert_close(f'd{name}', grads[name], grads_ref[name], grads_lp.get(name), dtype)


# (batch, groups, dim, length, d_state): nothing a power of two, odd L, D not a multiple of BLOCK_D
SHAPES = [(1, 4, 5, 63, 1), (3, 4, 5, 221, 1), (1, 4, 3, 63, 16), (3, 4, 3, 35, 16)]


def _cases():
    for batch, groups, dim, length, d_state in SHAPES:
        for dtype in DTYPES:
            yield pytest.param(batch, groups, dim, length, d_state, dtype,
                               id=f'B{batch}-K{groups}-D{dim}-L{length}-N{d_state}-{str(dtype)[6:]}')


def _step_by_step(u, delta, A, B, C, D, delta_bias):
    """The recurrence of the reference's docstring, one step at a time (what the prefix scan must equal)."""
    dt = torch.nn.functional.softplus(delta + delta_bias[:, None])
    rows = u.shape[1]
    Bx = B.repeat_interleave(rows // B.shape[1], dim=1)
    Cx = C.repeat_interleave(rows // C.shape[1], dim=1)
    h = u.new_zeros(u.shape[0], rows, A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


@pytest.mark.parametrize('length, d_state', [(1, 1), (2, 1), (37, 1), (64, 16), (100, 3)])
def test_reference_matches_the_step_by_step_recurrence(length, d_state):
    inputs = make_inputs(2, 3, 4, length, d_state, device='cpu')
    leaves = {k: v.double().requires_grad_() for k, v in inputs.items()}
    out = mk.selective_scan_ref(**leaves)
    # with L = 1 the decay never acts (h_{-1} = 0): A's gradient is zero, and the prefix scan leaves A unused
    grads = torch.autograd.grad(out.square().sum(), list(leaves.values()), allow_unused=True, materialize_grads=True)
    expected = _step_by_step(**leaves)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(leaves.values()))
    # the reference computes in fp32 (the loop here in fp64): fp32 tolerances, gradients included
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)
    for name, g, e in zip(leaves, grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4, msg=f'd{name}')


def test_reference_compiles_in_one_graph():
    """tools/benchmark_kernels.py times torch.compile of the reference: it must trace without graph breaks."""
    inputs = make_inputs(1, 2, 3, 37, 1, device='cpu')
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    compiled = torch.compile(mk.selective_scan_ref, backend='aot_eager', fullgraph=True)
    out = compiled(**leaves)
    out.square().sum().backward()
    expected_leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    expected = mk.selective_scan_ref(**expected_leaves)
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected)
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad, expected_leaves[name].grad, msg=f'd{name}')


@pytest.mark.parametrize('batch, groups, dim, length, d_state, dtype', list(_cases()))
def test_selective_scan(batch, groups, dim, length, d_state, dtype):
    inputs = make_inputs(batch, groups, dim, length, d_state)
    check_against_ref(lambda **kw: mk.selective_scan(**kw, use_triton=True), mk.selective_scan_ref, inputs, dtype)


@pytest.mark.parametrize('fwd_split', [1, 2, 4], ids=lambda n: f'fwdsplit{n}')
@pytest.mark.parametrize('d_state', [1, 5], ids=lambda n: f'N{n}')
@pytest.mark.parametrize('seg_chunks, prefetch', [(1, True), (2, True), (5, True), (5, False)],
                         ids=['seg1', 'seg2', 'seg5', 'seg5-noprefetch'])
def test_selective_scan_split_along_L(seg_chunks, prefetch, d_state, fwd_split, monkeypatch):
    """Several chunks and several L-segments (summary pass + look-back), forced at a small L; with fwd_split > 1
    (N = 1 only) the forward walks chunks of fwd_split * 16 steps and saves the states inside them."""
    monkeypatch.setitem(launch.TUNING, 'prefetch', prefetch)
    monkeypatch.setitem(launch.TUNING, 'long_length', 0)
    monkeypatch.setitem(launch.TUNING, 'fwd_split_long', fwd_split)
    inputs = make_inputs(2, 2, 3, 71, d_state)   # 5 chunks of 16 steps: 5, 3 or 1 segments

    def fn(u, delta, A, B, C, D, delta_bias):
        return SelectiveScanFunction.apply(u, delta, A, B, C, D, delta_bias, True, 16, seg_chunks)

    check_against_ref(fn, mk.selective_scan_ref, inputs, torch.float32)


@pytest.mark.parametrize('has_D, has_bias, softplus', [(False, False, False), (True, False, True), (False, True, True)],
                         ids=['noD-nobias-nosoftplus', 'D-nobias', 'noD-bias'])
def test_selective_scan_options(has_D, has_bias, softplus):
    inputs = make_inputs(1, 2, 3, 45, 2, has_D=has_D, has_bias=has_bias)
    if not softplus:
        inputs['delta'] = torch.rand_like(inputs['delta']) * 0.2   # positive step sizes without the softplus
    check_against_ref(lambda **kw: mk.selective_scan(**kw, delta_softplus=softplus, use_triton=True),
                      lambda **kw: mk.selective_scan_ref(**kw, delta_softplus=softplus), inputs, torch.float32)


@pytest.mark.parametrize('slots', [0, 1, 2], ids=lambda n: f'slots{n}')
def test_selective_scan_shared_partial_slots(slots, monkeypatch):
    """dB, dC partial sums of 4 row blocks (D = 7, two rows a block) in 1 or 2 slots through atomics, or one each."""
    monkeypatch.setitem(launch.TUNING, 'bc_slots', slots)
    inputs = make_inputs(2, 2, 7, 71, 1)
    check_against_ref(lambda **kw: mk.selective_scan(**kw, use_triton=True), mk.selective_scan_ref, inputs,
                      torch.float32)


def test_forward_split_only_on_long_single_state_scans():
    assert launch.forward_split(66800, 1) == launch.TUNING['fwd_split_long'] > 1
    assert launch.forward_split(3136, 1) == launch.forward_split(66800, 16) == 1


def test_scan_config_block_t_is_shared():
    """The backward reuses the forward's chunk states, so both use one block_t per (L, N)."""
    for length in (1, 17, 256, 3136, 66800):
        for d_state in (1, 4, 16):
            cfg = scan_config(length, d_state)
            assert cfg['block_t'] * cfg['block_n'] * cfg['block_d_fwd'] <= 4096
