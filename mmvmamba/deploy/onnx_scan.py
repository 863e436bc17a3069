"""An export-friendly SS2D scan: the same math as the references, in ops whose count does not depend on the map size.

The reference scan (``mmvmamba_kernels.selective_scan_ref``) runs ``log2(L)`` rounds of a prefix scan, a number
that Python fixes while tracing, so a graph traced at one size is wrong at every other. Here the sequence is padded
to whole chunks of ``chunk`` steps (the padding and the chunk count are computed from the run-time length):

1. inside each chunk, ``log2(chunk)`` rounds of the Hillis-Steele prefix scan of the affine steps ``h -> a h + b``
   give each step's decay product since the chunk start and its state from a zero start;
2. the chunks' summaries (total decay, end state from zero) form a sequence of ``ceil(L / chunk)`` affine steps,
   scanned the same way one level up; ``levels`` levels cover ``L <= chunk ** levels``;
3. each state gets the true state before its chunk times its decay product since the chunk start.

The graph therefore holds a fixed number of ops (no Loop) and is correct for every ``L`` up to
``chunk ** levels`` (262,144 with the defaults: a 512 x 512 map in the first stage, i.e. a 2048 x 2048 image).
Past that, the eager functions raise and an exported graph returns NaN (it cannot raise).

Numerics: only products of decays ``exp(delta * A) <= 1`` and sums of non-negative weights times the drives are
formed, as in the reference; a product that underflows becomes 0, which is the correct limit. There is no division
by a cumulative product and no ``exp`` of a positive cumulative sum, so nothing overflows on long sequences.
"""
import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvmamba.models.layers.ss2d import SS2D
from mmvmamba_kernels.cross_scan_ref import cross_merge_ref
from mmvmamba_kernels.cross_selective_scan_ref import expand_delta, spatial_to_seq

__all__ = [
    'CHUNK', 'LEVELS', 'chunked_affine_scan', 'chunked_selective_scan', 'chunked_cross_selective_scan', 'export_scan'
]

CHUNK = 64
LEVELS = 3


def _check_chunking(chunk: int, levels: int) -> None:
    if chunk < 2 or chunk & (chunk - 1):
        raise ValueError(f'chunk must be a power of two >= 2, got {chunk}')
    if levels < 1:
        raise ValueError(f'levels must be >= 1, got {levels}')


def _shift(x: torch.Tensor, steps: int, fill: float) -> torch.Tensor:
    """``x`` moved ``steps`` places along the last axis (towards later steps), the first ``steps`` set to ``fill``."""
    return F.pad(x[..., :-steps], (steps, 0), value=fill)


