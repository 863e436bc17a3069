"""Checkpoint loading: official formats, the allow-listed unpickler, refusals, and mmengine's own checkpoints."""
import pickle
import runpy
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

from mmvmamba import VMamba
from mmvmamba.checkpoint import convert_vmamba_official, register_checkpoint_safe_globals, safe_load
from mmvmamba.models.backbones import translate_official_kwargs
from tests.paths import REPO_ROOT, fixtures_dir

PARITY_TOLERANCE = 5e-5  # as tests/models/test_parity.py: official fp32 reruns differ by <= 9e-6

SMALL = dict(arch='tiny', dims=16, depths=(1, 1, 2, 1))


def _model(**kwargs) -> VMamba:
    return VMamba(**SMALL, **kwargs).eval()


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


def _load_via_init_cfg(path, **cfg) -> VMamba:
    model = _model(init_cfg=dict(type='Pretrained', checkpoint=str(path), **cfg))
    model.init_weights()
    return model.eval()


def _classification_state(model: VMamba) -> dict:
    """The state dict a classification VSSM would save: no outnorms, a classifier."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith('outnorm')}
    state['classifier.norm.weight'] = torch.ones(128)
    state['classifier.head.weight'] = torch.zeros(10, 128)
    return state


def test_classification_checkpoint_with_a_pickled_yacs_config(tmp_path, monkeypatch):
    """The released files pickle a yacs CfgNode; it loads as inert data without yacs installed."""
    source = _model()
    yacs, yacs_config = types.ModuleType('yacs'), types.ModuleType('yacs.config')
    cfg_node = type('CfgNode', (dict, ), {'__module__': 'yacs.config'})
    yacs_config.CfgNode, yacs.config = cfg_node, yacs_config
    monkeypatch.setitem(sys.modules, 'yacs', yacs)
    monkeypatch.setitem(sys.modules, 'yacs.config', yacs_config)
    config = cfg_node(MODEL=cfg_node(NAME='vssm'), TRAIN=cfg_node(EPOCHS=300))
    config.__dict__['__immutable__'] = True
    path = tmp_path / 'cls.pth'
    torch.save({'model': _classification_state(source), 'config': config, 'epoch': 3}, path)
    monkeypatch.delitem(sys.modules, 'yacs')
    monkeypatch.delitem(sys.modules, 'yacs.config')

    loaded = safe_load(path)
    assert isinstance(loaded['config'], dict) and loaded['config']['MODEL']['NAME'] == 'vssm'
    model = _load_via_init_cfg(path)
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(_outputs(source, x), _outputs(model, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'

    class Payload:

        def __reduce__(self):
            return (Path.touch, (marker, ))

    path = tmp_path / 'evil.pth'
    torch.save({'model': _model().state_dict(), 'extra': Payload()}, path)
    with pytest.raises(ValueError, match='allow-list'):
        _load_via_init_cfg(path)
    assert not marker.exists()


def test_use_ema_takes_model_ema(tmp_path):
    plain, ema = _model(), _model()
    path = tmp_path / 'ema.pth'
    torch.save({'model': _classification_state(plain), 'model_ema': _classification_state(ema)}, path)
    x = torch.randn(1, 3, 24, 24)
    for ref, use_ema in ((plain, False), (ema, True)):
        got = _outputs(_load_via_init_cfg(path, use_ema=use_ema), x)
        for a, b in zip(_outputs(ref, x), got):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_use_ema_without_model_ema_raises(tmp_path):
    path = tmp_path / 'no_ema.pth'
    torch.save({'model': _model().state_dict()}, path)
    with pytest.raises(KeyError, match='model_ema'):
        _load_via_init_cfg(path, use_ema=True)


def test_a_checkpoint_of_another_variant_lists_the_mismatches(tmp_path):
    path = tmp_path / 'vanilla.pth'
    torch.save({'model': VMamba(arch='vanilla-tiny', dims=16, depths=(1, 1, 2, 1)).state_dict()}, path)
    with pytest.raises(ValueError, match='another variant') as err:
        _load_via_init_cfg(path)
    assert 'layers.0.blocks.0.op.in_proj.weight' in str(err.value)
    assert 'layers.0.blocks.0.mlp.fc1.weight' in str(err.value)  # missing: vanilla has no MLP
    assert any(str(path) in note for note in err.value.__notes__)


@pytest.mark.parametrize('change', ['missing', 'unexpected'])
def test_missing_or_unexpected_keys_are_listed(tmp_path, change):
    state = _model().state_dict()
    if change == 'missing':
        del state['layers.1.blocks.0.op.A_logs']
        key = 'layers.1.blocks.0.op.A_logs'
    else:
        key = 'layers.1.blocks.0.op.extra'
        state[key] = torch.zeros(1)
    path = tmp_path / 'broken.pth'
    torch.save({'state_dict': state}, path)
    with pytest.raises(ValueError, match=f'{change} keys \\(1\\): \\[.{key}.\\]'):
        _load_via_init_cfg(path)


def test_outnorms_of_unused_stages_are_not_an_error(tmp_path):
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in _model().state_dict().items()}}, path)
    model = VMamba(**SMALL, out_indices=(2, 3), init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()


@pytest.mark.parametrize('order', ['pretrained-first', 'pretrained-last'])
def test_list_init_cfg_applies_the_other_entries_then_loads_the_checkpoint(tmp_path, order):
    """mmengine's list form: the checkpoint is loaded after the other entries, whatever their order."""
    source = _model()
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in source.state_dict().items()}}, path)
    entries = [dict(type='Pretrained', checkpoint=str(path)), dict(type='Constant', layer='Conv2d', val=0.5, bias=0.)]
    model = _model(init_cfg=entries if order == 'pretrained-first' else entries[::-1])
    model.init_weights()
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(_outputs(source, x), _outputs(model.eval(), x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_list_init_cfg_without_a_checkpoint_is_mmengine_s():
    model = _model(init_cfg=[dict(type='Constant', layer='Conv2d', val=0.5, bias=0.)])
    model.init_weights()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(bool((m.weight == 0.5).all()) for m in convs)


def test_list_init_cfg_with_two_checkpoints_raises(tmp_path):
    entry = dict(type='Pretrained', checkpoint=str(tmp_path / 'a.pth'))
    with pytest.raises(ValueError, match='2 Pretrained entries'):
        _model(init_cfg=[entry, entry]).init_weights()


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        _load_via_init_cfg(tmp_path / 'nope.pth')


def test_legacy_names_are_renamed():
    legacy = {
        'patch_embed.proj.weight': torch.zeros(1),
        'patch_embed.norm.bias': torch.zeros(1),
        'layers.2.blocks.11.ln_1.weight': torch.zeros(1),
        'layers.2.blocks.11.self_attention.A_logs': torch.zeros(1),
        'layers.0.downsample.reduction.weight': torch.zeros(2, 4),
        'norm.weight': torch.zeros(1),
        'head.bias': torch.zeros(1),
    }
    converted, dropped = convert_vmamba_official({'model': legacy})
    assert list(converted) == [
        'patch_embed.0.weight', 'patch_embed.2.bias', 'layers.2.blocks.11.norm.weight',
        'layers.2.blocks.11.op.A_logs', 'layers.0.downsample.reduction.weight'
    ]
    assert dropped == ['classifier.head.bias', 'classifier.norm.weight']


def test_conversion_is_idempotent_and_unwraps_module_prefix():
    state = {'module.backbone.' + k: v for k, v in _model().state_dict().items()}
    state['module.neck.conv.weight'] = torch.zeros(1)
    once, _ = convert_vmamba_official({'state_dict': state})
    twice, _ = convert_vmamba_official(once)
    assert list(once) == list(twice) == list(_model().state_dict())


def _convert_with_tool(src: Path, dst: Path, *options: str) -> None:
    """tools/convert_official_ckpt.py SRC DST, run as a script in this process."""
    argv = sys.argv
    sys.argv = [str(REPO_ROOT / 'tools' / 'convert_official_ckpt.py'), str(src), str(dst), *options]
    try:
        runpy.run_path(sys.argv[0], run_name='__main__')
    finally:
        sys.argv = argv


@pytest.mark.parametrize('checkpoint, expected', [
    ('a_tiny_s1l8_ln2d_cls_ckpt.pt', 'a_tiny_s1l8_ln2d_cls_ckpt_expected.pt'),
    ('c_vanilla_v0_ln_cls_legacy_ckpt.pt', 'c_vanilla_v0_ln_cls_legacy_ckpt_expected.pt'),
    ('a_tiny_s1l8_ln2d_det_ckpt.pt', 'a_tiny_s1l8_ln2d.pt'),
], ids=['classification', 'legacy-names', 'mmdet'])
def test_converter_tool_output_loads_strictly_and_reproduces_the_official_outputs(tmp_path, checkpoint, expected):
    """The converted file holds exactly the backbone's tensors (a classification file has no out-norms, which the
    backbone then keeps at weight 1 / bias 0, as the official loader does), and the official outputs follow."""
    dst = tmp_path / 'out' / 'vmamba.pth'
    _convert_with_tool(fixtures_dir() / checkpoint, dst)
    state = torch.load(dst, weights_only=True)
    reference = torch.load(fixtures_dir() / expected, weights_only=True)
    model = VMamba(**translate_official_kwargs(**reference['config'])).eval()
    outnorms = {key for key in model.state_dict() if key.startswith('outnorm')}
    if checkpoint.endswith('_det_ckpt.pt'):
        model.load_state_dict(state, strict=True)
    else:
        assert set(model.state_dict()) - set(state) == outnorms and set(state) <= set(model.state_dict())
        model.load_state_dict({**{key: model.state_dict()[key] for key in outnorms}, **state}, strict=True)
    with torch.no_grad():
        for key_in, key_out in (('input', 'outputs'), ('input_odd', 'outputs_odd')):
            for stage, (out, ref) in enumerate(zip(model(reference[key_in]), reference[key_out], strict=True)):
                err = (out - ref).abs().max().item()
                assert err <= PARITY_TOLERANCE, f'{key_in} stage {stage}: max abs diff {err:.3g}'


def test_converter_tool_never_overwrites(tmp_path):
    src, dst = tmp_path / 'cls.pth', tmp_path / 'vmamba.pth'
    torch.save({'model': _classification_state(_model())}, src)
    dst.write_bytes(b'keep me')
    with pytest.raises(SystemExit, match='exists; pass --force'):
        _convert_with_tool(src, dst)
    assert dst.read_bytes() == b'keep me'
    _convert_with_tool(src, dst, '--force')
    assert set(torch.load(dst, weights_only=True)) == set(_model().state_dict()) - {
        f'outnorm{i}.{name}' for i in range(4) for name in ('weight', 'bias')}


def test_released_det_fixture_converts_to_the_variant_state_dict():
    fixture = torch.load(fixtures_dir() / 'a_tiny_s1l8_ln2d.pt', weights_only=True)
    det = safe_load(fixtures_dir() / 'a_tiny_s1l8_ln2d_det_ckpt.pt')
    converted, _ = convert_vmamba_official(det)
    assert list(converted) == list(fixture['state_dict'])
    assert all(torch.equal(converted[k], v) for k, v in fixture['state_dict'].items())


# ---- mmengine's own checkpoints: written by a Runner, read back by mmengine with torch's weights_only default ----


class _Detector(BaseModel):

    def __init__(self):
        super().__init__()
        self.backbone = VMamba(**SMALL)
        self.head = nn.Linear(128, 1)

    def forward(self, inputs, mode='tensor'):
        feats = self.backbone(torch.stack(inputs))
        out = self.head(feats[-1].mean((2, 3)))
        return dict(loss=out.square().mean()) if mode == 'loss' else out


class _Images(Dataset):

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return dict(inputs=torch.randn(3, 32, 32))


def _runner(work_dir, max_iters, **kwargs):
    return Runner(
        model=_Detector(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=_Images(), sampler=dict(type='DefaultSampler', shuffle=True), batch_size=2,
                              num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        param_scheduler=dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        **kwargs)


@pytest.fixture
def allow_list():
    """mmvmamba's allow-list registered process-wide (as tools/train.py and tools/test.py do) for one test; torch's
    allow-list is restored afterwards."""
    before = torch.serialization.get_safe_globals()
    register_checkpoint_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)


def _pickle_of(path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(name for name in archive.namelist() if name.endswith('/data.pkl')))


def test_mmengine_checkpoints_load_and_resume_with_weights_only(tmp_path, allow_list):
    _runner(tmp_path, max_iters=2).train()
    path = tmp_path / 'iter_2.pth'
    assert b'numpy' in _pickle_of(path) and b'HistoryBuffer' in _pickle_of(path)
    registered = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:  # without mmvmamba's allow-list, torch refuses the file mmengine just wrote
        with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
            torch.load(path, weights_only=True)
    finally:
        torch.serialization.add_safe_globals(registered)

    load_checkpoint(_Detector(), str(path), map_location='cpu', strict=True)  # mmengine's load_from path
    _load_via_init_cfg(path)  # the backbone part, through init_cfg
    resumed = _runner(tmp_path, max_iters=4, resume=True)
    resumed.train()
    assert resumed.iter == 4
    # The message hub's arrays came back as CheckedArray; the resumed run's checkpoint pickles plain numpy arrays,
    # so it reads anywhere without mmvmamba, and again through the checks.
    assert b'mmvmamba' not in _pickle_of(tmp_path / 'iter_4.pth')
    hub = safe_load(tmp_path / 'iter_4.pth')['message_hub']
    losses = hub['log_scalars']['train/loss']
    assert isinstance(losses._log_history, np.ndarray) and losses._log_history.dtype == np.float64
    assert len(losses._log_history) == 4 and np.isfinite(losses.mean())


def test_safe_load_keeps_the_process_wide_allow_list(tmp_path):
    path = tmp_path / 'plain.pth'
    torch.save({'model': _model().state_dict()}, path)
    before = set(torch.serialization.get_safe_globals())
    safe_load(path)
    assert set(torch.serialization.get_safe_globals()) == before


def test_import_leaves_torch_allow_list_alone():
    """Importing mmvmamba (what custom_imports does) changes nothing in torch; registering is an explicit call."""
    code = ('import torch; import mmvmamba; from mmvmamba.checkpoint.safe_load import checkpoint_safe_globals; '
            'ours = checkpoint_safe_globals(); registered = torch.serialization.get_safe_globals(); '
            'assert not [item for item in registered if item in ours or "numpy" in repr(item)], registered; '
            'mmvmamba.checkpoint.register_checkpoint_safe_globals(); '
            'assert all(item in torch.serialization.get_safe_globals() for item in ours), "not registered"')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_registering_is_idempotent(allow_list):
    once = set(torch.serialization.get_safe_globals())
    register_checkpoint_safe_globals()
    assert set(torch.serialization.get_safe_globals()) == once


def test_registering_refuses_numpy_registered_without_checks(allow_list):
    torch.serialization.add_safe_globals([np.ndarray])
    with pytest.raises(RuntimeError, match=r"numpy types without checks .*numpy\.ndarray"):
        register_checkpoint_safe_globals()


# ---- numpy values: every numeric dtype loads as numpy itself unpickles it, and pickles again as a plain ndarray ----


@pytest.mark.parametrize('dtype', ['bool', 'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64',
                                   'float16', 'float32', 'float64', '>f8', '>i4', 'complex64', 'complex128'])
def test_numeric_numpy_arrays_and_scalars_load_as_numpy_loads_them(tmp_path, dtype):
    """The reference is numpy's own unpickling (which, e.g., turns big-endian data into native order)."""
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 5)) * 100).astype(dtype)
    values = {'array': array, 'fortran': np.asfortranarray(array), 'strided': array[:, ::2], 'empty': array[:0],
              'zero_d': np.array(array[1, 2]), 'scalar': array[1, 2]}
    path = tmp_path / 'numpy.pth'
    torch.save({'meta': values}, path)
    loaded = safe_load(path)['meta']
    for name, value in values.items():
        got, expected = loaded[name], pickle.loads(pickle.dumps(value, protocol=2))
        if name == 'scalar':
            assert type(got) is type(expected) and got.tobytes() == expected.tobytes(), name
            continue
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype and got.shape == expected.shape, name
        assert got.flags.f_contiguous == expected.flags.f_contiguous and got.tobytes() == expected.tobytes(), name
        assert b'mmvmamba' not in pickle.dumps(got, protocol=2) and b'mmvmamba' not in pickle.dumps(got, protocol=5)
        assert type(pickle.loads(pickle.dumps(got))) is np.ndarray


