"""model-index.yml, the metafiles and docs/model_zoo.md list every released det/seg checkpoint with a config of
this repository that exists and builds (the build itself is in test_configs.py)."""
from pathlib import Path

import yaml
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[2]
RELEASES = 'https://github.com/MzeroMiko/VMamba/releases/download/'
# The released Mask R-CNN and UperNet files (spec section 1.3) and their release tags.
RELEASED = {
    'v2det': ['mask_rcnn_vssm_fpn_coco_tiny_s_epoch_12.pth', 'mask_rcnn_vssm_fpn_coco_tiny_ms_3x_s_epoch_31.pth',
              'mask_rcnn_vssm_fpn_coco_small_epoch_11.pth', 'mask_rcnn_vssm_fpn_coco_small_ms_3x_epoch_32.pth',
              'mask_rcnn_vssm_fpn_coco_base_epoch_11.pth', 'mask_rcnn_vssm_fpn_coco_base_epoch_12_bs8.pth',
              'mask_rcnn_vssm_fpn_coco_tiny_epoch_12.pth', 'mask_rcnn_vssm_fpn_coco_tiny_ms_3x_epoch_36.pth'],
    'v0det': ['vssmtiny_mask_rcnn_swin_fpn_coco_epoch_12.pth', 'vssmtiny_mask_rcnn_swin_fpn_coco_ms_3x_epoch_34.pth',
              'vssmsmall_mask_rcnn_swin_fpn_coco_epoch_12.pth', 'vssmsmall_mask_rcnn_swin_fpn_coco_ms_3x_epoch_34.pth',
              'vssmbase_mask_rcnn_swin_fpn_coco_epoch_12.pth'],
    'v2seg': ['upernet_vssm_4xb4-160k_ade20k-512x512_tiny_s_iter_160000.pth',
              'upernet_vssm_4xb4-160k_ade20k-512x512_small_iter_144000.pth',
              'upernet_vssm_4xb4-160k_ade20k-512x512_base_iter_160000.pth',
              'upernet_vssm_4xb4-160k_ade20k-512x512_tiny_iter_160000.pth'],
    'v0seg': ['vssmtiny_upernet_4xb4-160k_ade20k-512x512_iter_160000.pth',
              'vssmsmall_upernet_4xb4-160k_ade20k-512x512_iter_160000.pth',
              'vssmbase_upernet_4xb4-160k_ade20k-512x512_iter_128000.pth'],
}


def _models() -> list[dict]:
    index = yaml.safe_load((REPO / 'model-index.yml').read_text())
    models = []
    for metafile in index['Import']:
        models += yaml.safe_load((REPO / metafile).read_text())['Models']
    return models


def test_every_release_is_listed_once_with_its_config():
    models = _models()
    urls = sorted(m['Weights'] for m in models)
    assert urls == sorted(RELEASES + f'{tag}/{name}' for tag, names in RELEASED.items() for name in names)
    assert len({m['Name'] for m in models}) == len(models)
    for model in models:
        config = REPO / model['Config']
        assert config.is_file(), model['Config']
        Config.fromfile(config)
        is_det = '/det/' in model['Config']
        assert ('det' in model['Weights'].split('/')[-2]) == is_det
        metrics = {k for result in model['Results'] for k in result['Metrics']}
        assert metrics >= ({'box AP', 'mask AP'} if is_det else {'mIoU', 'mIoU(ms+flip)'})


def test_model_zoo_lists_every_release_and_an_evaluate_command():
    text = (REPO / 'docs' / 'model_zoo.md').read_text()
    for model in _models():
        name = model['Weights'].rsplit('/', 1)[1]
        assert model['Weights'] in text
        assert f"python tools/test.py {model['Config']} checkpoints/{name}" in text
