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


def check_cross_selective_scan_args(x, delta, A, B, C, D, delta_bias) -> None:
    """Raise TypeError/ValueError unless the arguments fit :func:`cross_selective_scan_ref`'s shapes and dtypes."""
    check_tensor('x', x, (None, None, None, None))
    batch, dim, height, width = x.shape
    check_tensor('A', A, (4 * dim, None), device=x.device)
    d_state = A.shape[1]
    check_tensor('delta', delta, (batch, 4, dim, height, width), device=x.device)
    check_tensor('B', B, (batch, 4, d_state, height, width), device=x.device)
    check_tensor('C', C, (batch, 4, d_state, height, width), device=x.device)
    if D is not None:
        check_tensor('D', D, (4 * dim, ), device=x.device)
    if delta_bias is not None:
        check_tensor('delta_bias', delta_bias, (4 * dim, ), device=x.device)


def _fmt(shape: Sequence[int | None]) -> str:
    return '(' + ', '.join('*' if s is None else str(s) for s in shape) + ')'
