"""tools/analysis/train_compare.py turns the VMamba and Swin-T configs into shapes-data runs at the real input sizes."""
import pytest
from mmengine.runner import Runner

from mmvmamba.datasets.synthetic_shapes import generate_shapes_dataset


@pytest.mark.parametrize('task,size', [('det', (800, 1333)), ('seg', None)])
@pytest.mark.parametrize('model', ['vmamba-t', 'swin-t'])
def test_adapted_configs_build_and_load_data(load_tool, tmp_path, task, size, model):
    train_compare = load_tool('train_compare')
    root = str(generate_shapes_dataset(tmp_path / 'shapes', num_train=4, num_val=2))
    cfg = train_compare.adapt(train_compare.load_config(train_compare.CONFIGS[task][model]), task, root, iters=3,
                              amp=False, batch=2, work_dir=tmp_path / 'work')
    cfg.visualizer.name = f'test_train_compare_{task}_{model}'
    assert cfg.model.backbone.init_cfg is None and cfg.train_cfg.max_iters == 3
    runner = Runner.from_cfg(cfg)
    batch = next(iter(runner.build_dataloader(cfg.train_dataloader)))
    assert len(batch['inputs']) == 2
    if size:  # Mask R-CNN trains at the COCO size
        assert tuple(batch['inputs'][0].shape[1:]) == size