def _scan_chunks(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hillis-Steele prefix scan of the steps ``h -> a h + b`` along the last (static-size) axis.

    Returns ``(prod, h)``: at step ``t``, the product of ``a`` over steps ``0..t`` and the state from ``h = 0``.
    """
    size = a.shape[-1]
    k = 1
    while k < size:
        # compose step t with the composition of the k steps before it
        b = b + a * _shift(b, k, 0.0)
        a = a * _shift(a, k, 1.0)
        k *= 2
    return a, b


def chunked_affine_scan(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK, levels: int = LEVELS) -> torch.Tensor:
    """States ``h_t = a_t h_{t-1} + b_t`` (``h_{-1} = 0``) along the last axis, in a size-independent set of ops.

    Args:
        a: ``[..., L]`` decays (in ``[0, 1]`` for a stable scan).
        b: ``[..., L]`` drives.
        chunk: Steps per chunk, a power of two. Default: 64.
        levels: Chunk levels; lengths up to ``chunk ** levels`` are supported. Default: 3.

    Returns:
        ``[..., L]`` states; in a traced graph NaN everywhere if ``L > chunk ** levels`` (eager calls raise instead).
    """
    _check_chunking(chunk, levels)
    _check_length(a.shape[-1], chunk, levels)
    return _affine_scan(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), chunk, levels).reshape(a.shape)


def _check_length(length: int, chunk: int, levels: int) -> None:
    # While tracing (torch.export, torch.compile), ``length`` may be symbolic; the graph guards itself instead
    # (see _scan_padded).
    if not torch.compiler.is_compiling() and length > chunk**levels:
        raise ValueError(f'the chunked scan supports L <= chunk ** levels = {chunk}**{levels}, got L = {length}')


def _padding(length: int, chunk: int) -> int:
    return (length + chunk - 1) // chunk * chunk - length


def _affine_scan(a: torch.Tensor, b: torch.Tensor, chunk: int, levels: int) -> torch.Tensor:
    """``[M, L]`` decays and drives -> ``[M, L]`` states (any ``L``)."""
    length = a.shape[1]
    pad = _padding(length, chunk)
    # padding steps are the identity map (a = 1, b = 0): they follow the real steps and change none of them
    h = _scan_padded(F.pad(a, (0, pad), value=1.0), F.pad(b, (0, pad), value=0.0), chunk, levels)
    return h[:, :length]


def _scan_padded(a: torch.Tensor, b: torch.Tensor, chunk: int, levels: int) -> torch.Tensor:
    """``[M, n * chunk]`` decays and drives -> ``[M, n * chunk]`` states.

    The rounds run on ``[M * n, chunk]`` views: two-dimensional, so that tracing with symbolic sizes stays cheap.
    """
    rows = a.shape[0]
    prod, h = _scan_chunks(a.reshape(-1, chunk), b.reshape(-1, chunk))      # [M * n, chunk]
    if levels > 1:
        # the chunks' summaries are the steps of the next level: [M, n] true state at the end of each chunk
        ends = _affine_scan(prod[:, -1].reshape(rows, -1), h[:, -1].reshape(rows, -1), chunk, levels - 1)
        starts = _shift(ends, 1, 0.0).reshape(-1, 1)                            # the state before each chunk
        h = h + prod * starts
    else:
        # A graph cannot raise: more than one chunk per row at the top level (L > chunk ** levels) poisons the
        # result. ``extra`` is (chunks - rows) / rows, computed from the data's shape at run time.
        extra = torch.ones_like(prod[:, 0]).sum() - rows
        h = h + torch.where(extra > 0, float('nan'), 0.0)
    return h.reshape(rows, -1)


def chunked_selective_scan(u: torch.Tensor,
                           delta: torch.Tensor,
                           A: torch.Tensor,
                           B: torch.Tensor,
                           C: torch.Tensor,
                           D: torch.Tensor | None = None,
                           delta_bias: torch.Tensor | None = None,
                           delta_softplus: bool = True,
                           chunk: int = CHUNK,
                           levels: int = LEVELS) -> torch.Tensor:
    """Selective scan in fp32 with :func:`chunked_affine_scan`; same signature and result as ``selective_scan_ref``.

    Args:
        u: ``[B, K*D, L]`` input sequence.
        delta: ``[B, K*D, L]`` step sizes before the bias and softplus.
        A: ``[K*D, N]`` state matrix (negative).
        B: ``[B, K, N, L]`` input projection, shared by the D rows of each group k.
        C: ``[B, K, N, L]`` output projection, shared likewise.
        D: ``[K*D]`` skip weight. Default: None.
        delta_bias: ``[K*D]`` added to ``delta`` before the softplus. Default: None.
        delta_softplus: apply softplus to ``delta + delta_bias``. Default: True.
        chunk: Steps per chunk (see :func:`chunked_affine_scan`). Default: 64.
        levels: Chunk levels (see :func:`chunked_affine_scan`). Default: 3.

    Returns:
        ``[B, K*D, L]`` fp32 output.
    """
    _check_chunking(chunk, levels)
    batch, rows, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    if rows % groups:
        raise ValueError(f'u has {rows} rows, not a multiple of the {groups} groups of B')
    _check_length(length, chunk, levels)
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # Pad the sequences to whole chunks once: a padding step has delta = 0 (decay 1, drive 0) and C = 0.
    pad = _padding(length, chunk)
    delta, drive = F.pad(delta, (0, pad)), F.pad(delta * u, (0, pad))
    B, C = F.pad(B, (0, pad)), F.pad(C, (0, pad))
    grouped = (batch, groups, rows // groups, 1, -1)
    decay = torch.exp(delta.reshape(grouped) * A.reshape(groups, rows // groups, d_state, 1))   # [B, K, D, N, Lp]
    drive = drive.reshape(grouped) * B[:, :, None]                                              # [B, K, D, N, Lp]
    h = _scan_padded(decay.reshape(-1, decay.shape[-1]), drive.reshape(-1, drive.shape[-1]), chunk, levels)
    y = (h.reshape(decay.shape) * C[:, :, None]).sum(3).reshape(batch, rows, -1)[:, :, :length]
    if D is not None:
        y = y + D.float()[:, None] * u
    return y


def chunked_cross_selective_scan(x: torch.Tensor,
                                 delta: torch.Tensor,
                                 A: torch.Tensor,
                                 B: torch.Tensor,
                                 C: torch.Tensor,
                                 D: torch.Tensor | None = None,
                                 delta_bias: torch.Tensor | None = None,
                                 delta_softplus: bool = True,
                                 delta_proj_weight: torch.Tensor | None = None,
                                 chunk: int = CHUNK,
                                 levels: int = LEVELS) -> torch.Tensor:
    """SS2D's scan stage (as ``mmvmamba_kernels.cross_selective_scan``) with :func:`chunked_selective_scan`.

    Args:
        x: ``[B, D, H, W]`` input map.
        delta: ``[B, 4, D, H, W]`` step sizes, or the low-rank ``[B, 4, R, H, W]`` with ``delta_proj_weight``.
        A: ``[4*D, N]``.
        B: ``[B, 4, N, H, W]``.
        C: ``[B, 4, N, H, W]``.
        D: ``[4*D]``. Default: None.
        delta_bias: ``[4*D]``. Default: None.
        delta_softplus: apply softplus to ``delta + delta_bias``. Default: True.
        delta_proj_weight: ``[4, D, R]`` projection of a low-rank ``delta``. Default: None.
        chunk: Steps per chunk (see :func:`chunked_affine_scan`). Default: 64.
        levels: Chunk levels (see :func:`chunked_affine_scan`). Default: 3.

    Returns:
        ``[B, D, H, W]`` fp32: the four directions' outputs summed at each position.
    """
    if delta_proj_weight is not None:
        delta = expand_delta(delta, delta_proj_weight)
    batch, dim, height, width = x.shape
    d_state = B.shape[2]
    # x is every direction's u: put it next to the per-direction delta, B and C and reorder them all at once
    spatial = torch.cat([x.float()[:, None].expand(batch, 4, dim, height, width), delta.float(), B.float(), C.float()],
                        dim=2)                                                           # [B, 4, 2D + 2N, H, W]
    u, delta, B, C = spatial_to_seq(spatial).split([dim, dim, d_state, d_state], dim=2)  # [B, 4, *, L]
    ys = chunked_selective_scan(u.reshape(batch, 4 * dim, -1), delta.reshape(batch, 4 * dim, -1), A, B, C, D,
                                delta_bias, delta_softplus, chunk, levels)
    return cross_merge_ref(ys.reshape(batch, 4, dim, height, width))


@contextlib.contextmanager
def export_scan(model: nn.Module, chunk: int = CHUNK, levels: int = LEVELS) -> Iterator[nn.Module]:
    """Within the block, every SS2D of ``model`` runs :func:`chunked_cross_selective_scan` (no Triton).

    Sets the ``scan_fn`` attribute of each SS2D instance (its class default is ``cross_selective_scan``) and removes
    it on exit, also on error; other models and SS2D modules are not affected.

    Args:
        model: A module containing SS2D layers (a VMamba backbone, or a detector or segmentor built on one).
        chunk: Steps per chunk (see :func:`chunked_affine_scan`). Default: 64.
        levels: Chunk levels (see :func:`chunked_affine_scan`). Default: 3.

    Yields:
        ``model``.
    """
    _check_chunking(chunk, levels)
    layers = [m for m in model.modules() if isinstance(m, SS2D)]
    if not layers:
        raise ValueError(f'export_scan: {type(model).__name__} contains no SS2D layer (not a VMamba model)')
    switched = [m for m in layers if 'scan_fn' in vars(m)]
    if switched:
        raise RuntimeError(f'export_scan: {len(switched)} SS2D layers already have their own scan_fn '
                           '(nested export_scan blocks over the same model are not supported)')
    scan_fn = functools.partial(chunked_cross_selective_scan, chunk=chunk, levels=levels)
    for layer in layers:
        layer.scan_fn = scan_fn
    try:
        yield model
    finally:
        for layer in layers:
            del layer.scan_fn
