"""OpenMMLab's ``mim`` works with an installed mmvmamba: the wheel carries configs, tools and the model index in
``mmvmamba/.mim``, where ``mim search`` and ``mim train`` look for them.

The wheel is installed into a folder put first on PYTHONPATH, so that mim sees that copy rather than the checkout's
editable install (mim cannot locate the folder of an editable package).
"""
import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmvmamba.datasets.synthetic_shapes import generate_shapes_dataset
from tests.paths import REPO_ROOT

DEMO_SEG_CONFIG = 'upernet_vmamba-demo_shapes-128x128.py'  # the faster of the two demo configs


def _mim(args: list[str], cwd: Path, site: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, '-m', 'mim', *args], cwd=cwd, env=dict(os.environ, PYTHONPATH=str(site)),
                          capture_output=True, text=True, timeout=timeout)
    output = f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    assert proc.returncode == 0, f'mim {args} exited with {proc.returncode}:\n{output}'
    return proc


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    """A folder holding mmvmamba installed from a freshly built wheel."""
    tmp = tmp_path_factory.mktemp('mim')
    pip = [sys.executable, '-m', 'pip']
    subprocess.run(pip + ['wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp / 'dist'),
                          str(REPO_ROOT)], check=True, capture_output=True)
    wheel, = (tmp / 'dist').glob('mmvmamba-*.whl')
    subprocess.run(pip + ['install', '--no-deps', '-q', '--target', str(tmp / 'site'), str(wheel)], check=True,
                   capture_output=True)
    return tmp / 'site'


def test_installed_package_carries_the_mim_files(site):
    mim_dir = site / 'mmvmamba' / '.mim'
    assert filecmp.cmp(mim_dir / 'model-index.yml', REPO_ROOT / 'model-index.yml', shallow=False)
    for folder in ('configs', 'tools'):
        repo_files = sorted(p.relative_to(REPO_ROOT / folder) for p in (REPO_ROOT / folder).rglob('*')
                            if p.is_file() and '__pycache__' not in p.parts)
        installed = sorted(p.relative_to(mim_dir / folder) for p in (mim_dir / folder).rglob('*')
                           if p.is_file() and '__pycache__' not in p.parts)  # pip compiles what it installs
        assert installed == repo_files, folder
    for metafile in yaml.safe_load((REPO_ROOT / 'model-index.yml').read_text())['Import']:
        assert (mim_dir / metafile).is_file(), metafile


def test_mim_search_lists_every_model(site, tmp_path):
    proc = _mim(['search', 'mmvmamba'], tmp_path, site)
    names = []
    for metafile in yaml.safe_load((REPO_ROOT / 'model-index.yml').read_text())['Import']:
        names += [model['Name'] for model in yaml.safe_load((REPO_ROOT / metafile).read_text())['Models']]
    assert names
    for name in names:
        assert f'config id: {name}\n' in proc.stdout, name


def test_mim_train_runs_the_installed_tool_and_config(site, tmp_path):
    generate_shapes_dataset(tmp_path / 'data' / 'shapes', num_train=8, num_val=4)  # the config's data_root
    proc = _mim(['train', 'mmvmamba', DEMO_SEG_CONFIG, '--work-dir', 'work', '--cfg-options', 'train_cfg.max_iters=1'],
                tmp_path, site)
    installed = site / 'mmvmamba' / '.mim'
    command = next(line for line in proc.stdout.splitlines() if line.startswith('Training command is'))
    assert f'{installed}/tools/train.py {installed}/configs/seg/{DEMO_SEG_CONFIG}' in command
    assert (tmp_path / 'work' / 'iter_1.pth').is_file()
    assert 'Iter(val) [1/1]' in proc.stdout and 'mIoU' in proc.stdout  # evaluated after its one iteration
