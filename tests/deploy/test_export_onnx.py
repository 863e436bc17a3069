"""tools/deploy/export_onnx.py on the demo configs: export, check in ONNX Runtime, and fail on a mismatch.

The UperNet (with a checkpoint saved here) and the Mask R-CNN backbone + neck (random weights) are exported
statically at small sizes and with dynamic H and W; the dynamic exports take about 2 minutes each on 2 cores.
"""
import contextlib
import importlib.util
import io
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.runner.checkpoint import save_checkpoint

from mmvmamba.deploy.export import (
    DynamicAdaptiveAvgPool2d,
    build_model,
    compare_with_onnxruntime,
    dynamic_pooling,
    export_kind,
    export_module,
    export_onnx,
)
from tests.paths import REPO_ROOT

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

SEG_CONFIG = REPO_ROOT / 'configs' / 'seg' / 'upernet_vmamba-demo_shapes-128x128.py'
DET_CONFIG = REPO_ROOT / 'configs' / 'det' / 'mask-rcnn_vmamba-demo_fpn_shapes.py'
SIZE = ['--shape', '64', '64']
ROW = re.compile(r'^(random|image)\s+(\d+) x (\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(ok|FAIL)$', re.M)


def _load_tool():
    spec = importlib.util.spec_from_file_location('export_onnx_tool', REPO_ROOT / 'tools' / 'deploy' / 'export_onnx.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def _run(capsys, *args) -> tuple[int, str]:
    code = tool.main([str(a) for a in args])
    return code, capsys.readouterr().out


def _rows(out: str) -> list[tuple]:
    """(input, H, W, max diff, result) of each line of the check's table."""
    return [(m[0], int(m[1]), int(m[2]), float(m[3]), m[7]) for m in ROW.findall(out)]


@pytest.fixture(scope='module')
def seg_checkpoint(tmp_path_factory):
    """A whole-model checkpoint of the demo UperNet whose weights differ from a fresh build (BN statistics too)."""
    model = build_model(Config.fromfile(SEG_CONFIG), None)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=generator) * 0.2
                tensor.mul_(0.9 + noise) if name.endswith(('running_var', 'weight')) else tensor.add_(noise - 0.1)
    path = tmp_path_factory.mktemp('seg_ckpt') / 'upernet_demo.pth'
    # What mmengine's runner writes besides the weights: a message hub (HistoryBuffer, numpy values) and meta.
    hub = MessageHub.get_instance('deploy_test_checkpoint')
    hub.update_scalar('train/loss', np.float64(0.5))
    hub.update_info('iter', 3)
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {'seed': np.int64(0), 'iter': 3},
                     'message_hub': hub.state_dict()}, str(path))
    return path, model.state_dict()


@pytest.fixture(scope='module')
def seg_export(tmp_path_factory, seg_checkpoint):
    """(exit code, printed output, file) of the static export of the demo UperNet with its check."""
    out_file = tmp_path_factory.mktemp('seg') / 'upernet.onnx'
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = tool.main([str(SEG_CONFIG), str(seg_checkpoint[0]), '--out', str(out_file), *SIZE, '--verify',
                          '--repeats', '1'])
    return code, printed.getvalue(), out_file


def test_build_model_loads_the_checkpoint_strictly(seg_checkpoint, tmp_path):
    path, state_dict = seg_checkpoint
    model = build_model(Config.fromfile(SEG_CONFIG), path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state_dict[name], msg=name)
    partial = {k: v for k, v in state_dict.items() if not k.startswith('decode_head.')}
    save_checkpoint({'state_dict': partial}, str(tmp_path / 'partial.pth'))
    with pytest.raises(ValueError, match=r"missing keys \['decode_head\..*unexpected keys \[\]"):
        build_model(Config.fromfile(SEG_CONFIG), tmp_path / 'partial.pth')
    with pytest.raises(FileNotFoundError):
        build_model(Config.fromfile(SEG_CONFIG), tmp_path / 'missing.pth')
    crafted = tmp_path / 'crafted.pth'  # a pickled type outside the allow-list is refused, not unpickled
    torch.save({'state_dict': state_dict, 'meta': {'cfg': Config(dict(a=1))}}, str(crafted))
    with pytest.raises(ValueError, match='refusing to load'):
        build_model(Config.fromfile(SEG_CONFIG), crafted)


def test_upernet_static_export_matches_pytorch(seg_export):
    code, out, out_file = seg_export
    assert code == 0, out
    rows = _rows(out)
    assert [(r[0], r[1], r[2]) for r in rows] == [('random', 64, 64), ('image', 64, 64)], out
    assert all(r[3] <= 1e-4 and r[4] == 'ok' for r in rows), out
    model = onnx.load(str(out_file))
    assert [o.name for o in model.graph.output] == ['logits']
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]


def test_mask_rcnn_features_static_export_matches_pytorch(tmp_path, capsys):
    out_file = tmp_path / 'mask_rcnn_features.onnx'
    code, out = _run(capsys, DET_CONFIG, 'none', '--out', out_file, '--shape', '64', '96', '--verify', '--repeats', '1')
    assert code == 0, out
    rows = _rows(out)
    assert [(r[0], r[1], r[2]) for r in rows] == [('random', 64, 96), ('image', 64, 96)], out
    assert all(r[3] <= 1e-4 and r[4] == 'ok' for r in rows), out
    model = onnx.load(str(out_file))
    assert [o.name for o in model.graph.output] == ['fpn0', 'fpn1', 'fpn2', 'fpn3', 'fpn4']


