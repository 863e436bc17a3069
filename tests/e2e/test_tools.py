"""The launch scripts, and our configs and checkpoints through mmdet's and mmseg's own tools (from their wheels)."""
import os
import re
import subprocess
from pathlib import Path

import mmdet
import mmseg
import torch
from mmengine.config import Config
from mmengine.runner.checkpoint import save_checkpoint

from .conftest import DEMO_SEG_CONFIG, NUM_VAL, REPO, TOOLS, build_model, run_tool

MMDET_TOOLS = Path(mmdet.__file__).parent / '.mim' / 'tools'
MMSEG_TOOLS = Path(mmseg.__file__).parent / '.mim' / 'tools'


def _launch(script: str, args: list[str], **env) -> subprocess.CompletedProcess:
    # PYTHON=echo prints the torchrun command line instead of running it.
    return subprocess.run(['bash', str(TOOLS / script), *args], capture_output=True, text=True,
                          env={**os.environ, 'PYTHON': 'echo', **env})


def test_dist_train_command():
    proc = _launch('dist_train.sh', ['cfg.py', '8', '--resume', '--cfg-options', 'a=1'])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        '-m', 'torch.distributed.run', '--nnodes=1', '--node_rank=0', '--master_addr=127.0.0.1', '--master_port=29500',
        '--nproc_per_node=8', str(TOOLS / 'train.py'), 'cfg.py', '--launcher', 'pytorch', '--resume',
        '--cfg-options', 'a=1']


def test_dist_test_command_on_several_nodes():
    proc = _launch('dist_test.sh', ['cfg.py', 'ckpt.pth', '4', '--tta'], NNODES='2', NODE_RANK='1',
                   MASTER_ADDR='10.0.0.7', PORT='29999')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        '-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.7', '--master_port=29999',
        '--nproc_per_node=4', str(TOOLS / 'test.py'), 'cfg.py', 'ckpt.pth', '--launcher', 'pytorch', '--tta']


def test_dist_scripts_print_usage():
    for script in ('dist_train.sh', 'dist_test.sh'):
        proc = _launch(script, ['cfg.py'])
        assert proc.returncode == 2 and 'usage' in proc.stderr


def test_mmdet_own_test_tool(fixture_det, data_cwd):
    work_dir = data_cwd / 'work_dirs/mmdet_tool'
    proc = run_tool([MMDET_TOOLS / 'test.py', fixture_det.config, fixture_det.checkpoint, '--work-dir', work_dir,
                     '--show-dir', 'vis'], cwd=data_cwd)
    assert 'coco/segm_mAP' in proc.stdout + proc.stderr
    assert len(list(work_dir.rglob('vis/*.png'))) == NUM_VAL


def test_mmseg_own_test_tool_with_multiscale_flip_tta(tmp_path, data_cwd):
    """mIoU(MS): the ADE20K configs' multi-scale + flip TTA, here on the demo segmentor, through mmseg's test.py."""
    config = tmp_path / 'upernet_demo_tta.py'
    ade_tta = Config.fromfile(REPO / 'configs/seg/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py').tta_pipeline
    config.write_text(f'_base_ = [{str(DEMO_SEG_CONFIG)!r}]\ntta_pipeline = {ade_tta!r}\n')
    model = build_model(Config.fromfile(config))
    model.init_weights()
    checkpoint = tmp_path / 'upernet_demo.pth'
    save_checkpoint({'meta': {}, 'state_dict': {k: v.clone() for k, v in model.state_dict().items()}}, str(checkpoint))
    proc = run_tool([MMSEG_TOOLS / 'test.py', config, checkpoint, '--tta', '--work-dir', tmp_path / 'work'],
                    cwd=data_cwd)
    log = proc.stdout + proc.stderr
    assert re.search(r'Iter\(test\) \[\d+/\d+\]\s+aAcc: [\d.]+\s+mIoU: [\d.]+', log)
    assert "type='SegTTAModel'" in log  # the config the runner used: the TTA model around the segmentor
    assert torch.load(checkpoint, weights_only=True)['state_dict'].keys() == model.state_dict().keys()
