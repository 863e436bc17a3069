"""Host-side helpers shared by the Triton launchers: argument checks and contiguity."""
import functools
from collections.abc import Callable, Sequence

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    p = 1
    while p < n:
        p *= 2
    return p


def input_guard(fn: Callable) -> Callable:
    """Make every tensor argument contiguous before calling ``fn`` (kernels assume dense row-major strides)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = {k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        return fn(*args, **kwargs)

    return wrapper


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (4 for other devices: the interpreter's stand-in)."""
    if device.type != 'cuda':
        return 4
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def eager_or_custom_op(op_name: str, launcher: Callable) -> Callable:
    """Call ``launcher`` directly in eager mode and ``torch.ops.mmvmamba.<op_name>`` while Dynamo traces.

    Inside ``torch.compile`` the custom op is what keeps the Triton launcher opaque (its fake kernel gives the
    shapes); in eager mode its Python dispatch costs more host time than the launch it wraps, and a training step
    of the small models is bound by host time (docs/benchmarks.md).
    """

    def call(*args):
        if torch.compiler.is_compiling():
            return getattr(torch.ops.mmvmamba, op_name)(*args)
        return launcher(*args)

    call.__name__ = f'{op_name}_dispatch'
    return call


def check_tensor(name: str,
                 t: torch.Tensor,
                 shape: Sequence[int | None],
                 dtypes: Sequence[torch.dtype] = SUPPORTED_DTYPES,
                 device: torch.device | None = None) -> None:
    """Raise a TypeError/ValueError naming what arrived and what was expected.

    Args:
        name: argument name used in the message.
        t: the tensor to check.
        shape: expected shape; ``None`` entries match any size.
        dtypes: accepted dtypes. Default: fp32, fp16, bf16.
        device: required device (that of the first tensor). Default: None (any).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if t.dtype not in dtypes:
        raise TypeError(f'{name} has dtype {t.dtype}; expected one of {[str(d) for d in dtypes]}')
    if t.dim() != len(shape):
        raise ValueError(f'{name} has rank {t.dim()} (shape {tuple(t.shape)}); expected rank {len(shape)} '
                         f'({_fmt(shape)})')
    if any(e is not None and e != s for e, s in zip(shape, t.shape)):
        raise ValueError(f'{name} has shape {tuple(t.shape)}; expected {_fmt(shape)}')
    if device is not None and t.device != device:
        raise ValueError(f'{name} is on {t.device}; expected {device} like the other inputs')


def check_selective_scan_args(u, delta, A, B, C, D, delta_bias) -> None:
    """Raise TypeError/ValueError unless the arguments fit :func:`selective_scan_ref`'s shapes and dtypes."""
    check_tensor('u', u, (None, None, None))
    batch, rows, length = u.shape
    check_tensor('A', A, (rows, None), device=u.device)
    check_tensor('B', B, (batch, None, A.shape[1], length), device=u.device)
    groups = B.shape[1]
    if groups == 0 or rows % groups:
        raise ValueError(f'u has {rows} rows, which is not a multiple of the {groups} groups of B {tuple(B.shape)}')
    check_tensor('delta', delta, (batch, rows, length), device=u.device)
    check_tensor('C', C, (batch, groups, A.shape[1], length), device=u.device)
    if D is not None:
        check_tensor('D', D, (rows, ), device=u.device)
    if delta_bias is not None:
        check_tensor('delta_bias', delta_bias, (rows, ), device=u.device)


def check_cross_selective_scan_args(x, delta, A, B, C, D, delta_bias, delta_proj_weight=None) -> None:
    """Raise TypeError/ValueError unless the arguments fit :func:`cross_selective_scan_ref`'s shapes and dtypes."""
    check_tensor('x', x, (None, None, None, None))
    batch, dim, height, width = x.shape
    check_tensor('A', A, (4 * dim, None), device=x.device)
    d_state = A.shape[1]
    if delta_proj_weight is None:
        check_tensor('delta', delta, (batch, 4, dim, height, width), device=x.device)
    else:
        check_tensor('delta_proj_weight', delta_proj_weight, (4, dim, None), device=x.device)
        check_tensor('delta', delta, (batch, 4, delta_proj_weight.shape[2], height, width), device=x.device)
    check_tensor('B', B, (batch, 4, d_state, height, width), device=x.device)
    check_tensor('C', C, (batch, 4, d_state, height, width), device=x.device)
    if D is not None:
        check_tensor('D', D, (4 * dim, ), device=x.device)
    if delta_bias is not None:
        check_tensor('delta_bias', delta_bias, (4 * dim, ), device=x.device)


def _fmt(shape: Sequence[int | None]) -> str:
    return '(' + ', '.join('*' if s is None else str(s) for s in shape) + ')'
