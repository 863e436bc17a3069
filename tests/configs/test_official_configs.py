"""The official VMamba det/seg configs run unchanged with ``type='MM_VSSM'`` (issue #14).

The official configs (MzeroMiko/VMamba ``detection/configs/vssm{,1}``, ``segmentation/configs/vssm{,1}``) inherit a
stock Swin config and set only ``type='MM_VSSM'`` and the official keyword arguments, without ``_delete_``: the
backbone dict keeps the Swin arguments of the base and its Swin ``init_cfg``. The configs here have that form, on
mmdet's and mmseg's own Swin configs, with the official keyword arguments of every released variant.
"""
import json
import logging

import pytest
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.structures import PixelData
from mmseg.registry import MODELS as MMSEG_MODELS
from mmseg.structures import SegDataSample

import mmvmamba.models.backbones.vmamba as vmamba_module
from mmvmamba import VMamba
from mmvmamba.models.backbones import translate_official_kwargs
from mmvmamba.models.backbones.vmamba_arch import resolve_arch
from tests.paths import manifests_dir

DET_1X = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
DET_3X = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
SEG = {size: f'mmseg::swin/swin-{size}-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
       for size in ('tiny', 'small', 'base')}
BASE_IDS = {DET_1X: 'det-1x', DET_3X: 'det-3x', **{base: f'seg-{size}' for size, base in SEG.items()}}
# What the stock bases leave in the backbone dict besides the official keywords (mmdet's / mmseg's SwinTransformer).
DET_SWIN_IGNORED = ['attn_drop_rate', 'convert_weights', 'drop_rate', 'embed_dims', 'num_heads', 'qk_scale',
                    'qkv_bias', 'window_size']
SEG_SWIN_IGNORED = ['act_cfg', 'attn_drop_rate', 'drop_rate', 'embed_dims', 'norm_cfg', 'num_heads',
                    'pretrain_img_size', 'qk_scale', 'qkv_bias', 'strides', 'use_abs_pos_embed', 'window_size']

# Official keyword arguments of the released det/seg backbones, as the official configs write them.
V2 = dict(ssm_d_state=1, ssm_dt_rank='auto', ssm_conv=3, ssm_conv_bias=False, forward_type='v05_noz', mlp_ratio=4.0,
          downsample_version='v3', patchembed_version='v2', norm_layer='ln2d')
VANILLA = dict(ssm_d_state=16, ssm_dt_rank='auto', ssm_ratio=2.0, mlp_ratio=0.0, downsample_version='v1',
               patchembed_version='v1')
# variant (the manifest's name): official kwargs, our preset, the bases of its released det/seg configs
VARIANTS = {
    'tiny_s1l8': (dict(dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, drop_path_rate=0.2, **V2), 'tiny',
                  [DET_1X, DET_3X, SEG['tiny']]),
    'small_s2l15': (dict(dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.3, **V2), 'small',
                    [DET_1X, DET_3X, SEG['small']]),
    'base_s2l15': (dict(dims=128, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.6, **V2), 'base',
                   [DET_1X, SEG['base']]),
    'tiny_s2l5': (dict(dims=96, depths=(2, 2, 5, 2), ssm_ratio=2.0, drop_path_rate=0.2, **V2), 'tiny-s2l5',
                  [DET_1X, DET_3X, SEG['tiny']]),
    'vanilla_tiny': (dict(dims=96, depths=(2, 2, 9, 2), **VANILLA), 'vanilla-tiny', [DET_1X, DET_3X, SEG['tiny']]),
    'vanilla_small': (dict(dims=96, depths=(2, 2, 27, 2), **VANILLA), 'vanilla-small',
                      [DET_1X, DET_3X, SEG['small']]),
    'vanilla_base': (dict(dims=128, depths=(2, 2, 27, 2), **VANILLA), 'vanilla-base', [DET_1X, SEG['base']]),
}
# One loss step per variant, at this size (the other official kwargs unchanged) on INPUT_SIZE images, on one of
# its bases: together they cover both families on both tasks and every base.
REDUCED = dict(dims=16, depths=(1, 1, 2, 1))
INPUT_SIZE = 32
LOSS_STEP_BASES = {'tiny_s1l8': DET_1X, 'small_s2l15': SEG['small'], 'base_s2l15': SEG['base'], 'tiny_s2l5': DET_3X,
                   'vanilla_tiny': SEG['tiny'], 'vanilla_small': DET_3X, 'vanilla_base': DET_1X}


