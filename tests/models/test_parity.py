"""Parity with the official VMamba: every fixture made by the official code, through both registries.

A variant fixture holds the official constructor kwargs, a state dict, two inputs and the official outputs.
Checkpoint fixtures (``*_ckpt.pt``) are loaded through ``init_cfg`` and compared with their expected outputs.
"""
import pytest
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmseg.registry import MODELS as MMSEG_MODELS

import mmvmamba  # noqa: F401  registers MM_VSSM and mmvmamba.VMamba
from tests.paths import fixtures_dir

TOLERANCE = 5e-5  # official fp32 reruns differ by <= 9e-6; eps 1e-6 instead of 1e-5 already gives 1.1e-4


def _load(path):
    return torch.load(path, weights_only=True)


def _variant_files():
    files = sorted(fixtures_dir().glob('*.pt'))
    variants = [f for f in files if not f.stem.endswith(('_ckpt', '_expected'))]
    assert variants, f'no variant fixtures in {fixtures_dir()}'
    return variants


def _checkpoint_cases():
    """(checkpoint file, file with the expected outputs) pairs."""
    cases = []
    for ckpt in sorted(fixtures_dir().glob('*_ckpt.pt')):
        expected = ckpt.with_name(ckpt.stem + '_expected.pt')
        if not expected.exists():  # an mmdet-format checkpoint reproduces its variant fixture exactly
            variant = ckpt.stem.rsplit('_', 2)[0]
            expected = ckpt.with_name(variant + '.pt')
        assert expected.exists(), f'no expected outputs for {ckpt.name}'
        cases.append(pytest.param(ckpt, expected, id=ckpt.stem))
    assert cases, f'no checkpoint fixtures in {fixtures_dir()}'
    return cases


def _assert_outputs(model, fixture):
    model.eval()
    with torch.no_grad():
        for key_in, key_out in (('input', 'outputs'), ('input_odd', 'outputs_odd')):
            outs = model(fixture[key_in])
            assert isinstance(outs, tuple) and len(outs) == len(fixture[key_out])
            for stage, (out, ref) in enumerate(zip(outs, fixture[key_out])):
                assert out.shape == ref.shape, f'{key_in} stage {stage}: {out.shape} vs {ref.shape}'
                assert out.is_contiguous()
                err = (out - ref).abs().max().item()
                assert err <= TOLERANCE, f'{key_in} stage {stage}: max abs diff {err:.3g} > {TOLERANCE}'


@pytest.mark.parametrize('registry', [MMDET_MODELS, MMSEG_MODELS], ids=['mmdet', 'mmseg'])
@pytest.mark.parametrize('path', _variant_files(), ids=lambda p: p.stem)
def test_official_outputs(path, registry):
    fixture = _load(path)
    model = registry.build(dict(type='MM_VSSM', **fixture['config']))
    model.load_state_dict(fixture['state_dict'], strict=True)
    _assert_outputs(model, fixture)


@pytest.mark.parametrize('ckpt,expected', _checkpoint_cases())
def test_checkpoint_through_init_cfg(ckpt, expected):
    fixture = _load(expected)
    model = MMDET_MODELS.build(
        dict(type='MM_VSSM', **fixture['config'], init_cfg=dict(type='Pretrained', checkpoint=str(ckpt))))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    changed = [k for k, v in model.state_dict().items() if not k.startswith('outnorm') and torch.equal(v, before[k])]
    assert not changed, f'parameters not loaded from the checkpoint: {changed}'
    _assert_outputs(model, fixture)


@pytest.mark.parametrize('path', _variant_files(), ids=lambda p: p.stem)
def test_scoped_type_builds_the_same_model(path):
    """``mmvmamba.VMamba`` with translated options equals ``MM_VSSM`` with the official ones."""
    from mmvmamba.models.backbones import translate_official_kwargs
    fixture = _load(path)
    model = MMDET_MODELS.build(dict(type='mmvmamba.VMamba', **translate_official_kwargs(**fixture['config'])))
    model.load_state_dict(fixture['state_dict'], strict=True)
    _assert_outputs(model, fixture)
