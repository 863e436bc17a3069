"""Fixtures of the model tests."""
import importlib

import pytest


@pytest.fixture
def scan_launches(monkeypatch):
    """Records the fused scan's Triton forward launches, so that GPU tests can assert the Triton path ran (default
    dispatch falls back to the reference without Triton, and would then compare the reference with itself)."""
    import mmvmamba_kernels
    if not mmvmamba_kernels.HAS_TRITON:
        pytest.fail('triton is not importable: the GPU tests need the Triton kernels')
    # the module (the package's attribute of that name is the public function)
    fused_scan = importlib.import_module('mmvmamba_kernels.cross_selective_scan')
    calls = []
    launch = fused_scan.launch_scan_fwd

    def counted(*args, **kwargs):
        calls.append(1)
        return launch(*args, **kwargs)

    monkeypatch.setattr(fused_scan, 'launch_scan_fwd', counted)
    return calls
