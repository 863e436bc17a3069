"""A regular (non-editable) install from a built wheel works: both import packages, kernels/ as mmvmamba_kernels."""
import os
import subprocess
import sys
import zipfile

from tests.paths import REPO_ROOT


def test_wheel_installs_and_imports(tmp_path):
    pip = [sys.executable, '-m', 'pip']
    subprocess.run(pip + ['wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path / 'dist'),
                          str(REPO_ROOT)], check=True, capture_output=True)
    wheel, = (tmp_path / 'dist').glob('mmvmamba-*.whl')
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ('mmvmamba/__init__.py', 'mmvmamba/models/backbones/vmamba.py', 'mmvmamba_kernels/__init__.py',
                     'mmvmamba_kernels/selective_scan_ref.py', 'mmvmamba_kernels/README.md'):
        assert expected in names, f'{expected} missing from {wheel.name}'
    assert not any(n.startswith(('kernels/', 'tests/', 'configs/')) for n in names)

    site = tmp_path / 'site'
    subprocess.run(pip + ['install', '--no-deps', '-q', '--target', str(site), str(wheel)], check=True,
                   capture_output=True)
    probe = ('import mmvmamba, mmvmamba_kernels, torch; '
             'print(mmvmamba.__file__); print(mmvmamba_kernels.__file__); '
             'out = mmvmamba.VMamba(arch="tiny", dims=8, depths=(1, 1, 1, 1))(torch.randn(1, 3, 16, 16)); '
             'print(len(out))')
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, '-c', probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    package_file, kernels_file, outputs = result.stdout.split()
    assert package_file.startswith(str(site)) and kernels_file.startswith(str(site))
    assert outputs == '4'
