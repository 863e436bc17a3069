"""Dispatch rules, argument errors, the custom-op registration and torch.compile of the public API."""
import subprocess
import sys

import pytest
import torch

import mmvmamba_kernels as mk
from tests.kernels.test_selective_scan import DEVICE, make_inputs


def test_refs_import_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import mmvmamba_kernels as mk\n"
            "from mmvmamba_kernels.cross_scan_ref import cross_scan_ref\n"
            "from mmvmamba_kernels.selective_scan_ref import selective_scan_ref\n"
            "from mmvmamba_kernels.cross_selective_scan_ref import cross_selective_scan_ref\n"
            "import torch\n"
            "assert not mk.HAS_TRITON\n"
            "x = torch.randn(1, 2, 3, 5)\n"
            "assert torch.equal(mk.cross_scan(x), cross_scan_ref(x))\n"
            "try:\n"
            "    mk.cross_scan(x, use_triton=True)\n"
            "except ImportError as e:\n"
            "    assert 'triton' in str(e)\n"
            "else:\n"
            "    raise AssertionError('use_triton=True without triton did not raise')\n")
    subprocess.run([sys.executable, '-c', code], check=True)


def test_kernels_do_not_read_the_environment():
    import pathlib
    for path in pathlib.Path(mk.__file__).parent.glob('*.py'):
        assert 'os.environ' not in path.read_text(), path


def test_use_triton_false_and_none_on_cpu_are_the_reference():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(mk.cross_scan(x, use_triton=False), mk.cross_scan_ref(x))
    assert torch.equal(mk.cross_scan(x), mk.cross_scan_ref(x))   # CPU tensor: the reference
    y = torch.randn(2, 4, 3, 4, 5)
    assert torch.equal(mk.cross_merge(y), mk.cross_merge_ref(y))


def test_none_picks_triton_for_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(mk._cross_scan_triton, 'cross_scan', lambda x: calls.append(x) or mk.cross_scan_ref(x))

    class FakeCuda(torch.Tensor):
        is_cuda = True

    mk.cross_scan(torch.randn(1, 2, 3, 4).as_subclass(FakeCuda))
    assert len(calls) == 1