def _is_det(base: str) -> bool:
    return base.startswith('mmdet::')


def write_official_config(folder, base: str, backbone: dict, pretrained='') -> Config:
    """An official-style config: the stock base, ``type='MM_VSSM'`` and the official kwargs, no ``_delete_``."""
    dims = backbone['dims']
    channels = [dims, dims * 2, dims * 4, dims * 8]
    if _is_det(base):
        heads = f'    neck=dict(in_channels={channels!r}),\n'
    else:
        heads = (f'    decode_head=dict(in_channels={channels!r}),\n'
                 f'    auxiliary_head=dict(in_channels={channels[2]}),\n')
    kwargs = ''.join(f'        {name}={value!r},\n' for name, value in backbone.items())
    path = folder / f'official_{len(list(folder.glob("*.py")))}.py'
    path.write_text(f'_base_ = [{base!r}]\n'
                    "custom_imports = dict(imports=['mmvmamba'], allow_failed_imports=False)\n"
                    'model = dict(\n'
                    '    backbone=dict(\n'
                    "        type='MM_VSSM',\n"
                    '        out_indices=(0, 1, 2, 3),\n'
                    f'        pretrained={pretrained!r},\n'
                    f'{kwargs}'
                    '    ),\n'
                    f'{heads})\n')
    return Config.fromfile(path)


def registry_of(base: str):
    return MMDET_MODELS if _is_det(base) else MMSEG_MODELS


@pytest.fixture(scope='module', autouse=True)
def _registered():
    from mmdet.utils import register_all_modules as register_mmdet
    from mmseg.utils import register_all_modules as register_mmseg
    register_mmdet(init_default_scope=False)
    register_mmseg(init_default_scope=False)


class _Records(logging.Handler):

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_logged():
    """The WARNING messages of mmengine's current logger while the test runs."""
    logger = MMLogger.get_current_instance()
    handler = _Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.fixture
def loads(monkeypatch):
    """The checkpoint paths that ``VMamba.init_weights`` loads with our strict loader, in order."""
    paths = []
    original = vmamba_module.load_backbone_checkpoint

    def spy(model, path, **kwargs):
        paths.append(path)
        return original(model, path, **kwargs)

    monkeypatch.setattr(vmamba_module, 'load_backbone_checkpoint', spy)
    return paths


@pytest.mark.parametrize('variant', VARIANTS)
def test_release_configs_build_the_released_backbone(variant, tmp_path):
    """Each released config's merged backbone dict translates to our preset; the full-size backbone fits the
    released key/shape manifest."""
    official, preset, bases = VARIANTS[variant]
    backbones = [write_official_config(tmp_path, base, official).model.backbone for base in bases]
    for base, backbone in zip(bases, backbones):
        assert backbone.init_cfg.type == 'Pretrained'  # Swin's, inherited: what the configs must cope with
        kwargs = {k: v for k, v in backbone.items() if k not in ('type', '_scope_')}
        arch = resolve_arch(translate_official_kwargs(**kwargs)['arch'])
        # The vanilla configs do not set drop_path_rate: the merged dict holds the Swin base's (mmdet 0.2, mmseg
        # 0.3), and the official code trains with it, not with its constructor default 0.1.
        if 'drop_path_rate' not in official:
            assert backbone.drop_path_rate == (0.2 if _is_det(base) else 0.3), base
        assert arch == resolve_arch(preset, drop_path_rate=backbone.drop_path_rate), base
    model = registry_of(bases[0]).build(backbones[0])
    assert type(model).__name__ == 'OfficialVMamba' and isinstance(model, VMamba)
    assert model.init_cfg is None
    shapes = json.loads((manifests_dir() / f'manifest_{variant}.json').read_text())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == shapes


