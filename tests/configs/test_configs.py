"""Every config in configs/det and configs/seg loads and builds its full model (no pretrained weights loaded)."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmvmamba
from mmvmamba.engine.hooks.check_hook import backbone_out_channels, check_channels
from mmvmamba.models.backbones.vmamba_arch import ARCH_SETTINGS

REPO = Path(__file__).resolve().parents[2]
DET_CONFIGS = sorted((REPO / 'configs' / 'det').glob('*.py'))
SEG_CONFIGS = sorted((REPO / 'configs' / 'seg').glob('*.py'))
RECIPE_VARIANTS = ('t', 's', 'b', 't-s2l5', 'vanilla-t', 'vanilla-s', 'vanilla-b')
# Classification checkpoint of each variant (spec 1.3) and the backbone's drop_path_rate in det and seg: the v2
# configs set the classification value (spec 1.2); the official vanilla ones set none and train with the value of
# the Swin base their backbone dict is merged into (mmdet's Swin-T 0.2, mmseg's Swin UperNet 0.3; see
# tests/configs/test_official_configs.py).
PRETRAINED = {
    't': ('vssm1_tiny_0230s_ckpt_epoch_264.pth', 0.2, 0.2), 's': ('vssm_small_0229_ckpt_epoch_222.pth', 0.3, 0.3),
    'b': ('vssm_base_0229_ckpt_epoch_237.pth', 0.6, 0.6), 't-s2l5': ('vssm_tiny_0230_ckpt_epoch_262.pth', 0.2, 0.2),
    'vanilla-t': ('vssmtiny_dp01_ckpt_epoch_292.pth', 0.2, 0.3),
    'vanilla-s': ('vssmsmall_dp03_ckpt_epoch_238.pth', 0.2, 0.3),
    'vanilla-b': ('vssmbase_dp06_ckpt_epoch_241.pth', 0.2, 0.3),
}


def _without_scope(cfg_dict) -> dict:
    """A config dict without the ``_scope_`` key that configs inherited from mmdet::/mmseg:: carry."""
    return {k: v for k, v in cfg_dict.items() if k != '_scope_'}


def _ids(paths):
    return [p.stem for p in paths]


def _build(cfg: Config, scope: str):
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS.build(cfg.model)


def test_every_variant_has_its_configs():
    names = {p.name for p in DET_CONFIGS + SEG_CONFIGS}
    for variant in RECIPE_VARIANTS:
        for name in (f'mask-rcnn_vmamba-{variant}_fpn_1x_coco.py', f'mask-rcnn_vmamba-{variant}_fpn_ms-3x_coco.py',
                     f'upernet_vmamba-{variant}_8xb2-160k_ade20k-512x512.py'):
            assert name in names


@pytest.mark.parametrize('path', DET_CONFIGS + SEG_CONFIGS, ids=_ids(DET_CONFIGS + SEG_CONFIGS))
def test_config_builds_model(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmvmamba'], allow_failed_imports=False)
    assert dict(type='mmvmamba.VMambaCheckHook') in cfg.custom_hooks
    scope = 'mmdet' if path.parent.name == 'det' else 'mmseg'
    assert cfg.default_scope == scope
    model = _build(cfg, scope)
    assert isinstance(model.backbone, mmvmamba.VMamba)
    assert not model.backbone.is_init  # built only: no weights were loaded
    check_channels(model, model.backbone)
    if scope == 'mmdet':
        assert list(model.neck.in_channels) == backbone_out_channels(model.backbone)


@pytest.mark.parametrize('variant', RECIPE_VARIANTS)
def test_det_recipe(variant):
    checkpoint, drop_path_rate, _ = PRETRAINED[variant]
    for schedule, epochs, milestones in (('1x', 12, [8, 11]), ('ms-3x', 36, [27, 33])):
        cfg = Config.fromfile(REPO / 'configs' / 'det' / f'mask-rcnn_vmamba-{variant}_fpn_{schedule}_coco.py')
        backbone = cfg.model.backbone
        assert backbone.init_cfg == dict(type='Pretrained', checkpoint=f'checkpoints/{checkpoint}')
        assert backbone.get('drop_path_rate', ARCH_SETTINGS[backbone.arch]['drop_path_rate']) == drop_path_rate
        assert _without_scope(cfg.optim_wrapper.optimizer) == dict(
            type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
        assert cfg.optim_wrapper.paramwise_cfg == dict(custom_keys={'norm': dict(decay_mult=0.)})
        assert cfg.optim_wrapper.get('clip_grad') is None
        assert cfg.train_cfg.max_epochs == epochs
        assert _without_scope(cfg.param_scheduler[0]) == dict(
            type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000)
        assert cfg.param_scheduler[1].milestones == milestones
        assert cfg.train_dataloader.batch_size == 2
        assert cfg.model.neck.out_channels == 256
        transforms = [t.type for t in cfg.train_dataloader.dataset.pipeline]
        assert ('RandomChoice' in transforms) == (schedule == 'ms-3x')


@pytest.mark.parametrize('variant', RECIPE_VARIANTS)
def test_seg_recipe(variant):
    checkpoint, _, drop_path_rate = PRETRAINED[variant]
    cfg = Config.fromfile(REPO / 'configs' / 'seg' / f'upernet_vmamba-{variant}_8xb2-160k_ade20k-512x512.py')
    backbone = cfg.model.backbone
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=f'checkpoints/{checkpoint}')
    assert backbone.get('drop_path_rate', ARCH_SETTINGS[backbone.arch]['drop_path_rate']) == drop_path_rate
    # fixed-size crops: replayed from CUDA graphs (inherited from the VMamba-T config by every variant)
    assert backbone.cuda_graph is True and not backbone.get('with_cp', False)
    assert _without_scope(cfg.optim_wrapper.optimizer) == dict(
        type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)
    assert cfg.optim_wrapper.paramwise_cfg == dict(custom_keys={'norm': dict(decay_mult=0.)})
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_cfg.val_interval == 16000
    assert [s.type for s in cfg.param_scheduler] == ['LinearLR', 'PolyLR']
    assert cfg.param_scheduler[0].end == 1500 and cfg.param_scheduler[1].power == 1.0
    assert cfg.model.decode_head.channels == 512 and cfg.model.decode_head.num_classes == 150
    assert cfg.model.auxiliary_head.in_index == 2 and cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert cfg.train_dataloader.batch_size == 2
    # mIoU(MS): --tta runs the multi-scale + flip pipeline
    assert cfg.tta_model.type == 'SegTTAModel'
    tta = cfg.tta_pipeline[1].transforms
    assert [t.scale_factor for t in tta[0]] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert [t.prob for t in tta[1]] == [0., 1.]
