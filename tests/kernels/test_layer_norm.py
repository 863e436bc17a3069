"""Triton LayerNorm (fp32 statistics, chosen output dtype) against its PyTorch reference: output and gradients."""
import pytest
import torch

from mmvmamba_kernels.layer_norm import layer_norm as layer_norm_triton
from mmvmamba_kernels.layer_norm_ref import layer_norm_ref
from tests.utils import assert_close

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
# (rows, channels): VMamba widths (96, 192 and odd ones), rows that are not a multiple of the row block
SHAPES = [(7, 96), (130, 24), (3, 193), (65, 48)]


def _run(fn, x, weight, bias, grad, out_dtype):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    out = fn(*leaves, 1e-5, out_dtype)
    (out.float() * grad).sum().backward()
    return out, [leaf.grad for leaf in leaves]


@pytest.mark.parametrize('x_dtype,out_dtype', [
    (torch.float32, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float32),
], ids=lambda d: str(d).removeprefix('torch.'))
@pytest.mark.parametrize('rows,channels', SHAPES, ids=lambda s: str(s))
def test_layer_norm_matches_reference(rows, channels, x_dtype, out_dtype):
    x = torch.randn(rows, channels, device=DEVICE) * 3 + 1
    weight = 1 + 0.3 * torch.randn(channels, device=DEVICE)
    bias = 0.2 * torch.randn(channels, device=DEVICE)
    grad = torch.randn(rows, channels, device=DEVICE)
    ref, ref_grads = _run(layer_norm_ref, x, weight, bias, grad, torch.float32)
    out, grads = _run(layer_norm_triton, x.to(x_dtype), weight, bias, grad, out_dtype)
    assert out.dtype == out_dtype and grads[0].dtype == x_dtype
    lowp = torch.float32 if (x_dtype, out_dtype) == (torch.float32, torch.float32) else \
        (out_dtype if out_dtype != torch.float32 else x_dtype)
    out_lp, lp_grads = (None, [None] * 3) if lowp == torch.float32 else \
        _run(layer_norm_ref, x.to(x_dtype), weight, bias, grad, out_dtype)
    assert_close('y', out, ref, out_lp, lowp)
    for name, g, g_ref, g_lp in zip(('dx', 'dweight', 'dbias'), grads, ref_grads, lp_grads):
        assert_close(name, g, g_ref, g_lp, lowp)


def test_layer_norm_keeps_leading_dimensions():
    x = torch.randn(2, 5, 3, 40, device=DEVICE)
    weight, bias = torch.rand(40, device=DEVICE), torch.rand(40, device=DEVICE)
    out = layer_norm_triton(x, weight, bias)
    assert out.shape == x.shape
    assert_close('y', out, layer_norm_ref(x, weight, bias))
