"""Kernel tests run the Triton kernels on the CPU under Triton's interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is imported (``triton.jit`` reads it when a kernel is defined), so it is
set here, when pytest imports this file, before any test module imports ``mmvmamba_kernels``.
"""
import math
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
    if 'triton' in sys.modules and os.environ['TRITON_INTERPRET'] == '1':
        import mmvmamba_kernels
        if mmvmamba_kernels.HAS_TRITON and not mmvmamba_kernels._interpreted():
            raise pytest.UsageError('triton was imported before tests/kernels/conftest.py could set '
                                    'TRITON_INTERPRET=1; run pytest tests/kernels in its own process')


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Make torch.empty / empty_like return NaN-filled tensors, so an output element a kernel never writes fails."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and not isinstance(t, torch._subclasses.FakeTensor):
            t.fill_(math.nan)
        return t

    monkeypatch.setattr(torch, 'empty', lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, 'empty_like', lambda *a, **k: poison(real_empty_like(*a, **k)))