@pytest.mark.parametrize('config,outputs', [
    pytest.param(DET_CONFIG, ['fpn0', 'fpn1', 'fpn2', 'fpn3', 'fpn4'], id='mask-rcnn'),
    pytest.param(SEG_CONFIG, ['logits'], id='upernet'),
])
def test_dynamic_export_matches_pytorch_at_other_sizes(config, outputs, tmp_path, capsys):
    out_file = tmp_path / 'dynamic.onnx'
    code, out = _run(capsys, config, 'none', '--out', out_file, *SIZE, '--dynamic', '--verify', '--repeats', '1')
    assert code == 0, out
    rows = _rows(out)
    sizes = sorted({(r[1], r[2]) for r in rows})
    assert sizes == [(64, 64), (81, 75), (96, 128)], out  # 81 x 75: odd, not a multiple of 32
    assert len(rows) == 6 and all(r[3] <= 1e-4 and r[4] == 'ok' for r in rows), out
    model = onnx.load(str(out_file))
    assert [o.name for o in model.graph.output] == outputs
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [
        1, 3, 'height', 'width']


def test_a_perturbed_graph_fails_the_check(seg_export, seg_checkpoint, tmp_path, capsys):
    """One decode-head bias moved by 1e-3 in the file: the check must report it and exit non-zero."""
    code, _, out_file = seg_export
    assert code == 0
    model = onnx.load(str(out_file))
    bias = next(t for t in model.graph.initializer if 'conv_seg' in t.name and t.name.endswith('bias'))
    values = onnx.numpy_helper.to_array(bias) + np.float32(1e-3)
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    perturbed = tmp_path / 'perturbed.onnx'
    onnx.save(model, str(perturbed))

    code, out = _run(capsys, SEG_CONFIG, seg_checkpoint[0], '--out', perturbed, '--verify-only', '--repeats', '1')
    assert code == 1, out
    rows = _rows(out)
    assert rows and all(r[4] == 'FAIL' and 9e-4 < r[3] < 1.1e-3 for r in rows), out
    assert 'FAILED' in out

    shutil.copy(out_file, tmp_path / 'clean.onnx')  # the unmodified file passes the same check
    code, out = _run(capsys, SEG_CONFIG, seg_checkpoint[0], '--out', tmp_path / 'clean.onnx', '--verify-only',
                     '--repeats', '1')
    assert code == 0, out


def test_only_upernet_and_mask_rcnn_configs_are_accepted():
    assert export_kind(Config.fromfile(SEG_CONFIG)) == 'upernet'
    assert export_kind(Config.fromfile(DET_CONFIG)) == 'mask_rcnn'
    for model in (dict(type='FasterRCNN'), dict(type='EncoderDecoder', decode_head=dict(type='FCNHead')), {}):
        with pytest.raises(ValueError, match='UperNet segmentors .* and Mask R-CNN'):
            export_kind(Config(dict(model=model)))


def test_unsupported_opset_and_missing_onnxruntime_are_named(tmp_path, monkeypatch):
    module = export_module(build_model(Config.fromfile(DET_CONFIG), None), 'mask_rcnn')
    with pytest.raises(ValueError, match='opset 11 is not supported'):
        export_onnx(module, torch.randn(1, 3, 32, 32), tmp_path / 'x.onnx', opset=11)
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(ImportError, match=re.escape('pip install mmvmamba[deploy]')):
        compare_with_onnxruntime(tmp_path / 'x.onnx', module, [])


def test_command_line_errors(capsys):
    with pytest.raises(SystemExit) as error:
        tool.main([str(SEG_CONFIG), 'none', '--out', 'x.onnx', '--check-shapes', '64'])
    assert error.value.code == 2 and '--check-shapes' in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match='does not exist'):
        tool.main([str(SEG_CONFIG), 'none', '--out', 'missing.onnx', '--verify-only'])


@pytest.mark.parametrize('output_size', [1, 2, 3, 6, (3, None)])
def test_dynamic_adaptive_pooling_matches_pytorch(output_size):
    for height, width in [(4, 4), (5, 6), (17, 9), (1, 2)]:
        x = torch.randn(2, 5, height, width)
        expected = torch.nn.AdaptiveAvgPool2d(output_size)(x)
        torch.testing.assert_close(DynamicAdaptiveAvgPool2d(output_size)(x), expected, rtol=1e-5, atol=1e-6)


def test_dynamic_pooling_graph_is_correct_at_other_sizes(tmp_path):
    """UperNet's pyramid pooling in a dynamic graph: the stock adaptive pooling is traced into gathers fixed at the
    traced size; inside dynamic_pooling it is correct at any size, and the module is put back afterwards."""
    import onnxruntime as ort

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.AdaptiveAvgPool2d(6)).eval()
    with torch.no_grad(), dynamic_pooling(model):
        assert isinstance(model[1], DynamicAdaptiveAvgPool2d)
        program = torch.onnx.export(model, (torch.randn(1, 3, 16, 16), ), input_names=['input'], dynamo=True,
                                    optimize=False, dynamic_shapes=({2: 'height', 3: 'width'}, ))
    assert type(model[1]) is torch.nn.AdaptiveAvgPool2d
    program.save(str(tmp_path / 'pool.onnx'))
    session = ort.InferenceSession(str(tmp_path / 'pool.onnx'), providers=['CPUExecutionProvider'])
    for height, width in [(16, 16), (9, 13), (40, 7), (2, 2)]:
        x = torch.randn(1, 3, height, width)
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(torch.from_numpy(session.run(None, {'input': x.numpy()})[0]), expected,
                                   rtol=1e-5, atol=1e-6)
