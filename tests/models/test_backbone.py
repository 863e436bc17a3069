"""The mmdet-style backbone contract of VMamba (shapes, freezing, checkpointing, gradients, layouts, errors)."""
import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.config import Config
from mmseg.registry import MODELS as MMSEG_MODELS

from mmvmamba import VMamba
from mmvmamba.models import ARCH_SETTINGS

# Small versions of the released families (the full presets cost seconds per forward on a CPU).
SMALL = dict(dims=16, depths=(1, 1, 2, 1))
V2_SMALL = dict(arch='tiny', **SMALL)
VANILLA_SMALL = dict(arch='vanilla-tiny', **SMALL)


def _pair_of_layouts(arch: str):
    channel_first = VMamba(arch=arch, **SMALL, channel_first=True).eval()
    channel_last = VMamba(arch=arch, **SMALL, channel_first=False).eval()
    channel_last.load_state_dict(channel_first.state_dict(), strict=True)
    return channel_first, channel_last


@pytest.mark.parametrize('kwargs', [V2_SMALL, VANILLA_SMALL], ids=['v2', 'vanilla'])
@pytest.mark.parametrize('size', [(224, 224), (511, 511), (112, 137), (33, 17)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_output_shapes(kwargs, size):
    model = VMamba(**kwargs).eval()
    height, width = size
    with torch.no_grad():
        outs = model(torch.randn(1, 3, height, width))
    assert len(outs) == 4
    for i, out in enumerate(outs):
        if kwargs['arch'] == 'tiny':  # overlapping stem and conv downsampling: ceil(/2) at every step
            expected = (height, width)
            for _ in range(i + 2):
                expected = (-(-expected[0] // 2), -(-expected[1] // 2))
        else:  # patch stem floors, merging pads to even
            expected = (height // 4, width // 4)
            for _ in range(i):
                expected = (-(-expected[0] // 2), -(-expected[1] // 2))
        assert out.shape == (1, 16 * 2**i, *expected)
        assert out.is_contiguous()


def test_out_indices_subset():
    model = VMamba(**V2_SMALL, out_indices=(1, 3)).eval()
    outs = model(torch.randn(2, 3, 64, 48))
    assert [o.shape[1] for o in outs] == [32, 128]
    assert not hasattr(model, 'outnorm0') and hasattr(model, 'outnorm3')


@pytest.mark.parametrize('arch', ['tiny', 'vanilla-tiny'])
def test_layouts_agree(arch):
    channel_first, channel_last = _pair_of_layouts(arch)
    x = torch.randn(2, 3, 45, 38)
    with torch.no_grad():
        for a, b in zip(channel_first(x), channel_last(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_channel_first_accepts_conv_shaped_linear_weights():
    channel_first, _ = _pair_of_layouts('tiny')
    state = {k: (v[:, :, None, None] if k.endswith(('in_proj.weight', 'out_proj.weight', 'fc1.weight')) else v)
             for k, v in channel_first.state_dict().items()}
    reloaded = VMamba(**V2_SMALL).eval()
    reloaded.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(channel_first(x), reloaded(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert state['layers.0.blocks.0.op.in_proj.weight'].dim() == 4  # the caller's dict was not modified


@pytest.mark.parametrize('frozen_stages', [0, 1, 2, 4])
def test_frozen_stages_stay_frozen_through_train(frozen_stages):
    model = VMamba(**V2_SMALL, frozen_stages=frozen_stages)
    model.train()
    frozen = [model.patch_embed] + [model.layers[i] for i in range(frozen_stages)]
    frozen += [getattr(model, f'outnorm{i}') for i in range(frozen_stages)]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    trainable = [model.layers[i] for i in range(frozen_stages, 4)]
    for module in trainable:
        assert module.training
        assert all(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize('kwargs', [V2_SMALL, VANILLA_SMALL], ids=['v2', 'vanilla'])
def test_every_parameter_gets_a_gradient(kwargs):
    model = VMamba(**kwargs, drop_path_rate=0.0).train()
    outs = model(torch.randn(2, 3, 40, 36))
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f'parameters without a finite gradient: {missing}'
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


def test_with_cp_gives_the_same_outputs_and_gradients():
    plain = VMamba(**V2_SMALL, drop_path_rate=0.0).train()
    checkpointed = VMamba(**V2_SMALL, drop_path_rate=0.0, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 40)
    grads = []
    for model in (plain, checkpointed):
        outs = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        if model is plain:
            ref_outs = [o.detach() for o in outs]
        else:
            for a, b in zip(ref_outs, outs):
                torch.testing.assert_close(a, b.detach())
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_drop_path_schedule_is_linear_over_all_blocks():
    model = VMamba(**V2_SMALL, drop_path_rate=0.5)
    rates = [block.drop_path.drop_prob for layer in model.layers for block in layer.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.5, len(rates)))


def test_builds_on_the_meta_device_like_on_the_cpu():
    """Large models are built on 'meta' before weights are loaded: nothing in __init__ may read tensor values.
    Run in a fresh interpreter: after the torch.compile tests of tests/kernels/test_api.py (which run with
    tests/kernels/conftest.py's patched torch.empty), torch.empty inside ``torch.device('meta')`` makes CPU
    tensors for the rest of that process, while torch.arange still makes meta ones (the cause inside torch is not
    pinned down)."""
    script = textwrap.dedent(f"""
        import torch
        from mmvmamba import VMamba
        kwargs = {dict(V2_SMALL, drop_path_rate=0.5)!r}
        with torch.device('meta'):
            meta_model = VMamba(**kwargs)
        cpu_model = VMamba(**kwargs)
        assert all(p.is_meta for p in meta_model.parameters())
        assert {{k: v.shape for k, v in meta_model.state_dict().items()}} == {{
            k: v.shape for k, v in cpu_model.state_dict().items()}}
        rates = [[block.drop_path.drop_prob for layer in m.layers for block in layer.blocks]
                 for m in (meta_model, cpu_model)]
        assert rates[0] == rates[1], rates
        print('ok')
        """)
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-3000:]


@pytest.mark.parametrize('name', sorted(ARCH_SETTINGS))
def test_every_preset_builds(name):
    model = VMamba(arch=name)
    assert model.dims == ARCH_SETTINGS[name]['dims']
    assert [len(layer.blocks) for layer in model.layers] == list(ARCH_SETTINGS[name]['depths'])


def test_custom_arch_dict():
    arch = dict(ARCH_SETTINGS['tiny'], dims=8, depths=(1, 1, 1, 1))
    model = VMamba(arch=arch)
    assert model.dims == (8, 16, 32, 64)


@pytest.mark.parametrize('registry', [MMDET_MODELS, MMSEG_MODELS], ids=['mmdet', 'mmseg'])
def test_builds_from_a_config_with_custom_imports(registry, tmp_path):
    config = tmp_path / 'backbone.py'
    config.write_text("custom_imports = dict(imports=['mmvmamba'], allow_failed_imports=False)\n"
                      "backbone = dict(type='mmvmamba.VMamba', arch='tiny', dims=16, depths=(1, 1, 2, 1))\n")
    cfg = Config.fromfile(str(config))
    model = registry.build(copy.deepcopy(cfg.backbone))
    assert isinstance(model, VMamba)


# ---- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('shape,match', [
    ((3, 32, 32), '4-D'),
    ((1, 1, 3, 32, 32), '4-D'),
    ((1, 4, 32, 32), '3 input channels, got 4'),
])
def test_bad_input_raises(shape, match):
    with pytest.raises(ValueError, match=match):
        VMamba(**V2_SMALL)(torch.randn(*shape))


def test_too_small_for_patch_stem():
    with pytest.raises(ValueError, match='H and W >= 4'):
        VMamba(**VANILLA_SMALL)(torch.randn(1, 3, 3, 32))


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: .*'tiny'"):
        VMamba(arch='huge')


@pytest.mark.parametrize('kwargs,match', [
    (dict(stem='v2'), "stem must be one of \\('patch', 'overlap'\\)"),
    (dict(downsample='v3'), "downsample must be one of \\('merge', 'conv'\\)"),
    (dict(out_indices=(4, )), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(arch=dict(dims=8)), 'must define'),
    (dict(arch=dict(ARCH_SETTINGS['tiny'], colour='red')), "unknown arch fields \\['colour'\\]"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VMamba(**kwargs)


def test_unknown_keyword_raises():
    with pytest.raises(ValueError, match='unknown arch fields'):
        VMamba(arch='tiny', colour='red')


@pytest.mark.parametrize('kwargs,match', [
    (dict(forward_type='v9'), "forward_type='v9' is not supported; supported: .*'v05_noz'"),
    (dict(downsample_version='v3', norm_layer='bn'), "norm_layer='bn'"),
    (dict(downsample_version='v3', patchembed_version='v7'), 'patchembed_version'),
    (dict(downsample_version='v3', gmlp=True), 'gmlp'),
    (dict(downsample_version='v3', colour='red'), "unknown arguments \\['colour'\\]"),
    # without Swin leftovers an init_cfg is the user's own: it cannot be combined with pretrained
    (dict(downsample_version='v3', pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth')),
     'either pretrained .* or init_cfg'),
])
def test_official_kwargs_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MMDET_MODELS.build(dict(type='MM_VSSM', **kwargs))


def test_official_pretrained_must_be_a_path():
    with pytest.raises(TypeError, match='pretrained must be a checkpoint path'):
        MMDET_MODELS.build(dict(type='MM_VSSM', downsample_version='v3', pretrained=123))
