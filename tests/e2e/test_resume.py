"""A training run killed mid-way resumes with --resume: iteration, optimizer and lr scheduler state continue."""
import os
import signal
import subprocess
import sys
import time

import pytest

from mmvmamba.checkpoint import safe_load
from .conftest import DEMO_SEG_CONFIG, TOOLS, run_tool

MAX_ITERS = 12
INTERVAL = 2
KILL_AFTER = 4
# The demo config's warm-up: LinearLR from start_factor over warmup_iters, base lr 1e-3.
BASE_LR, START_FACTOR, WARMUP_ITERS = 1e-3, 0.01, 30


def _last_checkpoint_iter(work_dir) -> int:
    marker = work_dir / 'last_checkpoint'
    if not marker.is_file():
        return 0
    name = os.path.basename(marker.read_text().strip())
    return int(name[len('iter_'):-len('.pth')]) if name.startswith('iter_') else 0


def test_kill_and_resume(data_cwd):
    work_dir = data_cwd / 'work_dirs/resume'
    args = [TOOLS / 'train.py', DEMO_SEG_CONFIG, '--work-dir', work_dir, '--cfg-options',
            f'train_cfg.max_iters={MAX_ITERS}', f'train_cfg.val_interval={MAX_ITERS + 1}',
            f'default_hooks.checkpoint.interval={INTERVAL}', 'default_hooks.checkpoint.max_keep_ckpts=-1',
            'default_hooks.logger.interval=1']
    # On the CPU, so that the run is still going when the checkpoint to kill after appears.
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''}
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=data_cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 600
        while _last_checkpoint_iter(work_dir) < KILL_AFTER:
            if proc.poll() is not None:
                pytest.fail(f'training ended before it could be killed (exit {proc.returncode}):\n'
                            f'{proc.stderr.read()[-5000:]}')
            if time.time() > deadline:
                pytest.fail('no checkpoint within 600 s')
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    killed_at = _last_checkpoint_iter(work_dir)
    assert KILL_AFTER <= killed_at < MAX_ITERS
    assert not (work_dir / f'iter_{MAX_ITERS}.pth').exists()

    proc = run_tool([*args, '--resume'], cwd=data_cwd)
    assert f'resumed epoch: 0, iter: {killed_at}' in proc.stdout + proc.stderr
    logged = proc.stdout + proc.stderr
    assert f'Iter(train) [{killed_at + 1:>2}/{MAX_ITERS}]' in logged
    assert f'Iter(train) [{killed_at:>2}/{MAX_ITERS}]' not in logged  # nothing trained twice

    final = safe_load(work_dir / f'iter_{MAX_ITERS}.pth')
    assert final['meta']['iter'] == MAX_ITERS
    # Adam's per-parameter step counts continue from the killed run's instead of restarting at 0.
    steps = {float(state['step']) for state in final['optimizer']['state'].values()}
    assert steps == {float(MAX_ITERS)}
    # The warm-up scheduler (the poly one only starts at WARMUP_ITERS) counted every step of both runs.
    assert final['param_schedulers'][0]['last_step'] == MAX_ITERS
    # The warm-up continued: the lr is the one an uninterrupted run has after MAX_ITERS steps (mmengine's LinearLR
    # reaches the end factor after end - begin - 1 steps).
    expected_lr = BASE_LR * (START_FACTOR + (1 - START_FACTOR) * MAX_ITERS / (WARMUP_ITERS - 1))
    lrs = {round(group['lr'], 12) for group in final['optimizer']['param_groups']}
    assert lrs == {round(expected_lr, 12)}
