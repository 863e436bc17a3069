"""The compiled forward: when it compiles, that new input sizes trace nothing new, and that it computes the eager
function (outputs and gradients). On the CPU the graphs run with the ``aot_eager`` backend (no Inductor codegen);
tests/models/test_gpu_compiled.py runs Inductor on the GPU."""
import concurrent.futures
import copy
import importlib
import pickle

import pytest
import torch

import mmvmamba_kernels
from mmvmamba import VMamba
from mmvmamba.models.backbones import compiled_forward
from mmvmamba.models.backbones.compiled_forward import CompiledForward

SMALL = dict(dims=16, depths=(1, 1, 1, 1), drop_path_rate=0.0)


def _graphs() -> int:
    return torch._dynamo.utils.counters['stats']['unique_graphs']


def _train_step(model, x):
    model.zero_grad(set_to_none=True)
    outs = model(x)
    sum((o.square() * (i + 1)).mean() for i, o in enumerate(outs)).backward()
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_auto_runs_eagerly_on_the_cpu():
    model = VMamba(arch='tiny', compile='auto', **SMALL)
    before = _graphs()
    model(torch.randn(1, 3, 32, 32))
    assert model.compiled_forward.compiled is None and _graphs() == before


def test_compile_true_names_why_it_cannot_compile():
    model = VMamba(arch='tiny', compile=True, **SMALL)
    with pytest.raises(RuntimeError, match='not CUDA'):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize('options', [dict(with_cp=True), dict(cuda_graph=True)], ids=['with_cp', 'cuda_graph'])
def test_compile_true_conflicts_are_refused_and_auto_stays_eager(options):
    with pytest.raises(ValueError, match='cannot be combined'):
        VMamba(arch='tiny', compile=True, **options, **SMALL)
    assert VMamba(arch='tiny', compile='auto', **options, **SMALL).compiled_forward.setting is False


def test_bad_setting_is_refused():
    with pytest.raises(ValueError, match="compile must be one of"):
        VMamba(arch='tiny', compile='yes', **SMALL)


def test_copies_compile_their_own_forward(monkeypatch):
    monkeypatch.setattr(compiled_forward, 'compile_supported', lambda device: (True, ''))
    model = VMamba(arch='tiny', **SMALL)
    model.compiled_forward = CompiledForward('auto', backend='aot_eager')  # the default is False
    model(torch.randn(1, 3, 32, 32))
    assert model.compiled_forward.compiled is not None
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin.compiled_forward.compiled is None
        assert twin.compiled_forward.backend == 'aot_eager'


def _reference_launchers(monkeypatch):
    """Route SS2D through the Triton path's Python code and custom ops (what the GPU compiles), with the launchers
    behind the ops replaced by the reference (the interpreter would take minutes): what is traced is the real
    GPU-path wrapper; what runs computes the reference's function."""
    fused = importlib.import_module('mmvmamba_kernels.cross_selective_scan')  # the package's name is the function

    def forward(x, delta, A, B, C, D, delta_bias, weight, delta_dtype, delta_softplus, block_t, seg_chunks):
        out = mmvmamba_kernels.cross_selective_scan_ref(x, delta, A, B, C, D, delta_bias, delta_softplus, weight)
        hs = x.new_zeros(x.shape[0] * A.shape[0], -(-x.shape[2] * x.shape[3] // block_t), A.shape[1])
        return out.contiguous(), hs

    def backward(x, delta, A, B, C, D, delta_bias, weight, delta_dtype, dout, hs, delta_softplus, block_t,
                 seg_chunks):
        def reference_grads():
            leaves = [t.detach().requires_grad_() if t is not None else None
                      for t in (x, delta, A, B, C, D, delta_bias, weight)]
            out = mmvmamba_kernels.cross_selective_scan_ref(*leaves[:7], delta_softplus, leaves[7])
            present = [t for t in leaves if t is not None]
            grads = iter(torch.autograd.grad(out, present, dout, allow_unused=True))
            return leaves, [next(grads) if t is not None else None for t in leaves]

        # autograd is off below a custom op's dispatch (thread-local state): a fresh thread has it on
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            leaves, grads = pool.submit(reference_grads).result()
        # contiguous, as the real launchers return them (Inductor checks the fake implementation's strides)
        grads = [(g if g is not None or t is None else torch.zeros_like(t)) for g, t in zip(grads, leaves)]
        grads = [g.contiguous() if g is not None else None for g in grads]
        dx, ddelta, dA, dB, dC, dD, ddb, dweight = grads
        dD = dD if dD is not None else x.new_zeros(A.shape[0])
        ddb = ddb if ddb is not None else x.new_zeros(A.shape[0])
        return dx, ddelta, dA, dB, dC, dD, ddb, dweight if dweight is not None else x.new_empty(0)

    monkeypatch.setattr(fused, 'cross_selective_scan_fwd', forward)
    monkeypatch.setattr(fused, 'cross_selective_scan_bwd', backward)
    # the Triton path only while Dynamo traces (the eager model keeps the reference)
    monkeypatch.setattr(mmvmamba_kernels, '_want_triton',
                        lambda use_triton, tensor: use_triton is not False and torch.compiler.is_compiling())


@pytest.mark.parametrize('arch', ['tiny', 'vanilla-tiny'])
def test_new_sizes_trace_nothing_new_and_match_eager(arch, monkeypatch):
    """Dynamic H and W: after the first training step, new sizes that are multiples of 32 reuse the graph, others run
    eagerly, and every step's outputs and gradients equal the eager ones. (Sizes keep every stage's map at least
    2x2: a 1 is always specialised, and no real input is that small.)"""
    _reference_launchers(monkeypatch)
    monkeypatch.setattr(compiled_forward, 'compile_supported', lambda device: (True, ''))
    torch._dynamo.reset()
    eager = VMamba(arch=arch, compile=False, **SMALL).train()
    model = copy.deepcopy(eager)
    model.compiled_forward = CompiledForward(True, backend='aot_eager')
    counts = []
    for height, width in [(64, 96), (70, 50), (96, 64), (128, 64)]:
        x = torch.randn(2, 3, height, width)
        outs, grads = _train_step(model, x)
        ref_outs, ref_grads = _train_step(eager, x)
        counts.append(_graphs())
        for out, ref in zip(outs, ref_outs):
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        assert grads.keys() == ref_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    assert counts[1:] == counts[:1] * (len(counts) - 1), f'graphs traced after each size: {counts}'
    assert model.compiled_forward.compiles == 1
