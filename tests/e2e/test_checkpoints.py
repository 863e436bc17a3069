"""Checkpoints through the tools: an mmdet-format checkpoint made from the parity fixture evaluates through
tools/test.py (and draws PNGs); a checkpoint for another variant, a file that is no checkpoint, a crafted file, a
wrong neck, missing data and a missing pretrained file each fail early with a message that says what to fix."""
import json
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.runner import BaseLoop
from mmengine.runner.checkpoint import load_checkpoint, save_checkpoint

from mmvmamba.engine import VMambaCheckHook
from .conftest import DEMO_DET_CONFIG, DEMO_SEG_CONFIG, NUM_VAL, REPO, TOOLS, build_model, run_tool


def test_fixture_checkpoint_matches_official_outputs(fixture_det):
    """The saved mmdet checkpoint, loaded strictly into the detector, reproduces the official backbone outputs."""
    model = build_model(Config.fromfile(fixture_det.config))
    load_checkpoint(model, str(fixture_det.checkpoint), map_location='cpu', strict=True)
    model.eval()
    with torch.no_grad():
        outputs = model.backbone(fixture_det.fixture['input'])
    for out, expected in zip(outputs, fixture_det.fixture['outputs'], strict=True):
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_fixture_checkpoint_evaluates_through_test_py(fixture_det, data_cwd, tmp_path):
    """The checkpoint carries what a training run's checkpoint carries besides the weights (the message hub's
    HistoryBuffers, numpy values in meta), which mmengine's torch.load reads through mmvmamba's checked allow-list."""
    hub = MessageHub(f'{tmp_path}')
    for loss in (0.9, 0.7):
        hub.update_scalar('train/loss', loss)
    checkpoint = tmp_path / 'trained.pth'
    save_checkpoint({'meta': {'seed': np.int64(7), 'mean': np.array([0.5, 0.25])}, 'message_hub': hub.state_dict(),
                     'state_dict': fixture_det.state_dict}, str(checkpoint))
    work_dir = data_cwd / 'work_dirs/fixture_test'
    show_dir = data_cwd / 'work_dirs/fixture_vis'
    proc = run_tool([TOOLS / 'test.py', fixture_det.config, checkpoint, '--work-dir', work_dir,
                     '--show-dir', show_dir], cwd=data_cwd)
    log = proc.stdout + proc.stderr
    assert 'Load checkpoint from' in log
    assert 'coco/bbox_mAP' in log and 'coco/segm_mAP' in log
    metrics = json.loads(next(work_dir.glob('*/*.json')).read_text())
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    assert len(list(show_dir.rglob('*.png'))) == NUM_VAL


def test_checkpoint_of_another_variant_is_refused(fixture_det, data_cwd):
    """The dims-24 fixture checkpoint against the dims-16 demo config: refused before anything is loaded."""
    proc = run_tool([TOOLS / 'test.py', DEMO_DET_CONFIG, fixture_det.checkpoint, '--work-dir',
                     data_cwd / 'work_dirs/wrong_variant'], cwd=data_cwd, check=False)
    assert proc.returncode != 0
    assert 'the checkpoint does not fit this model' in proc.stderr
    assert 'shape mismatches' in proc.stderr and 'backbone.patch_embed.0.weight' in proc.stderr
    assert 'coco/bbox_mAP' not in proc.stdout + proc.stderr


def test_test_py_names_a_file_that_is_not_a_checkpoint(tmp_path):
    text = tmp_path / 'model.pth'
    text.write_text('<html>404 Not Found</html>\n')
    proc = run_tool([TOOLS / 'test.py', DEMO_DET_CONFIG, text], cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert f"CheckpointFileError: checkpoint '{text}' is not in PyTorch's zip checkpoint format: it is a text file" \
        in proc.stderr


class _Reduce:

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def test_test_py_refuses_a_crafted_checkpoint(fixture_det, data_cwd, tmp_path):
    """An object array over forged pointer bytes, read while unpickling: refused, not a crash of the tool."""
    forged = _Reduce(OrderedDict, (), _Reduce(np.ndarray, ((1, ), 'O', b'AAAAAAAA')))
    checkpoint = tmp_path / 'crafted.pth'
    torch.save({'meta': forged, 'state_dict': fixture_det.state_dict}, checkpoint)
    proc = run_tool([TOOLS / 'test.py', fixture_det.config, checkpoint, '--work-dir', tmp_path / 'work'],
                    cwd=data_cwd, check=False)
    assert proc.returncode == 1, f'return code {proc.returncode} (negative: killed by a signal)\n{proc.stderr[-3000:]}'
    assert 'UnpicklingError' in proc.stderr and 'refusing a call of numpy.ndarray' in proc.stderr
    assert 'coco/bbox_mAP' not in proc.stdout + proc.stderr


def test_missing_data_fails_early(tmp_path):
    proc = run_tool([TOOLS / 'train.py', REPO / 'configs/det/mask-rcnn_vmamba-t_fpn_1x_coco.py', '--work-dir',
                     tmp_path / 'work'], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert 'the dataset is not where the config says' in proc.stderr
    assert 'train_dataloader.dataset.ann_file' in proc.stderr and 'data/coco/' in proc.stderr


def _runner(model, training: bool):
    class _Loop(BaseLoop):
        def run(self):
            pass

    return types.SimpleNamespace(model=model, _train_loop=_Loop(None, []) if training else None)


@pytest.mark.parametrize('config, key, wrong, message', [
    (DEMO_DET_CONFIG, 'neck', dict(in_channels=[24, 48, 96, 192]), 'set model.neck.in_channels=[16, 32, 64, 128]'),
    (DEMO_SEG_CONFIG, 'decode_head', dict(in_channels=[32, 64, 128, 256]),
     'set model.decode_head.in_channels=[16, 32, 64, 128]'),
    (DEMO_SEG_CONFIG, 'auxiliary_head', dict(in_channels=128), 'set model.auxiliary_head.in_channels=64'),
], ids=['det-neck', 'seg-decode-head', 'seg-aux-head'])
def test_wrong_channels_fail_before_training(config, key, wrong, message):
    cfg = Config.fromfile(config)
    cfg.model[key].update(wrong)
    model = build_model(cfg)
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
        VMambaCheckHook().before_run(_runner(model, training=True))


def test_missing_pretrained_fails_before_training():
    cfg = Config.fromfile(REPO / 'configs/seg/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py')
    cfg.model.backbone.update(dims=16, depths=(1, 1, 2, 1))
    cfg.model.decode_head.update(in_channels=[16, 32, 64, 128], channels=32)
    cfg.model.auxiliary_head.update(in_channels=64, channels=16)
    model = build_model(cfg)
    with pytest.raises(FileNotFoundError, match='model.backbone.init_cfg.checkpoint='):
        VMambaCheckHook().before_run(_runner(model, training=True))
    VMambaCheckHook().before_run(_runner(model, training=False))  # testing a full checkpoint needs no pretrained


def test_matching_checkpoint_passes_and_other_heads_are_listed(fixture_det):
    model = build_model(Config.fromfile(fixture_det.config))
    hook = VMambaCheckHook()
    runner = types.SimpleNamespace(model=model)
    hook.after_load_checkpoint(runner, {'state_dict': dict(fixture_det.state_dict)})
    partial = {k: v for k, v in fixture_det.state_dict.items() if not k.startswith('roi_head.')}
    with pytest.raises(ValueError, match=r'missing keys \(\d+\): roi_head\.'):
        hook.after_load_checkpoint(runner, {'state_dict': partial})
    VMambaCheckHook(strict_load=False).after_load_checkpoint(runner, {'state_dict': partial})
