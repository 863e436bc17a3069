"""Shared set-up of the end-to-end tests: one small generated dataset and a way to run the tools."""
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import save_checkpoint

from mmvmamba.datasets.synthetic_shapes import generate_shapes_dataset
from tests.paths import fixtures_dir

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / 'tools'
DEMO_DET_CONFIG = REPO / 'configs' / 'det' / 'mask-rcnn_vmamba-demo_fpn_shapes.py'
DEMO_SEG_CONFIG = REPO / 'configs' / 'seg' / 'upernet_vmamba-demo_shapes-128x128.py'
# Smaller than the demo's default (96/24) to keep CI short; every e2e test uses the same numbers.
NUM_TRAIN = 32
NUM_VAL = 8
FIXTURE = 'a_tiny_s1l8_ln2d.pt'


@pytest.fixture(scope='session')
def data_cwd(tmp_path_factory) -> Path:
    """A working directory whose data/shapes/ holds the generated dataset (the configs' default data root)."""
    cwd = tmp_path_factory.mktemp('e2e')
    generate_shapes_dataset(cwd / 'data' / 'shapes', num_train=NUM_TRAIN, num_val=NUM_VAL)
    return cwd


def run_tool(args: list, cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd``; with ``check`` a non-zero exit fails the test showing the output's tail."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f'{args} exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    return proc


def build_model(cfg: Config):
    """The detector or segmentor of ``cfg``, built with its library's registry (no weights loaded)."""
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS.build(cfg.model)


@pytest.fixture(scope='session')
def fixture_det(tmp_path_factory):
    """A config (the demo detector with the fixture's backbone, given as the official MM_VSSM kwargs) and an
    mmdet-format checkpoint of it: the fixture's backbone weights, the rest randomly initialised."""
    fixture = torch.load(fixtures_dir() / FIXTURE, map_location='cpu', weights_only=True)
    official = dict(fixture['config'])
    # one FPN input per backbone stage (the reduced fixtures in tests/data keep the first two stages)
    channels = [official['dims'] * 2**i for i in range(len(official['depths']))]
    folder = tmp_path_factory.mktemp('fixture_det')
    config = folder / 'mask-rcnn_fixture_fpn_shapes.py'
    config.write_text(f"_base_ = [{str(DEMO_DET_CONFIG)!r}]\n"
                      f"model = dict(\n"
                      f"    backbone=dict(_delete_=True, type='MM_VSSM', **{official!r}),\n"
                      f"    neck=dict(in_channels={channels!r}))\n")
    model = build_model(Config.fromfile(config))
    model.init_weights()
    model.backbone.load_state_dict(fixture['state_dict'], strict=True)
    checkpoint = folder / 'fixture_mask-rcnn.pth'
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_checkpoint({'meta': {'note': 'parity fixture backbone'}, 'state_dict': state_dict}, str(checkpoint))
    return types.SimpleNamespace(config=config, checkpoint=checkpoint, fixture=fixture, state_dict=state_dict)
