"""FLOP counting for models with VMamba's SS2D, following the convention of the published VMamba numbers.

The published figures come from fvcore-style jit counting (mmengine's ``FlopAnalyzer`` is the same port):

* a multiply-add counts as one FLOP; convolutions, linears, matmuls and einsums are counted, LayerNorm as
  5 FLOPs an element (4 without affine), eval BatchNorm as 2 (1), bilinear upsampling as 4 an output element,
  adaptive average pooling as 1 an input element;
* element-wise ops (additions, activations, ``exp``, ``flip``, softplus, ...) count zero;
* the selective scan counts ``9 * B * L * D * N + B * D * L`` (Mamba issue #110; the second term is the ``D`` skip),
  with ``D`` every row of the scan, i.e. all ``K * d_inner`` rows of the four directions.

The reference selective scan is a prefix scan of ``log2(L)`` rounds of element-wise ops: a generic counter would
count those internal ops, not the scan. :func:`ss2d_scan_as_unit` therefore swaps every SS2D's ``scan``
(cross-scan, ``x_proj``/``dt_proj`` projections, selective scan, cross-merge) for one traced op whose handle counts
it by the rule above. The
projections are counted as the grouped 1x1 projections they are (``B*K*L*D*(R+2N)`` and ``B*K*L*R*D``), exactly
what the counter gives for the official ``conv1d``/``einsum`` forms; cross-scan and cross-merge are copies and
additions, zero.
"""
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape

from mmvmamba.models.layers.ss2d import NUM_DIRECTIONS, SS2D

# The name the jit trace gives the stand-in op (``prim::PythonOp.<autograd Function class name>``).
SCAN_UNIT_OP = 'prim::PythonOp.SS2DScanUnit'

# Counted as zero, as in the published numbers; listed so the analyser does not warn about them.
_ZERO_FLOP_OPS = ('aten::gelu', 'aten::silu', 'aten::neg', 'aten::exp', 'aten::flip', 'aten::softplus')

__all__ = [
    'SCAN_UNIT_OP', 'count_flops', 'count_parameters', 'scan_unit_flops', 'selective_scan_flops', 'ss2d_scan_as_unit'
]


def selective_scan_flops(batch: int, length: int, rows: int, d_state: int, with_skip: bool = True) -> int:
    """FLOPs of one selective-scan call by the official rule ``9*B*L*D*N (+ B*D*L)``.

    Args:
        batch: ``B``.
        length: ``L``, the sequence length (``H*W`` for SS2D).
        rows: ``D`` in the rule: all scanned rows, ``K * d_inner`` for SS2D's four directions.
        d_state: ``N``.
        with_skip: add ``B*D*L`` for the ``D`` skip term. Default: True.
    """
    flops = 9 * batch * length * rows * d_state
    if with_skip:
        flops += batch * rows * length
    return flops


def scan_unit_flops(batch: int,
                    d_inner: int,
                    length: int,
                    dt_rank: int,
                    d_state: int,
                    directions: int = NUM_DIRECTIONS) -> int:
    """FLOPs of ``SS2D.scan``: the ``x_proj`` and ``dt_proj`` projections plus the selective scan.

    Args:
        batch: ``B``.
        d_inner: ``D``, channels of the scanned map.
        length: ``L = H*W``.
        dt_rank: ``R``.
        d_state: ``N``.
        directions: ``K``. Default: 4.
    """
    x_proj = batch * directions * length * d_inner * (dt_rank + 2 * d_state)
    dt_proj = batch * directions * length * dt_rank * d_inner
    return x_proj + dt_proj + selective_scan_flops(batch, length, directions * d_inner, d_state)


