"""Parameter-wise optimizer settings of the VMamba configs and the layer-wise lr decay constructor."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from mmvmamba.engine.optimizers import vmamba_layer_id

REPO = Path(__file__).resolve().parents[2]
DEMO_SEG_CONFIG = REPO / 'configs' / 'seg' / 'upernet_vmamba-demo_shapes-128x128.py'
DEPTHS = (1, 1, 2, 1)


@pytest.fixture(scope='module')
def seg_model():
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    cfg = Config.fromfile(DEMO_SEG_CONFIG)
    return MODELS.build(cfg.model)


def _groups_by_name(model, optim_wrapper) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(g['params'][0])]: g for g in optim_wrapper.optimizer.param_groups}


def test_recipe_decay_exempts_only_norm_names(seg_model):
    cfg = Config.fromfile(REPO / 'configs/seg/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py')
    groups = _groups_by_name(seg_model, build_optim_wrapper(seg_model, cfg.optim_wrapper))
    assert groups['backbone.layers.0.blocks.0.norm.weight']['weight_decay'] == 0
    assert groups['backbone.layers.0.blocks.0.op.out_norm.weight']['weight_decay'] == 0
    assert groups['backbone.outnorm3.bias']['weight_decay'] == 0
    # As in the official recipe: the index-named stem/downsample LayerNorms and the SSM parameters keep decay.
    for name in ('backbone.layers.0.blocks.0.op.A_logs', 'backbone.layers.0.blocks.0.op.Ds',
                 'backbone.patch_embed.2.weight', 'backbone.patch_embed.7.weight',
                 'backbone.layers.0.downsample.3.weight'):
        assert groups[name]['weight_decay'] == 0.01, name


def test_documented_ssm_no_decay_option(seg_model):
    cfg = Config.fromfile(REPO / 'configs/seg/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py')
    cfg.merge_from_dict({'optim_wrapper.paramwise_cfg.custom_keys.A_logs': dict(decay_mult=0.),
                         'optim_wrapper.paramwise_cfg.custom_keys.Ds': dict(decay_mult=0.)})
    groups = _groups_by_name(seg_model, build_optim_wrapper(seg_model, cfg.optim_wrapper))
    assert groups['backbone.layers.2.blocks.1.op.A_logs']['weight_decay'] == 0
    assert groups['backbone.layers.2.blocks.1.op.Ds']['weight_decay'] == 0
    assert groups['backbone.layers.2.blocks.1.norm.weight']['weight_decay'] == 0
    assert groups['backbone.layers.2.blocks.1.op.in_proj.weight']['weight_decay'] == 0.01


def test_layer_ids():
    assert vmamba_layer_id('patch_embed.0.weight', DEPTHS) == 0
    assert vmamba_layer_id('layers.0.blocks.0.op.A_logs', DEPTHS) == 1
    assert vmamba_layer_id('outnorm0.weight', DEPTHS) == 1
    assert vmamba_layer_id('layers.0.downsample.0.weight', DEPTHS) == 2
    assert vmamba_layer_id('layers.2.blocks.1.norm.weight', DEPTHS) == 4
    assert vmamba_layer_id('layers.3.blocks.0.mlp.fc1.weight', DEPTHS) == 5
    assert vmamba_layer_id('outnorm3.bias', DEPTHS) == 5
    assert vmamba_layer_id('layers.2.blocks.1.norm.weight', DEPTHS, 'stage_wise') == 3
    assert vmamba_layer_id('layers.2.downsample.0.weight', DEPTHS, 'stage_wise') == 4
    with pytest.raises(ValueError, match='not a VMamba backbone parameter'):
        vmamba_layer_id('head.weight', DEPTHS)
    with pytest.raises(ValueError, match='decay_type'):
        vmamba_layer_id('outnorm0.weight', DEPTHS, 'block_wise')


@pytest.mark.parametrize('decay_type, top', [('layer_wise', 6), ('stage_wise', 5)])
def test_layer_decay_constructor(seg_model, decay_type, top):
    rate, lr, wd = 0.8, 1e-3, 0.05
    optim_wrapper = build_optim_wrapper(seg_model, dict(
        constructor='mmvmamba.VMambaLayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=lr, weight_decay=wd),
        paramwise_cfg=dict(decay_rate=rate, decay_type=decay_type, custom_keys={'norm': dict(decay_mult=0.)})))
    groups = _groups_by_name(seg_model, optim_wrapper)
    assert len(groups) == sum(p.requires_grad for p in seg_model.parameters())
    for name, group in groups.items():
        if name.startswith('backbone.'):
            layer_id = vmamba_layer_id(name[len('backbone.'):], DEPTHS, decay_type)
        else:
            layer_id = top
        assert group['layer_id'] == layer_id, name
        assert group['lr'] == pytest.approx(lr * rate**(top - layer_id)), name
        assert group['weight_decay'] == (0.0 if 'norm' in name else wd), name
    assert groups['decode_head.conv_seg.weight']['lr'] == pytest.approx(lr)
    assert groups['backbone.patch_embed.0.weight']['lr'] == pytest.approx(lr * rate**top)
    # custom lr_mult and layer decay compose
    optim_wrapper = build_optim_wrapper(seg_model, dict(
        constructor='mmvmamba.VMambaLayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=lr, weight_decay=wd),
        paramwise_cfg=dict(decay_rate=rate, decay_type=decay_type, custom_keys={'A_logs': dict(lr_mult=0.5)})))
    group = _groups_by_name(seg_model, optim_wrapper)['backbone.layers.0.blocks.0.op.A_logs']
    assert group['lr'] == pytest.approx(0.5 * lr * rate**(top - 1))


def test_layer_decay_constructor_checks_its_options(seg_model):
    with pytest.raises(ValueError, match='decay_rate'):
        build_optim_wrapper(seg_model, dict(constructor='mmvmamba.VMambaLayerDecayOptimWrapperConstructor',
                                            optimizer=dict(type='AdamW', lr=1e-3)))
    with pytest.raises(ValueError, match='decay_type'):
        build_optim_wrapper(seg_model, dict(constructor='mmvmamba.VMambaLayerDecayOptimWrapperConstructor',
                                            optimizer=dict(type='AdamW', lr=1e-3),
                                            paramwise_cfg=dict(decay_rate=0.9, decay_type='block_wise')))