def _det_loss(model):
    packed = demo_mm_inputs(2, [(3, INPUT_SIZE, INPUT_SIZE)] * 2, num_items=[2, 1], num_classes=80, with_mask=True)
    data = model.data_preprocessor(packed, True)
    return model.loss(data['inputs'], data['data_samples'])


def _seg_loss(model):
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(INPUT_SIZE, INPUT_SIZE), pad_shape=(INPUT_SIZE, INPUT_SIZE)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, INPUT_SIZE, INPUT_SIZE)))
        samples.append(sample)
    # Straight to loss(): the base's data preprocessor pads every image to the 512x512 crop.
    return model.loss(torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE), samples)


@pytest.mark.parametrize('variant,base', LOSS_STEP_BASES.items(),
                         ids=[f'{variant}-{BASE_IDS[base]}' for variant, base in LOSS_STEP_BASES.items()])
def test_loss_step(variant, base, tmp_path, warnings_logged):
    official, _, bases = VARIANTS[variant]
    assert base in bases
    cfg = write_official_config(tmp_path, base, {**official, **REDUCED})
    if _is_det(base):  # fewer proposals and sampled RoIs than COCO training: the heads dominate a CPU step
        cfg.merge_from_dict({'model.train_cfg.rpn_proposal.max_per_img': 64, 'model.train_cfg.rcnn.sampler.num': 32})
    model = registry_of(base).build(cfg.model)
    assert len(warnings_logged) == 1 and 'ignoring the Swin arguments' in warnings_logged[0]
    model = revert_sync_batchnorm(model)  # the seg heads' SyncBN needs a process group
    model.init_weights()
    model.train()
    losses = _det_loss(model) if _is_det(base) else _seg_loss(model)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [name for name, p in model.backbone.named_parameters() if p.grad is None]
    assert not no_grad, f'backbone parameters without a gradient: {no_grad}'
    assert all(torch.isfinite(p.grad).all() for p in model.backbone.parameters())


@pytest.mark.parametrize('base,ignored', [(DET_1X, DET_SWIN_IGNORED), (DET_3X, DET_SWIN_IGNORED),
                                          (SEG['tiny'], SEG_SWIN_IGNORED)], ids=['det-1x', 'det-3x', 'seg-tiny'])
def test_one_warning_names_the_ignored_swin_keys(base, ignored, tmp_path, warnings_logged):
    cfg = write_official_config(tmp_path, base, {**VARIANTS['tiny_s1l8'][0], **REDUCED})
    swin_init_cfg = cfg.model.backbone.init_cfg
    model = registry_of(base).build(cfg.model.backbone)
    assert len(warnings_logged) == 1, warnings_logged
    message = warnings_logged[0]
    assert f'ignoring the Swin arguments {ignored}' in message
    assert f'init_cfg {swin_init_cfg!r}' in message
    assert 'with_cp' not in message  # honoured, not ignored
    assert model.init_cfg is None and model.with_cp is False


def test_unknown_key_still_raises(tmp_path):
    cfg = write_official_config(tmp_path, DET_1X, {**VARIANTS['tiny_s1l8'][0], **REDUCED, 'colour': 'red'})
    with pytest.raises(ValueError, match=r"MM_VSSM: unknown arguments \['colour'\]; known"):
        MMDET_MODELS.build(cfg.model.backbone)


@pytest.mark.parametrize('with_cp,use_checkpoint', [(True, False), (False, True), (False, False)])
def test_with_cp_and_use_checkpoint_switch_gradient_checkpointing(with_cp, use_checkpoint, tmp_path):
    backbone = {**VARIANTS['tiny_s1l8'][0], **REDUCED, 'with_cp': with_cp, 'use_checkpoint': use_checkpoint}
    model = MMDET_MODELS.build(write_official_config(tmp_path, DET_1X, backbone).model.backbone)
    assert model.with_cp is (with_cp or use_checkpoint)


