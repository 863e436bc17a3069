"""A broken module of ours surfaces as an error; only Triton's absence turns the kernels off."""
import subprocess
import sys


def _import_with(blocked: str) -> subprocess.CompletedProcess:
    # None in sys.modules makes `import blocked` raise ImportError, as a bug in that module would.
    code = f'import sys; sys.modules[{blocked!r}] = None; import mmvmamba_kernels; print(mmvmamba_kernels.HAS_TRITON)'
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)


def test_a_broken_kernel_module_raises_its_error():
    result = _import_with('mmvmamba_kernels.layer_norm')
    assert result.returncode != 0 and 'mmvmamba_kernels.layer_norm' in result.stderr, result.stdout + result.stderr


def test_without_triton_the_kernels_are_off():
    result = _import_with('triton')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'False'
