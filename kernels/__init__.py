"""SS2D kernels of VMamba: cross-scan, selective scan and cross-merge (and their fused composition).

This module is the one place that picks an implementation. Each public function takes ``use_triton``:
``None`` picks the Triton kernel for CUDA tensors (when Triton is installed) and the pure-PyTorch reference
otherwise, and for ``layer_norm`` while ``torch.compile`` traces (see there); ``True`` forces the Triton kernel (CPU
tensors too, under ``TRITON_INTERPRET=1`` set before Triton is imported); ``False`` forces the reference.
Unsupported dtypes, devices, ranks or shapes raise TypeError/ValueError: the arguments are checked here, once, for
both paths (the Triton modules' functions take checked arguments).
"""
import torch

from .cross_scan_ref import cross_merge_ref, cross_scan_ref
from .cross_selective_scan_ref import cross_selective_scan_ref
from .layer_norm_ref import layer_norm_ref
from .selective_scan_ref import selective_scan_ref
from .utils import SUPPORTED_DTYPES, check_cross_selective_scan_args, check_selective_scan_args, check_tensor

try:
    import triton  # noqa: F401  (only Triton's absence turns the kernels off; our own modules' errors surface)
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

if HAS_TRITON:
    from . import cross_scan as _cross_scan_triton
    from . import cross_scan_kernels as _cross_scan_kernels
    from . import cross_selective_scan as _cross_selective_scan_triton
    from . import layer_norm as _layer_norm_triton
    from . import selective_scan as _selective_scan_triton
else:
    _cross_scan_triton = _cross_selective_scan_triton = _selective_scan_triton = _layer_norm_triton = None
    _cross_scan_kernels = None

__all__ = [
    'cross_scan', 'cross_merge', 'selective_scan', 'cross_selective_scan', 'cross_scan_ref', 'cross_merge_ref',
    'selective_scan_ref', 'cross_selective_scan_ref', 'layer_norm', 'layer_norm_ref', 'HAS_TRITON'
]


def _interpreted() -> bool:
    # Under TRITON_INTERPRET=1, triton.jit returns an InterpretedFunction that runs on CPU tensors.
    return type(_cross_scan_kernels.cross_scan_kernel).__name__ == 'InterpretedFunction'


def _want_triton(use_triton: bool | None, tensor: torch.Tensor) -> bool:
    if use_triton is None:
        return HAS_TRITON and tensor.is_cuda
    if not use_triton:
        return False
    if not HAS_TRITON:
        raise ImportError('use_triton=True but triton could not be imported; install triton or pass use_triton=None')
    if not tensor.is_cuda and not _interpreted():
        raise ValueError(f'use_triton=True got a tensor on {tensor.device}; the Triton kernels need CUDA tensors, '
                         'or TRITON_INTERPRET=1 set before triton is imported for CPU tensors')
    return True