def test_numpy_arrays_cannot_be_constructed_from_a_file():
    from mmvmamba.checkpoint import CheckedArray
    with pytest.raises(pickle.UnpicklingError, match='numpy.ndarray'):
        CheckedArray((1, ), 'O', b'AAAAAAAA')


# ---- files that are not complete checkpoints: the error names the file and what is wrong ----


def _write_bad_file(tmp_path, kind: str) -> Path:
    path = tmp_path / f'{kind}.pth'
    if kind == 'text':
        path.write_text('epoch 3, loss 0.25\n')
    elif kind == 'html':
        path.write_text('<!DOCTYPE html><html><body>Not Found</body></html>')
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        torch.save({'model': _model().state_dict()}, path)
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == 'bit-flip':
        torch.save({'model': _model().state_dict()}, path)
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:  # flip one byte inside the largest tensor record
            info = max(archive.infolist(), key=lambda info: info.file_size)
        data[info.header_offset + 200] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == 'legacy':
        torch.save({'model': _model().state_dict()}, path, _use_new_zipfile_serialization=False)
    return path


BAD_FILES = {
    'text': 'is a text file',
    'html': 'is a text file',
    'empty': r'is empty \(0 bytes\)',
    'truncated': 'is truncated or corrupted',
    'bit-flip': r'is truncated or corrupted \(record .* does not match its stored checksum',
    'legacy': r'legacy format of torch < 1\.6',
}


@pytest.mark.parametrize('kind', list(BAD_FILES))
def test_a_file_that_is_not_a_complete_checkpoint_is_named(tmp_path, kind):
    path = _write_bad_file(tmp_path, kind)
    for load in (safe_load, _load_via_init_cfg):
        with pytest.raises(ValueError, match=BAD_FILES[kind]) as err:
            load(path)
        assert str(path) in str(err.value)