class SS2DScanUnit(torch.autograd.Function):
    """Stand-in for ``SS2D.scan`` during counting: one traced op carrying the shapes its FLOPs depend on.

    Its output has the shape and dtype of the real scan's (fp32 ``[B, D, H, W]``) and is the input itself, so the
    layers after it see input-dependent, finite values.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                A_logs: torch.Tensor) -> torch.Tensor:
        return x.float().clone()


def _scan_unit_handle(inputs: list[Any], outputs: list[Any]) -> int:
    batch, d_inner, height, width = get_shape(inputs[0])      # x [B, D, H, W]
    directions, _, _ = get_shape(inputs[1])                   # x_proj_weight [K, R+2N, D]
    dt_rank = get_shape(inputs[2])[2]                         # dt_projs_weight [K, D, R]
    d_state = get_shape(inputs[3])[1]                         # A_logs [K*D, N]
    return scan_unit_flops(batch, d_inner, height * width, dt_rank, d_state, directions)


def _scan_unit(module: SS2D, calls: list[int], x: torch.Tensor) -> torch.Tensor:
    calls[0] += 1
    return SS2DScanUnit.apply(x, module.x_proj_weight, module.dt_projs_weight, module.A_logs)


@contextmanager
def ss2d_scan_as_unit(model: nn.Module) -> Iterator[list[int]]:
    """Within the block, every SS2D of ``model`` runs :class:`SS2DScanUnit` instead of its scan.

    Yields a one-element list that counts the stand-in's calls (so a caller can check that every SS2D used it).
    The modules are restored on exit.
    """
    calls = [0]
    patched = [module for module in model.modules() if isinstance(module, SS2D)]
    for module in patched:
        module.scan = functools.partial(_scan_unit, module, calls)
    try:
        yield calls
    finally:
        for module in patched:
            del module.scan


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, shared ones once (as fvcore's ``parameter_count``)."""
    return parameter_count(model)['']


def count_flops(model: nn.Module, inputs: tuple[Any, ...], breakdown: nn.Module | None = None) -> dict[str, Any]:
    """FLOPs of ``model(*inputs)`` with the published convention (see the module docstring).

    Args:
        model: Any module; its SS2D layers are counted with the selective-scan rule. Use eval mode (BatchNorm in
            training mode is counted differently).
        inputs: Positional inputs of ``model``.
        breakdown: The submodule of ``model`` whose direct children ``by_module`` reports (e.g. the detector
            inside a wrapper). Default: None (``model``).

    Returns:
        A dict with ``total`` (FLOPs), ``by_module`` (FLOPs of each direct child of ``breakdown``),
        ``by_operator`` (FLOPs per op type), ``unsupported`` (op type -> number of calls counted as zero that are
        not in the zero list above, e.g. RoIAlign or NMS), and ``ss2d`` (the number of SS2D scans counted).

    Raises:
        RuntimeError: if an SS2D layer did not go through ``scan`` (its reference loop would be traced and counted
            with the wrong rule).
    """
    expected = sum(isinstance(module, SS2D) for module in model.modules())
    target = model if breakdown is None else breakdown
    prefix = next((name for name, module in model.named_modules() if module is target), None)
    if prefix is None:
        raise ValueError('breakdown must be a submodule of model')
    children = {name: f'{prefix}.{name}' if prefix else name for name, _ in target.named_children()}
    with torch.no_grad(), ss2d_scan_as_unit(model) as calls:
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.set_op_handle(**{op: None for op in _ZERO_FLOP_OPS}, **{SCAN_UNIT_OP: _scan_unit_handle})
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        total = analyzer.total()
        by_module = {name: analyzer.total(full_name) for name, full_name in children.items()}
        by_operator = dict(analyzer.by_operator())
        unsupported = dict(analyzer.unsupported_ops())
    if calls[0] < expected:
        raise RuntimeError(f'{expected} SS2D layers but only {calls[0]} scans went through SS2D.scan; '
                           'count_flops needs every SS2D to call self.scan(x)')
    return dict(total=total, by_module=by_module, by_operator=by_operator, unsupported=unsupported, ss2d=calls[0])
