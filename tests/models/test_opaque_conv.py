"""OpaqueConv2d: the same function as nn.Conv2d eagerly and compiled, and compiled graphs that stay symbolic in H, W
through the convolution's backward (Inductor's own lowering of it pins them)."""
import pytest
import torch
import torch.nn as nn
from torch._inductor import config as inductor_config

from mmvmamba.models.layers.conv import OpaqueConv2d

CASES = [dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
         dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6, bias=False),
         dict(in_channels=3, out_channels=4, kernel_size=4, stride=4)]


def _graphs() -> int:
    return torch._dynamo.utils.counters['stats']['unique_graphs']


def _step(module, x):
    out = module(x)
    (out.square() * torch.linspace(0, 1, out.shape[-1])).sum().backward()
    grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return out.detach(), grads


@pytest.mark.parametrize('kwargs', CASES, ids=['stride2', 'depthwise', 'patch'])
@pytest.mark.parametrize('input_grad', [True, False], ids=['input-grad', 'no-input-grad'])
def test_compiled_matches_nn_conv2d(kwargs, input_grad):
    torch.manual_seed(0)
    reference = nn.Conv2d(**kwargs)
    opaque = OpaqueConv2d(**kwargs)
    opaque.load_state_dict(reference.state_dict())
    compiled = torch.compile(opaque, backend='aot_eager', fullgraph=True)
    for size in [(16, 24), (13, 9)]:
        x = torch.randn(2, kwargs['in_channels'], *size, requires_grad=input_grad)
        x_ref = x.detach().clone().requires_grad_(input_grad)
        out, grads = _step(compiled, x)
        ref_out, ref_grads = _step(reference, x_ref)
        torch.testing.assert_close(out, ref_out)
        for grad, ref in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref)
        if input_grad:
            torch.testing.assert_close(x.grad, x_ref.grad)
    assert torch.equal(opaque(x.detach()), reference(x.detach()))  # eager: nn.Conv2d itself


def test_custom_ops_pass_opcheck():
    x, weight, bias = torch.randn(2, 4, 9, 7), torch.randn(6, 2, 3, 3), torch.randn(6)
    torch.library.opcheck(torch.ops.mmvmamba.conv2d.default, (x, weight, bias, [2, 1], [1, 1], 2))
    grad = torch.randn(2, 6, 5, 7)
    for input_grad, bias_grad in [(True, True), (False, False)]:
        torch.library.opcheck(torch.ops.mmvmamba.conv2d_backward.default,
                              (grad, x, weight, [2, 1], [1, 1], 2, input_grad, bias_grad))


def test_unsupported_options_are_refused():
    with pytest.raises(ValueError, match='dilation'):
        OpaqueConv2d(2, 2, 3, dilation=2)
    with pytest.raises(ValueError, match='padding'):
        OpaqueConv2d(2, 2, 3, padding='same')


@pytest.mark.parametrize('conv', [OpaqueConv2d, pytest.param(nn.Conv2d, marks=pytest.mark.xfail(
    strict=True, reason="Inductor's convolution backward lowering pins H and W: a new size compiles again"))])
def test_inductor_keeps_height_and_width_symbolic_through_the_backward(conv):
    """Inductor with dynamic H, W (no layout optimisation, as Inductor does for dynamic shapes): after the first
    training step, other sizes compile nothing new. nn.Conv2d shows what OpaqueConv2d avoids."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(conv(4, 8, 3, stride=2, padding=1), nn.GELU(),
                          conv(8, 8, 3, padding=1, groups=8))
    compiled = torch.compile(model, backend='inductor', dynamic=True)
    counts = []
    with inductor_config.patch(layout_optimization=False):
        for size in [(32, 64), (48, 40), (64, 96)]:
            x = torch.randn(2, 4, *size, requires_grad=True)
            out, grads = _step(compiled, x)
            ref_out, ref_grads = _step(model, x.detach())
            torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
            counts.append(_graphs())
    assert counts == counts[:1] * len(counts), f'graphs compiled after each size: {counts}'
