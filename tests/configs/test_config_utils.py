"""The config helpers of tools/train.py, tools/test.py and tools/demo.py."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmvmamba.engine.config_utils import (
    check_data_paths,
    enable_visualization,
    leaf_datasets,
    set_data_root,
    set_max_iters,
    task_of,
    use_amp,
)

REPO = Path(__file__).resolve().parents[2]
DEMO_DET = REPO / 'configs/det/mask-rcnn_vmamba-demo_fpn_shapes.py'
DEMO_SEG = REPO / 'configs/seg/upernet_vmamba-demo_shapes-128x128.py'


def test_task_of():
    assert task_of(Config.fromfile(DEMO_DET)) == 'det'
    assert task_of(Config.fromfile(DEMO_SEG)) == 'seg'
    with pytest.raises(ValueError, match='default_scope'):
        task_of(Config(dict(default_scope='mmpretrain')))


def test_use_amp():
    cfg = Config.fromfile(DEMO_SEG)
    use_amp(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 'dynamic'
    cfg.optim_wrapper.loss_scale = 512.0
    use_amp(cfg)  # idempotent; a configured scale is kept
    assert cfg.optim_wrapper.loss_scale == 512.0
    cfg.optim_wrapper.type = 'ApexOptimWrapper'
    with pytest.raises(ValueError, match='ApexOptimWrapper'):
        use_amp(cfg)


def test_leaf_datasets_look_through_wrappers():
    inner = [dict(type='A', ann_file='a.json'), dict(type='B', ann_file='b.json')]
    wrapped = dict(type='RepeatDataset', times=2, dataset=dict(type='ConcatDataset', datasets=inner))
    assert list(leaf_datasets(wrapped)) == [('dataset.dataset.datasets[0]', inner[0]),
                                            ('dataset.dataset.datasets[1]', inner[1])]


def test_set_max_iters_scales_the_schedule():
    cfg = Config.fromfile(DEMO_DET)  # 400 iterations: warm-up to 40, cosine 40 -> 400
    set_max_iters(cfg, 100)
    assert cfg.train_cfg.max_iters == 100 and cfg.train_cfg.val_interval == 100
    warmup, cosine = cfg.param_scheduler
    assert (warmup.begin, warmup.end) == (0, 10)
    assert (cosine.begin, cosine.end, cosine.T_max) == (10, 100, 90)
    assert cfg.default_hooks.checkpoint.interval == 100


@pytest.mark.parametrize('max_iters', [1, 2, 3])
def test_set_max_iters_keeps_every_scheduler_non_empty(max_iters):
    """A few iterations round the warm-up to zero length; mmengine refuses a scheduler whose end is not after begin."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS

    cfg = Config.fromfile(DEMO_SEG)  # 300 iterations: warm-up to 30, poly 30 -> 300
    set_max_iters(cfg, max_iters)
    optimizer = build_optim_wrapper(torch.nn.Linear(2, 2), dict(optimizer=dict(type='SGD', lr=0.1))).optimizer
    for scheduler in cfg.param_scheduler:
        assert 0 <= scheduler.begin < scheduler.end <= max_iters, scheduler
        PARAM_SCHEDULERS.build(dict(scheduler, optimizer=optimizer))


def test_set_data_root_and_check_data_paths(tmp_path):
    cfg = Config.fromfile(DEMO_DET)
    set_data_root(cfg, str(tmp_path / 'shapes'))
    assert cfg.train_dataloader.dataset.data_root == f'{tmp_path}/shapes/'
    assert cfg.val_evaluator.ann_file == f'{tmp_path}/shapes/annotations/instances_validation.json'
    with pytest.raises(FileNotFoundError) as error:
        check_data_paths(cfg)
    message = str(error.value)
    assert 'train_dataloader.dataset.ann_file' in message and 'val_evaluator.ann_file' in message
    assert 'train_dataloader.dataset.data_prefix.img' in message and '--cfg-options' in message


def test_enable_visualization(tmp_path):
    det, seg = Config.fromfile(DEMO_DET), Config.fromfile(DEMO_SEG)
    enable_visualization(det, str(tmp_path))
    enable_visualization(seg, str(tmp_path))
    assert det.default_hooks.visualization.draw and det.default_hooks.visualization.test_out_dir == str(tmp_path)
    assert seg.default_hooks.visualization.draw and seg.visualizer.save_dir == str(tmp_path)
