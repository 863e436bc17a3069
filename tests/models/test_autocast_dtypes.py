"""Under autocast the residual stream has the official models' dtype (that of nn.LayerNorm under CUDA autocast):
fp32 wherever the official stream starts at a LayerNorm, 16-bit where it starts at PatchMerging's linear; norms
that only feed a matmul write 16-bit."""
import pytest
import torch

from mmvmamba import VMamba
from mmvmamba.models.layers.layout import LayerNorm
from mmvmamba.models.layers.vss_block import VSSBlock

SMALL = dict(dims=16, depths=(1, 1, 2, 1), drop_path_rate=0.1)
F32, BF16 = torch.float32, torch.bfloat16


def _stream_dtypes(model: VMamba) -> tuple[list[list], list]:
    """[stage][block] (input dtype, output dtype) and the output dtypes, of a bf16-autocast training forward."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, (args[0].dtype,
                                                                                                out.dtype)))
             for name, m in model.named_modules() if isinstance(m, VSSBlock)]
    with torch.autocast('cpu', dtype=BF16):
        outs = model.train()(torch.randn(2, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    stages = [[seen[f'layers.{i}.blocks.{j}'] for j in range(len(layer.blocks))]
              for i, layer in enumerate(model.layers)]
    return stages, [o.dtype for o in outs]


@pytest.mark.parametrize('arch, stage_dtypes', [
    ('tiny', [F32, F32, F32, F32]),                  # v2: stem and conv downsamplers end in a LayerNorm
    ('tiny-s2l5', [F32, F32, F32, F32]),
    ('vanilla-tiny', [F32, BF16, BF16, BF16]),       # v1 stem ends in a LayerNorm; PatchMerging in a linear
])
def test_residual_stream_dtypes_under_autocast(arch, stage_dtypes):
    stages, outs = _stream_dtypes(VMamba(arch=arch, **SMALL))
    for i, (blocks, dtype) in enumerate(zip(stages, stage_dtypes)):
        assert blocks == [(dtype, dtype)] * len(blocks), f'stage {i}: {blocks}'
    assert outs == [F32] * 4  # outnorm*: LayerNorms


def test_norm_output_policies():
    x = torch.randn(4, 8, dtype=BF16)
    fp32, to_autocast = LayerNorm(8), LayerNorm(8, output='autocast')
    assert fp32(x).dtype == BF16 and to_autocast(x).dtype == BF16  # outside autocast: the input's dtype
    with torch.autocast('cpu', dtype=BF16):
        assert fp32(x.float()).dtype == F32 and fp32(x).dtype == F32
        assert to_autocast(x.float()).dtype == BF16
    with pytest.raises(ValueError, match='output must be one of'):
        LayerNorm(8, output='bf16')