def cross_scan(x: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, 4, C, H*W]`` in the four VMamba scan orders (see :func:`cross_scan_ref`).

    Args:
        x: ``[B, C, H, W]`` fp32/fp16/bf16.
        use_triton: None: Triton for CUDA tensors; True: force Triton; False: force the reference. Default: None.

    Returns:
        ``[B, 4, C, H*W]`` of ``x``'s dtype.
    """
    check_tensor('x', x, (None, None, None, None))
    if _want_triton(use_triton, x):
        return _cross_scan_triton.cross_scan(x)
    return cross_scan_ref(x)


def cross_merge(y: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
    """``[B, 4, C, H, W]`` -> ``[B, C, H, W]``: the adjoint of :func:`cross_scan` (see :func:`cross_merge_ref`).

    Args:
        y: ``[B, 4, C, H, W]`` fp32/fp16/bf16.
        use_triton: as in :func:`cross_scan`. Default: None.

    Returns:
        ``[B, C, H, W]`` of ``y``'s dtype.
    """
    check_tensor('y', y, (None, 4, None, None, None))
    if _want_triton(use_triton, y):
        return _cross_scan_triton.cross_merge(y)
    return cross_merge_ref(y)


def selective_scan(u: torch.Tensor,
                   delta: torch.Tensor,
                   A: torch.Tensor,
                   B: torch.Tensor,
                   C: torch.Tensor,
                   D: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = True,
                   use_triton: bool | None = None) -> torch.Tensor:
    """Selective scan with grouped B/C; fp32 state and fp32 output (see :func:`selective_scan_ref`).

    Args:
        u: ``[B, K*D, L]`` fp32/fp16/bf16.
        delta: ``[B, K*D, L]``.
        A: ``[K*D, N]``.
        B: ``[B, K, N, L]``, shared by the D rows of group k.
        C: ``[B, K, N, L]``.
        D: ``[K*D]``. Default: None.
        delta_bias: ``[K*D]``. Default: None.
        delta_softplus: apply softplus to ``delta + delta_bias``. Default: True.
        use_triton: as in :func:`cross_scan`. Default: None.

    Returns:
        ``[B, K*D, L]`` fp32.
    """
    check_selective_scan_args(u, delta, A, B, C, D, delta_bias)
    if _want_triton(use_triton, u):
        return _selective_scan_triton.selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
    return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus)


def cross_selective_scan(x: torch.Tensor,
                         delta: torch.Tensor,
                         A: torch.Tensor,
                         B: torch.Tensor,
                         C: torch.Tensor,
                         D: torch.Tensor | None = None,
                         delta_bias: torch.Tensor | None = None,
                         delta_softplus: bool = True,
                         delta_proj_weight: torch.Tensor | None = None,
                         use_triton: bool | None = None) -> torch.Tensor:
    """Fused SS2D scan stage on spatial-layout inputs (see :func:`cross_selective_scan_ref`).

    Equal to ``cross_merge(selective_scan(cross_scan(x), seq(delta), A, seq(B), seq(C), ...))`` where ``seq``
    puts direction k's spatial values into direction k's order; the Triton path never materialises the
    ``[B, 4, D, L]`` copies.

    Args:
        x: ``[B, D, H, W]`` fp32/fp16/bf16.
        delta: ``[B, 4, D, H, W]``.
        A: ``[4*D, N]``.
        B: ``[B, 4, N, H, W]``.
        C: ``[B, 4, N, H, W]``.
        D: ``[4*D]``. Default: None.
        delta_bias: ``[4*D]``. Default: None.
        delta_softplus: apply softplus to ``delta + delta_bias``. Default: True.
        delta_proj_weight: ``[4, D, R]``: if given, ``delta`` is the low-rank ``[B, 4, R, H, W]`` (SS2D's dt before
            dt_proj) and the full step sizes are formed inside, so training keeps only the low-rank ones for the
            backward (a quarter of x's size per rank unit instead of four times x's size). Default: None.
        use_triton: as in :func:`cross_scan`. Default: None.

    Returns:
        ``[B, D, H, W]`` fp32.
    """
    check_cross_selective_scan_args(x, delta, A, B, C, D, delta_bias, delta_proj_weight)
    if _want_triton(use_triton, x):
        return _cross_selective_scan_triton.cross_selective_scan(x, delta, A, B, C, D, delta_bias, delta_softplus,
                                                                 delta_proj_weight=delta_proj_weight)
    return cross_selective_scan_ref(x, delta, A, B, C, D, delta_bias, delta_softplus, delta_proj_weight)


def layer_norm(x: torch.Tensor,
               weight: torch.Tensor,
               bias: torch.Tensor,
               eps: float = 1e-5,
               out_dtype: torch.dtype | None = None,
               use_triton: bool | None = None) -> torch.Tensor:
    """LayerNorm of the last dimension with fp32 statistics, returned in ``out_dtype`` (see :func:`layer_norm_ref`).

    Args:
        x: ``[..., C]`` fp32/fp16/bf16.
        weight: ``[C]``.
        bias: ``[C]``.
        eps: added to the variance. Default: 1e-5.
        out_dtype: dtype of the result. Default: None (``x.dtype``).
        use_triton: as in :func:`cross_scan`. Default: None.

    Returns:
        ``[..., C]`` in ``out_dtype``.
    """
    check_tensor('x', x, (None, ) * x.dim())
    channels = x.shape[-1]
    check_tensor('weight', weight, (channels, ), device=x.device)
    check_tensor('bias', bias, (channels, ), device=x.device)
    if out_dtype is not None and out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f'out_dtype must be one of {SUPPORTED_DTYPES}, got {out_dtype}')
    # Under torch.compile the default is the reference: Inductor generates the norm itself and fuses it with the
    # casts, permutes and residual adds around it, which an opaque kernel would keep apart.
    if not (use_triton is None and torch.compiler.is_compiling()) and _want_triton(use_triton, x):
        return _layer_norm_triton.layer_norm(x, weight, bias, eps, out_dtype)
    return layer_norm_ref(x, weight, bias, eps, out_dtype)
