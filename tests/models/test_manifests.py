"""The released backbones' key/shape manifests load strictly into the matching presets."""
import json

import pytest
import torch

from mmvmamba import VMamba
from mmvmamba.checkpoint import convert_vmamba_official
from tests.paths import manifests_dir

# Backbone parameter counts (outnorms included) given in the specification for the main releases.
SPEC_PARAMETER_COUNTS = {
    'tiny-s1l8': 29_481_408,
    'small-s2l15': 49_380_096,
    'base-s2l15': 87_534_592,
    'vanilla-tiny': 22_125_792,
}


def _manifests():
    files = sorted(manifests_dir().glob('manifest_*.json'))
    assert files, f'no manifests in {manifests_dir()}'
    # manifest_tiny_s1l8.json -> preset 'tiny-s1l8', manifest_vanilla_base.json -> 'vanilla-base'
    return [pytest.param(f, f.stem.removeprefix('manifest_').replace('_', '-'), id=f.stem) for f in files]


@pytest.mark.parametrize('path,arch', _manifests())
def test_manifest_loads_strictly(path, arch):
    shapes = json.loads(path.read_text())
    state = {name: torch.zeros(shape) for name, shape in shapes.items()}
    model = VMamba(arch=arch)
    once, dropped = convert_vmamba_official({'model': state})
    twice, _ = convert_vmamba_official(once)
    assert not dropped and list(once) == list(twice) == list(shapes)
    model.load_state_dict(once, strict=True)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == shapes

    count = sum(p.numel() for p in model.parameters())
    assert count == sum(torch.Size(s).numel() for s in shapes.values())
    if arch in SPEC_PARAMETER_COUNTS:
        assert count == SPEC_PARAMETER_COUNTS[arch]
    assert not list(model.buffers())  # the released models have no buffers