@pytest.mark.parametrize('base,pretrained', [(DET_1X, ''), (SEG['tiny'], None)], ids=['det-empty', 'seg-None'])
def test_empty_pretrained_loads_nothing(base, pretrained, tmp_path, loads):
    """Nor the Swin base's checkpoint: its init_cfg is ignored (it would also need the network)."""
    cfg = write_official_config(tmp_path, base, {**VARIANTS['vanilla_tiny'][0], **REDUCED}, pretrained=pretrained)
    assert cfg.model.backbone.init_cfg.checkpoint.startswith('https://')
    model = registry_of(base).build(cfg.model)
    assert model.backbone.init_cfg is None
    model.init_weights()
    assert model.backbone.is_init and loads == []


def _save_backbone(path, official: dict) -> dict:
    """A classification-style checkpoint (``{'model': state_dict}``) of a small backbone whose every tensor is
    perturbed, so that no value equals a fresh initialisation (``A_logs``, ``Ds``, the norms are deterministic)."""
    generator = torch.Generator().manual_seed(1)
    state_dict = MMDET_MODELS.build(dict(type='MM_VSSM', **official)).state_dict()
    state_dict = {k: v + torch.randn(v.shape, generator=generator) for k, v in state_dict.items()}
    torch.save({'model': state_dict}, path)
    return state_dict


def _assert_loaded(backbone, saved: dict) -> None:
    state_dict = backbone.state_dict()
    assert list(state_dict) == list(saved)
    for name, value in state_dict.items():
        assert torch.equal(value, saved[name]), name


@pytest.mark.parametrize('base', [DET_1X, SEG['tiny']], ids=['det', 'seg'])
def test_pretrained_path_loads_through_the_strict_loader(base, tmp_path, loads):
    official = {**VARIANTS['tiny_s1l8'][0], **REDUCED}
    checkpoint = tmp_path / 'vmamba.pth'
    saved = _save_backbone(checkpoint, official)
    model = registry_of(base).build(write_official_config(tmp_path, base, official, pretrained=str(checkpoint)).model)
    assert model.backbone.init_cfg == dict(type='Pretrained', checkpoint=str(checkpoint))
    model.init_weights()
    assert loads == [str(checkpoint)]
    _assert_loaded(model.backbone, saved)


def test_segmentor_level_pretrained_reaches_the_backbone(tmp_path, loads):
    """mmseg's EncoderDecoder hands ``model.pretrained`` (None in the Swin base) to the backbone's ``pretrained``."""
    official = {**VARIANTS['tiny_s1l8'][0], **REDUCED}
    checkpoint = tmp_path / 'vmamba.pth'
    saved = _save_backbone(checkpoint, official)
    cfg = write_official_config(tmp_path, SEG['tiny'], official, pretrained=None)
    cfg.model.pretrained = str(checkpoint)
    model = MMSEG_MODELS.build(cfg.model)
    model.init_weights()
    assert loads == [str(checkpoint)]
    _assert_loaded(model.backbone, saved)


def test_pretrained_of_another_variant_raises_naming_the_keys(tmp_path):
    checkpoint = tmp_path / 'vanilla.pth'
    _save_backbone(checkpoint, {**VARIANTS['vanilla_tiny'][0], **REDUCED})
    official = {**VARIANTS['tiny_s1l8'][0], **REDUCED}
    model = MMDET_MODELS.build(write_official_config(tmp_path, DET_1X, official, pretrained=str(checkpoint)).model)
    with pytest.raises(ValueError, match='does not fit') as error:
        model.init_weights()
    for key in ('layers.0.blocks.0.norm2.weight', 'layers.0.downsample.reduction.weight',
                'layers.0.blocks.0.op.in_proj.weight: checkpoint (64, 16) vs model (16, 16)'):
        assert key in str(error.value)
