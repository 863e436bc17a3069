"""Which checkpoint a resumed run continues from (mmvmamba.checkpoint.resume_checkpoint and tools/train.py)."""
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmvmamba.checkpoint import CheckpointFileError, resume_checkpoint
from tests.paths import REPO_ROOT

TRAIN_TOOL = REPO_ROOT / 'tools' / 'train.py'


def _checkpoint(path: Path, truncated: bool = False) -> Path:
    torch.save({'meta': {'iter': 1}, 'state_dict': {'w': torch.arange(1000.)}}, path)
    if truncated:
        path.write_bytes(path.read_bytes()[:path.stat().st_size * 2 // 3])
    return path


def _snapshot(work_dir: Path) -> dict:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in work_dir.iterdir()}


def test_nothing_to_resume_is_refused_unless_a_fresh_start_is_allowed(tmp_path):
    for work_dir in (tmp_path / 'missing', tmp_path):
        with pytest.raises(FileNotFoundError, match='no checkpoint to resume from .*--allow-fresh-start'):
            resume_checkpoint(work_dir, None)
        assert resume_checkpoint(work_dir, None, allow_fresh_start=True) is None


@pytest.mark.parametrize('allow_fresh_start', [False, True])
def test_checkpoints_without_last_checkpoint_are_never_overwritten(tmp_path, allow_fresh_start):
    for i in (2, 4, 10):
        _checkpoint(tmp_path / f'iter_{i}.pth', truncated=i == 10)
    before = _snapshot(tmp_path)
    with pytest.raises(FileNotFoundError, match=r'holds checkpoints \(iter_10\.pth, iter_4\.pth, iter_2\.pth\) but '
                       r'no last_checkpoint .* would overwrite them\. The newest intact checkpoint .*iter_4\.pth'):
        resume_checkpoint(tmp_path, None, allow_fresh_start=allow_fresh_start)
    assert _snapshot(tmp_path) == before


def test_truncated_last_checkpoint_names_the_newest_intact_one(tmp_path):
    for i in (2, 4, 6):
        _checkpoint(tmp_path / f'iter_{i}.pth', truncated=i >= 4)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_6.pth'))
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointFileError) as err:
        resume_checkpoint(tmp_path, None)
    message = str(err.value)
    assert f"cannot resume: checkpoint '{tmp_path / 'iter_6.pth'}'" in message and 'is truncated' in message
    assert f'--resume {tmp_path / "iter_2.pth"}' in message  # iter_4 is truncated too
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize('problem', ['missing', 'empty', 'empty-pointer'])
def test_other_unusable_last_checkpoints(tmp_path, problem):
    _checkpoint(tmp_path / 'iter_2.pth')
    target = tmp_path / 'iter_4.pth'
    if problem == 'empty':
        target.write_bytes(b'')
    (tmp_path / 'last_checkpoint').write_text('' if problem == 'empty-pointer' else str(target))
    match = {'missing': 'does not exist', 'empty': r'is empty \(0 bytes\)',
             'empty-pointer': 'last_checkpoint.* is empty'}
    with pytest.raises((FileNotFoundError, CheckpointFileError), match=match[problem]) as err:
        resume_checkpoint(tmp_path, None)
    assert f'--resume {tmp_path / "iter_2.pth"}' in str(err.value)


def test_an_explicit_checkpoint_is_checked(tmp_path):
    good, bad = _checkpoint(tmp_path / 'iter_2.pth'), _checkpoint(tmp_path / 'iter_4.pth', truncated=True)
    assert resume_checkpoint(tmp_path, str(good)) == str(good)
    with pytest.raises(CheckpointFileError, match=f'(?s)iter_4.pth.*truncated.*--resume {good}'):
        resume_checkpoint(tmp_path, str(bad))
    (tmp_path / 'last_checkpoint').write_text(str(good))
    assert resume_checkpoint(tmp_path, None) == str(good)


# ---- tools/train.py: the same decisions from its command line and config ----


@pytest.fixture
def train_tool(monkeypatch):
    """tools/train.py's functions, loaded as the script sees itself (without running main)."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    return runpy.run_path(str(TRAIN_TOOL), run_name='train_tool')


def _parse(train_tool, monkeypatch, *args):
    monkeypatch.setattr(sys, 'argv', ['train.py', 'config.py', *args])
    return train_tool['parse_args']()


def test_allow_fresh_start_needs_resume(train_tool, monkeypatch, capsys):
    assert _parse(train_tool, monkeypatch, '--resume', '--allow-fresh-start').allow_fresh_start
    with pytest.raises(SystemExit):
        _parse(train_tool, monkeypatch, '--allow-fresh-start')
    assert '--allow-fresh-start only applies to --resume' in capsys.readouterr().err


def test_train_tool_resolves_the_checkpoint_before_building_the_runner(train_tool, tmp_path):
    check = train_tool['check_checkpoint_to_load']
    cfg = Config(dict(work_dir=str(tmp_path), resume=True, load_from=None))
    with pytest.raises(FileNotFoundError, match='--allow-fresh-start'):
        check(cfg, allow_fresh_start=False)
    check(cfg, allow_fresh_start=True)
    assert cfg.resume is False and cfg.load_from is None  # a fresh start, said so

    _checkpoint(tmp_path / 'iter_2.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    cfg = Config(dict(work_dir=str(tmp_path), resume=True, load_from=None))
    check(cfg, allow_fresh_start=False)
    assert cfg.resume is True and cfg.load_from == str(tmp_path / 'iter_2.pth')

    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint\n')
    with pytest.raises(CheckpointFileError, match=f"'{text}' is not in PyTorch's zip checkpoint format: it is a text"):
        check(Config(dict(work_dir=str(tmp_path), resume=False, load_from=str(text))), allow_fresh_start=False)


def test_train_tool_refuses_to_resume_from_nothing(tmp_path):
    """The whole command line: refused before anything is built, nothing written to the work dir."""
    work_dir = tmp_path / 'work'
    config = REPO_ROOT / 'configs' / 'seg' / 'upernet_vmamba-demo_shapes-128x128.py'
    proc = subprocess.run([sys.executable, str(TRAIN_TOOL), str(config), '--work-dir', str(work_dir), '--resume'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'FileNotFoundError: --resume: there is no checkpoint to resume from' in proc.stderr
    assert '--allow-fresh-start' in proc.stderr
    assert not work_dir.exists() or not list(work_dir.rglob('*.pth'))
