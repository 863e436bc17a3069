"""The compiled backbone (the default on CUDA) against the eager one on the GPU, over sizes it has never seen."""
import copy

import pytest
import torch

from mmvmamba import VMamba

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

SMALL = dict(dims=32, depths=(1, 1, 2, 1), drop_path_rate=0.0)
# (H, W): the first compiles; then sizes it has never seen (multiples of 32 compile, the odd ones run eagerly)
SIZES = [(64, 96), (96, 64), (70, 50), (160, 224), (33, 47), (224, 128)]


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _step(model, x, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None):
        outs = model(x)
    weights = [torch.linspace(-1, 1, o.numel(), device='cuda').view_as(o) for o in outs]
    sum((o.float() * w).sum() for o, w in zip(outs, weights)).backward()
    return [o.detach().float() for o in outs], {n: p.grad.float() for n, p in model.named_parameters()}


def _rel(out, ref) -> float:
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize('arch', ['tiny', 'vanilla-tiny'])
@pytest.mark.parametrize('dtype', [None, torch.float16], ids=['fp32', 'fp16'])
def test_compiled_training_matches_eager_on_new_sizes(arch, dtype, no_tf32, scan_launches):
    torch._dynamo.reset()
    eager = VMamba(arch=arch, compile=False, **SMALL).cuda().train()
    compiled = copy.deepcopy(eager)
    compiled.compiled_forward.setting = True
    bound = 1e-4 if dtype is None else 2e-2
    for height, width in SIZES:
        x = torch.randn(2, 3, height, width, device='cuda')
        outs, grads = _step(compiled, x, dtype)
        ref_outs, ref_grads = _step(eager, x, dtype)
        for stage, (out, ref) in enumerate(zip(outs, ref_outs)):
            assert _rel(out, ref) <= bound, f'{(height, width)} stage {stage}: {_rel(out, ref):.3g}'
        for name, grad in grads.items():
            err = _rel(grad, ref_grads[name])
            assert err <= 10 * bound, f'{(height, width)} {name}: {err:.3g}'
    assert compiled.compiled_forward.compiles == 1, 'new sizes compiled again'
    assert scan_launches, 'the Triton scan never ran'


def test_compiled_inference_and_a_forward_without_backward(no_tf32):
    """Eval mode compiles once more; a training forward whose backward never runs leaves nothing pending."""
    torch._dynamo.reset()
    eager = VMamba(arch='tiny', compile=False, **SMALL).cuda()
    compiled = copy.deepcopy(eager)
    compiled.compiled_forward.setting = True
    compiled.train()(torch.randn(2, 3, 64, 64, device='cuda'))  # no backward
    x = torch.randn(2, 3, 96, 128, device='cuda')
    outs, grads = _step(compiled.train(), x, None)
    ref_outs, ref_grads = _step(eager.train(), x, None)
    assert max(_rel(o, r) for o, r in zip(outs, ref_outs)) <= 1e-4
    assert max(_rel(grads[n], ref_grads[n]) for n in grads) <= 1e-3
    compiled.eval()
    eager.eval()
    for height, width in SIZES:
        x = torch.randn(1, 3, height, width, device='cuda')
        with torch.no_grad():
            outs, ref_outs = compiled(x), eager(x)
        assert max(_rel(o, r) for o, r in zip(outs, ref_outs)) <= 1e-4, (height, width)
    assert compiled.compiled_forward.compiles == 2