@pytest.mark.parametrize('call, match', [
    (lambda: mk.cross_scan(torch.randn(2, 3, 4)), 'rank 3'),
    (lambda: mk.cross_scan(torch.randn(1, 2, 3, 4, dtype=torch.float64)), 'float64'),
    (lambda: mk.cross_scan(torch.randint(0, 3, (1, 2, 3, 4))), 'int64'),
    (lambda: mk.cross_merge(torch.randn(1, 3, 2, 4, 5)), r'\(\*, 4, \*, \*, \*\)'),
    (lambda: mk.selective_scan(**{**make_inputs(1, 4, 2, 9, 1, 'cpu'), 'A': torch.randn(8, 2)}), 'B has shape'),
    (lambda: mk.selective_scan(**{**make_inputs(1, 4, 2, 9, 1, 'cpu'), 'D': torch.randn(7)}), 'D has shape'),
    (lambda: mk.selective_scan(**{**make_inputs(1, 4, 2, 9, 1, 'cpu'), 'delta': torch.randn(1, 8, 10)}), 'delta'),
    (lambda: mk.selective_scan(**{**make_inputs(1, 3, 2, 9, 1, 'cpu'), 'B': torch.randn(1, 4, 1, 9),
                                 'C': torch.randn(1, 4, 1, 9)}), 'not a multiple'),
    (lambda: mk.cross_selective_scan(torch.randn(1, 2, 3, 4), torch.randn(1, 4, 2, 3, 5), -torch.rand(8, 1),
                                     torch.randn(1, 4, 1, 3, 4), torch.randn(1, 4, 1, 3, 4)), 'delta has shape'),
])
def test_clear_errors(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


def _unfused(x, delta_seq, A, B_seq, C_seq, D, delta_bias):
    batch, dim, height, width = x.shape
    xs = mk.cross_scan(x, use_triton=True).view(batch, 4 * dim, height * width)
    ys = mk.selective_scan(xs, delta_seq, A, B_seq, C_seq, D, delta_bias, use_triton=True)
    return mk.cross_merge(ys.view(batch, 4, dim, height, width), use_triton=True)


def test_opcheck_custom_ops():
    x = torch.randn(2, 3, 5, 7, device=DEVICE)
    torch.library.opcheck(torch.ops.mmvmamba.cross_scan.default, (x, ))
    torch.library.opcheck(torch.ops.mmvmamba.cross_merge.default, (torch.randn(2, 4, 3, 5, 7, device=DEVICE), ))
    s = make_inputs(1, 4, 3, 37, 2)
    args = (s['u'], s['delta'].bfloat16(), s['A'], s['B'], s['C'], s['D'], s['delta_bias'], True, 16, 2)
    torch.library.opcheck(torch.ops.mmvmamba.selective_scan_fwd.default, args)
    out, hs = torch.ops.mmvmamba.selective_scan_fwd(*args)
    torch.library.opcheck(torch.ops.mmvmamba.selective_scan_bwd.default,
                          args[:7] + (torch.randn_like(out), hs) + args[7:])
    torch.library.opcheck(torch.ops.mmvmamba.selective_scan_fwd.default,
                          args[:5] + (None, None) + args[7:])
    _opcheck_fused_ops()
    x2d, weight, bias = torch.randn(6, 5, device=DEVICE), torch.randn(5, device=DEVICE), torch.randn(5, device=DEVICE)
    torch.library.opcheck(torch.ops.mmvmamba.layer_norm_fwd.default, (x2d, weight, bias, 1e-5, torch.bfloat16))
    _, mean, rstd = torch.ops.mmvmamba.layer_norm_fwd(x2d, weight, bias, 1e-5, torch.bfloat16)
    torch.library.opcheck(torch.ops.mmvmamba.layer_norm_bwd.default, (x2d, weight, torch.randn_like(x2d), mean, rstd))


def _opcheck_fused_ops():
    """The fused scan's ops, with full and low-rank step sizes (fake shapes and dtypes against the launchers)."""
    batch, dim, height, width, rank = 1, 3, 5, 7, 2
    x = torch.randn(batch, dim, height, width, device=DEVICE)
    A = -torch.rand(4 * dim, 1, device=DEVICE) - 0.5
    B, C = (torch.randn(batch, 4, 1, height, width, device=DEVICE) for _ in range(2))
    D, bias = torch.randn(4 * dim, device=DEVICE), torch.randn(4 * dim, device=DEVICE)
    for delta, weight in ((torch.randn(batch, 4, dim, height, width, device=DEVICE), None),
                          (torch.randn(batch, 4, rank, height, width, device=DEVICE),
                           torch.randn(4, dim, rank, device=DEVICE))):
        args = (x, delta, A, B, C, D, bias, weight, torch.bfloat16 if weight is not None else delta.dtype)
        torch.library.opcheck(torch.ops.mmvmamba.cross_selective_scan_fwd.default, args + (True, 16, 2))
        out, hs = torch.ops.mmvmamba.cross_selective_scan_fwd(*args, True, 16, 2)
        torch.library.opcheck(torch.ops.mmvmamba.cross_selective_scan_bwd.default,
                              args + (torch.randn_like(out), hs, True, 16, 2))


def test_compile_fullgraph_through_the_custom_ops():
    """Dynamo traces the autograd Functions and the custom ops (fake impls) with no graph break."""
    batch, dim, height, width, d_state = 1, 3, 5, 7, 1
    s = make_inputs(batch, 4, dim, height * width, d_state)
    x = torch.randn(batch, dim, height, width, device=DEVICE, requires_grad=True)
    args = (x, s['delta'], s['A'].requires_grad_(), s['B'], s['C'], s['D'], s['delta_bias'])
    compiled = torch.compile(_unfused, fullgraph=True, backend='aot_eager')
    out = compiled(*args)
    out.sum().backward()
    torch.testing.assert_close(out, _unfused(*args))
    assert x.grad is not None and args[2].grad is not None


def test_compiled_graphs_hold_the_custom_ops_and_eager_calls_skip_them(monkeypatch):
    """Under torch.compile the kernels are the opaque custom ops; in eager mode the launchers run without them."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    seen = set()

    def record(graph_module, example_inputs):
        seen.update(str(node.target) for node in graph_module.graph.nodes if node.op == 'call_function')
        return make_boxed_func(graph_module.forward)

    batch, dim, height, width, d_state = 1, 3, 5, 7, 1
    s = make_inputs(batch, 4, dim, height * width, d_state)
    x = torch.randn(batch, dim, height, width, device=DEVICE, requires_grad=True)
    args = (x, s['delta'], s['A'], s['B'], s['C'], s['D'], s['delta_bias'])
    torch._dynamo.reset()
    compiled = torch.compile(_unfused, fullgraph=True, backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    compiled(*args).sum().backward()
    for op in ('cross_scan', 'selective_scan_fwd', 'selective_scan_bwd', 'cross_merge'):
        assert f'mmvmamba.{op}.default' in seen, (op, sorted(seen))

    def fail(*args, **kwargs):
        raise AssertionError('the eager path went through the custom op')

    monkeypatch.setattr(torch.ops.mmvmamba, 'selective_scan_fwd', fail)
    monkeypatch.setattr(torch.ops.mmvmamba, 'cross_scan', fail)
    _unfused(*args).sum().backward()
