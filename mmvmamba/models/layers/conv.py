"""``nn.Conv2d`` that ``torch.compile`` keeps opaque, so that a graph compiled with symbolic H and W stays symbolic.

Inductor lowers a convolution's backward by turning the input gradient's strides into integers
(``convolution_backward_lowering`` guards them), which pins H and W to the sizes of the first compile: every new
input size then compiles again. While Dynamo traces, :class:`OpaqueConv2d` calls the custom ops below instead, which
Inductor runs as extern calls (the same cuDNN / ATen convolutions it would call anyway). Eager calls are plain
``nn.Conv2d``, and so is a forward traced by ``torch.export``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@torch.library.custom_op('mmvmamba::conv2d', mutates_args=())
def _conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
            padding: list[int], groups: int) -> torch.Tensor:
    return F.conv2d(x, weight, bias, stride, padding, 1, groups).contiguous()


@_conv2d.register_fake
def _conv2d_fake(x, weight, bias, stride, padding, groups):
    height, width = (_output_size(x.shape[i + 2], weight.shape[i + 2], stride[i], padding[i]) for i in range(2))
    return x.new_empty(x.shape[0], weight.shape[0], height, width)


@torch.library.custom_op('mmvmamba::conv2d_backward', mutates_args=())
def _conv2d_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list[int],
                     padding: list[int], groups: int, input_grad: bool,
                     bias_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight, dbias)``; ``dx`` / ``dbias`` are empty where not asked for (a custom op returns tensors)."""
    dx, dweight, dbias = torch.ops.aten.convolution_backward(
        grad.contiguous(), x, weight, [weight.shape[0]] if bias_grad else None, stride, padding, [1, 1], False,
        [0, 0], groups, [input_grad, True, bias_grad])
    return (dx.contiguous() if input_grad else grad.new_empty(0), dweight.contiguous(),
            dbias.contiguous() if bias_grad else grad.new_empty(0))


@_conv2d_backward.register_fake
def _conv2d_backward_fake(grad, x, weight, stride, padding, groups, input_grad, bias_grad):
    return (x.new_empty(x.shape) if input_grad else grad.new_empty(0), weight.new_empty(weight.shape),
            weight.new_empty(weight.shape[0]) if bias_grad else grad.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.conv_args = (stride, padding, groups)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    input_grad = ctx.needs_input_grad[0]
    bias_grad = ctx.has_bias and ctx.needs_input_grad[2]
    dx, dweight, dbias = _conv2d_backward(grad, x, weight, *ctx.conv_args, input_grad, bias_grad)
    return dx if input_grad else None, dweight, dbias if bias_grad else None, None, None, None


_conv2d.register_autograd(_backward, setup_context=_setup_context)


class OpaqueConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments and parameters) whose forward and backward Inductor does not lower.

    Supports what the VMamba layers use: zero padding given as numbers, no dilation.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != 'zeros' or isinstance(self.padding, str) or self.dilation != (1, 1):
            raise ValueError(f'OpaqueConv2d supports numeric zero padding without dilation, got '
                             f'padding={self.padding!r}, padding_mode={self.padding_mode!r}, dilation={self.dilation}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.export (ONNX) keeps the plain convolution: exported graphs must hold standard ops only
        if not torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(x.device.type):  # autocast does not reach into custom ops: cast as it would
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        return _conv2d(x, weight, bias, list(self.stride), list(self.padding), self.groups)
