"""The backbone on the GPU (Triton kernels) against the official fixtures: fp32 exact, autocast close and finite."""
import pytest
import torch
from mmengine.registry import MODELS  # MM_VSSM lives in the root registry; no mmdet/mmcv on the GPU machine

import mmvmamba  # noqa: F401  registers MM_VSSM
from tests.paths import fixtures_dir

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

FP32_TOLERANCE = 5e-5
# max|diff| / max|ref| against the fp32 fixture (the fixtures' weights are scaled up, which amplifies rounding)
AUTOCAST_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 8e-2}


def _variants():
    return [f for f in sorted(fixtures_dir().glob('*.pt')) if not f.stem.endswith(('_ckpt', '_expected'))]


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _model(fixture, device='cuda'):
    # no stochastic depth, so that training-mode runs on two devices compute the same function
    model = MODELS.build(dict(type='MM_VSSM', **{**fixture['config'], 'drop_path_rate': 0.0}))
    model.load_state_dict(fixture['state_dict'], strict=True)
    # eager: these check the kernels against the fixtures; test_gpu_compiled.py checks compiled against eager
    model.compiled_forward.setting = False
    return model.to(device).eval()


@pytest.mark.parametrize('dtype', [None, torch.float16, torch.bfloat16], ids=['fp32', 'fp16', 'bf16'])
@pytest.mark.parametrize('path', _variants(), ids=lambda p: p.stem)
def test_fixture_on_gpu(path, dtype, no_tf32, scan_launches):
    fixture = torch.load(path, weights_only=True)
    model = _model(fixture)
    for key_in, key_out in (('input', 'outputs'), ('input_odd', 'outputs_odd')):
        with torch.no_grad(), torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None):
            outs = model(fixture[key_in].cuda())
        for stage, (out, ref) in enumerate(zip(outs, fixture[key_out])):
            out = out.float().cpu()
            assert torch.isfinite(out).all()
            if dtype is None:
                err = (out - ref).abs().max().item()
                assert err <= FP32_TOLERANCE, f'{key_in} stage {stage}: {err:.3g}'
            else:
                rel = ((out - ref).abs().max() / ref.abs().max()).item()
                assert rel <= AUTOCAST_TOLERANCE[dtype], f'{key_in} stage {stage}: {rel:.3g}'
    assert scan_launches, 'the Triton scan never ran'


def test_gpu_training_step_matches_the_cpu_reference(no_tf32):
    """Gradients through the Triton path equal those of the pure-PyTorch path on the CPU."""
    fixture = torch.load(_variants()[0], weights_only=True)
    cpu, gpu = _model(fixture, 'cpu').train(), _model(fixture).train()
    x = fixture['input'][:1]
    for model, device in ((cpu, 'cpu'), (gpu, 'cuda')):
        outs = model(x.to(device))
        sum((o * torch.arange(o.numel(), device=device).view_as(o).sin()).sum() for o in outs).backward()
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        scale = p_cpu.grad.abs().max().item() + 1e-6
        err = (p_gpu.grad.cpu() - p_cpu.grad).abs().max().item() / scale
        assert err <= 1e-3, f'{name}: relative gradient error {err:.3g}'
