"""tools/analysis/ddp_check.py and mmvmamba.LossRecordHook on the CPU.

The DDP run itself needs GPUs (mmengine's pytorch launcher calls torch.cuda.set_device); here the hook's
cross-rank mean runs on two gloo processes, the single-process training and the CPU evaluation run for real, and
the comparison logic runs on made-up records.
"""
import copy
import json
import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config

from mmvmamba import LossRecordHook
from mmvmamba.datasets.synthetic_shapes import generate_shapes_dataset
from mmvmamba.engine.config_utils import set_data_root
from tests.paths import REPO_ROOT

DEMO_CONFIG = REPO_ROOT / 'configs' / 'seg' / 'upernet_vmamba-demo_shapes-128x128.py'


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _record(hook, runner, outputs):
    hook.after_train_iter(runner, batch_idx=runner.iter, data_batch=None, outputs=outputs)
    runner.iter += 1


def test_loss_record_hook_writes_local_values(tmp_path):
    hook = LossRecordHook(filename='rec.jsonl')
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=0)
    (tmp_path / 'rec.jsonl').write_text('{"iter": 7, "stale": 1}\n')
    hook.before_train(runner)  # a fresh run starts an empty file
    loss = torch.tensor(1.25, requires_grad=True) * 2
    outputs = [dict(loss=loss, **{'decode.loss_ce': torch.tensor(0.75), 'decode.acc_seg': 61.5}),
               dict(loss=torch.tensor(2.0), **{'decode.loss_ce': torch.tensor(0.5), 'decode.acc_seg': 70})]
    for out in outputs:
        _record(hook, runner, out)
    lines = _lines(tmp_path / 'rec.jsonl')
    assert [line['iter'] for line in lines] == [1, 2]
    for line, out in zip(lines, outputs):
        assert line['world_size'] == 1
        assert set(line) == {'iter', 'world_size', *out}
        for name, value in out.items():
            value = value.detach() if isinstance(value, torch.Tensor) else value
            assert line[name] == pytest.approx(float(value), rel=1e-6)

    hook.before_train(SimpleNamespace(work_dir=str(tmp_path), iter=2))  # a resumed run appends
    _record(hook, runner, dict(loss=torch.tensor(float('nan'))))
    lines = _lines(tmp_path / 'rec.jsonl')
    assert [line['iter'] for line in lines] == [1, 2, 3] and math.isnan(float(lines[-1]['loss']))


def test_loss_record_hook_interval_and_bad_values(tmp_path):
    hook = LossRecordHook(interval=2)
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=0)
    hook.before_train(runner)
    for i in range(5):
        _record(hook, runner, dict(loss=torch.tensor(float(i))))
    assert [(line['iter'], line['loss']) for line in _lines(tmp_path / 'losses.jsonl')] == [(2, 1.0), (4, 3.0)]
    with pytest.raises(ValueError, match='shape'):
        LossRecordHook().after_train_iter(runner, 0, None, dict(loss=torch.ones(2)))
    with pytest.raises(TypeError, match='str'):
        LossRecordHook().after_train_iter(runner, 0, None, dict(loss='1.0'))
    with pytest.raises(ValueError, match='interval'):
        LossRecordHook(interval=0)


# Each rank records loss = 1 + rank + iter and acc = 10 * (rank + 1); rank 0 writes the means.
_DIST_SCRIPT = textwrap.dedent("""
    import sys
    from types import SimpleNamespace
    import torch
    import torch.distributed as dist
    from mmvmamba import LossRecordHook

    dist.init_process_group('gloo')
    rank = dist.get_rank()
    hook = LossRecordHook()
    runner = SimpleNamespace(work_dir=sys.argv[1], iter=0)
    hook.before_train(runner)
    for it in range(3):
        runner.iter = it
        hook.after_train_iter(runner, it, None, {'loss': torch.tensor(1.0 + rank + it), 'acc': 10.0 * (rank + 1)})
    dist.destroy_process_group()
""")


def test_loss_record_hook_averages_over_ranks(tmp_path):
    script = tmp_path / 'record.py'
    script.write_text(_DIST_SCRIPT)
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             str(script), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    world = 2
    expected = [dict(iter=it + 1, world_size=world, loss=sum(1.0 + r + it for r in range(world)) / world,
                     acc=sum(10.0 * (r + 1) for r in range(world)) / world) for it in range(3)]
    assert _lines(tmp_path / 'losses.jsonl') == expected


@pytest.fixture(scope='module')
def demo_cfg():
    return Config.fromfile(DEMO_CONFIG)


@pytest.mark.parametrize('amp', [False, True])
def test_derive_config(load_tool, tmp_path, demo_cfg, amp):
    ddp_check = load_tool('ddp_check')
    original_types = [step['type'] for step in demo_cfg.train_dataloader.dataset.pipeline]
    assert 'RandomFlip' in original_types and demo_cfg.model.decode_head.dropout_ratio > 0  # what is changed
    derived = {}
    for gpus in (1, 2):
        cfg = ddp_check.derive_config(demo_cfg, gpus=gpus, total_batch=4, iters=7, seed=3, amp=amp)
        path = tmp_path / f'{gpus}.py'
        cfg.dump(str(path))
        derived[gpus] = Config.fromfile(path)  # what the subprocesses read
    for gpus, cfg in derived.items():
        pipeline = cfg.train_dataloader.dataset.pipeline
        assert pipeline == demo_cfg.test_pipeline
        assert not any('Random' in step['type'] for step in pipeline)
        assert cfg.train_dataloader.batch_size == 4 // gpus
        assert cfg.train_cfg.max_iters == 7 and cfg.train_cfg.val_begin > 7 and cfg.train_cfg.val_interval > 7
        assert cfg.param_scheduler is None
        assert cfg.default_hooks.checkpoint.interval == 7 and not cfg.default_hooks.checkpoint.by_epoch
        assert cfg.randomness == dict(seed=3, deterministic=False)
        assert cfg.custom_hooks == [*demo_cfg.custom_hooks, dict(type='mmvmamba.LossRecordHook')]
        assert cfg.model.decode_head.dropout_ratio == 0 and cfg.model.auxiliary_head.dropout_ratio == 0
        assert cfg.model.backbone.drop_path_rate == 0
        assert cfg.optim_wrapper.type == ('AmpOptimWrapper' if amp else 'OptimWrapper')
    assert derived[1].get('sync_bn') is None and derived[2].sync_bn == 'torch'
    assert 'cuda_graph' not in derived[2].model.backbone
    graphed = ddp_check.derive_config(demo_cfg, gpus=2, total_batch=4, iters=7, seed=3, amp=amp, cuda_graph=True)
    assert graphed.model.backbone.cuda_graph is True
    # The source config is left as it was.
    assert [step['type'] for step in demo_cfg.train_dataloader.dataset.pipeline] == original_types
    assert demo_cfg.train_dataloader.batch_size == 4 and 'sync_bn' not in demo_cfg


def test_derive_config_refuses(load_tool, demo_cfg):
    ddp_check = load_tool('ddp_check')
    with pytest.raises(ValueError, match='equal shares'):
        ddp_check.derive_config(demo_cfg, gpus=3, total_batch=4, iters=2, seed=0, amp=False)
    cfg = copy.deepcopy(demo_cfg)
    cfg.test_pipeline = [*cfg.test_pipeline[:2], dict(type='mmseg.RandomFlip', prob=0.5), cfg.test_pipeline[-1]]
    with pytest.raises(ValueError, match='RandomFlip'):
        ddp_check.derive_config(cfg, gpus=2, total_batch=4, iters=2, seed=0, amp=False)
    cfg.test_pipeline = [step for step in demo_cfg.test_pipeline if step['type'] != 'LoadAnnotations']
    with pytest.raises(ValueError, match='LoadAnnotations'):
        ddp_check.derive_config(cfg, gpus=2, total_batch=4, iters=2, seed=0, amp=False)
    # A VMamba whose drop-path rate comes from its arch preset gets an explicit 0.
    cfg = copy.deepcopy(demo_cfg)
    cfg.model.backbone.pop('drop_path_rate')
    assert ddp_check.derive_config(cfg, gpus=2, total_batch=4, iters=2, seed=0, amp=False).model.backbone[
        'drop_path_rate'] == 0


def _write_records(path, world_size, losses, extra=None):
    with open(path, 'w') as f:
        for i, loss in enumerate(losses, 1):
            f.write(json.dumps(dict(iter=i, world_size=world_size, loss=loss, **(extra or {}))) + '\n')
    return path


def test_compare_losses(load_tool, tmp_path):
    ddp_check = load_tool('ddp_check')
    rtol = 1e-2
    base = [2.0, 1.8, 1.7, 1.5, 1.4, 1.3]
    single = ddp_check.read_losses(_write_records(tmp_path / 's.jsonl', 1, base, {'acc': 50.0}))

    def compare(ddp_losses, iters=5, extra=None):
        ddp = ddp_check.read_losses(_write_records(tmp_path / 'd.jsonl', 2, ddp_losses, extra))
        return ddp_check.compare_losses(single, ddp, iters, rtol)

    rows, ok = compare(base, extra={'acc': 50.0})
    assert ok and len(rows) == 10 and all(row['rel_diff'] == 0 for row in rows)
    assert [row['iter'] for row in rows if row['checked']] == [1, 2, 3, 4, 5]
    near = [v * (1 + 0.5 * rtol) for v in base]
    rows, ok = compare(near)
    assert ok and [row['name'] for row in rows] == ['loss'] * 5  # acc only in one run: not shown
    assert [row['rel_diff'] for row in rows] == pytest.approx([abs(b - a) / a for a, b in zip(base[:5], near)])
    far = list(base)
    far[3] = base[3] * (1 + 2 * rtol)
    rows, ok = compare(far)
    assert not ok and [row['ok'] for row in rows] == [True, True, True, False, True]
    assert compare(far, iters=3)[1]  # beyond --compare-iters: not checked
    far = list(base)
    far[-1] = 10.0
    assert compare(far)[1]
    nan = list(base)
    nan[0] = 'nan'  # how the hook writes a diverged loss
    assert not compare(nan)[1]
    with pytest.raises(ValueError, match=r'iterations \[4, 5\]'):
        compare(base[:3])
    # A later record of an iteration (a resumed run) replaces the earlier one.
    assert compare(base)[1]
    with open(tmp_path / 'd.jsonl', 'a') as f:
        f.write(json.dumps(dict(iter=2, world_size=2, loss=base[1] * 2)) + '\n')
    assert not ddp_check.compare_losses(single, ddp_check.read_losses(tmp_path / 'd.jsonl'), 5, rtol)[1]
    with pytest.raises(FileNotFoundError, match='LossRecordHook'):
        ddp_check.read_losses(tmp_path / 'missing.jsonl')
    # A zero accuracy or a NaN loss still makes strict JSON in report.json.
    assert ddp_check.rel_diff(0.0, 2.0) == math.inf
    report = ddp_check._strict_json(dict(rows=[dict(rel_diff=math.inf, single=math.nan, ddp=1.5)]))
    assert json.loads(json.dumps(report, allow_nan=False)) == dict(rows=[dict(rel_diff='inf', single='nan', ddp=1.5)])


def test_param_diff(load_tool, tmp_path):
    ddp_check = load_tool('ddp_check')
    a = dict(w=torch.tensor([[1.0, -4.0], [2.0, 0.5]]), b=torch.zeros(3), n=torch.tensor(5))
    b = dict(w=a['w'] + torch.tensor([[0.0, 0.1], [0.0, 0.0]]), b=torch.tensor([0.0, 0.02, 0.0]),
             n=torch.tensor(9))
    torch.save(dict(state_dict=a), tmp_path / 'a.pth')
    torch.save(dict(state_dict=b), tmp_path / 'b.pth')
    same = ddp_check.param_diff(tmp_path / 'a.pth', tmp_path / 'a.pth')
    assert same['max_rel_diff'] == 0 and same['tensors'] == 2
    diff = ddp_check.param_diff(tmp_path / 'a.pth', tmp_path / 'b.pth')
    # w: 0.1 / 4; b is all zero in the reference: its absolute difference 0.02 counts.
    assert diff['tensor'] == 'w' and diff['max_rel_diff'] == pytest.approx(0.1 / 4)
    b['w'] = a['w'] + 1.0
    torch.save(dict(state_dict=b), tmp_path / 'b.pth')
    assert ddp_check.param_diff(tmp_path / 'a.pth', tmp_path / 'b.pth')['max_rel_diff'] == pytest.approx(1 / 4)
    del b['b']
    torch.save(dict(state_dict=b), tmp_path / 'b.pth')
    with pytest.raises(ValueError, match=r"only in .*a\.pth: \['b'\]"):
        ddp_check.param_diff(tmp_path / 'a.pth', tmp_path / 'b.pth')


def test_single_process_run_and_cpu_evaluation(load_tool, tmp_path, demo_cfg):
    """The tool's single-process training and CPU evaluation, for real, and a report from their results."""
    ddp_check = load_tool('ddp_check')
    cfg = copy.deepcopy(demo_cfg)
    set_data_root(cfg, str(generate_shapes_dataset(tmp_path / 'shapes', num_train=4, num_val=2)))
    cfg_path = tmp_path / 'single.py'
    ddp_check.derive_config(cfg, gpus=1, total_batch=2, iters=2, seed=0, amp=False).dump(str(cfg_path))
    logs = tmp_path / 'logs'
    train = ddp_check.train('train_single', cfg_path, tmp_path / 'single', 1, logs)
    assert (logs / 'train_single.log').is_file() and 'tools/train.py' in train['command']

    records = ddp_check.read_losses(tmp_path / 'single' / 'losses.jsonl')
    assert sorted(records) == [1, 2] and {r['world_size'] for r in records.values()} == {1}
    # Without DDP the hook's values are mmengine's logged ones (logger interval 1, no smoothing in the derived config).
    logged = [json.loads(line) for line in next((tmp_path / 'single').glob('*/vis_data/scalars.json')).open()]
    assert [row['iter'] for row in logged] == [1, 2]
    for row in logged:
        for name, value in records[row['iter']].items():
            if name not in ('iter', 'world_size'):
                assert value == pytest.approx(row[name], rel=1e-6), name

    checkpoint = tmp_path / 'single' / 'iter_2.pth'
    metrics, test = ddp_check.evaluate('test_cpu', cfg_path, checkpoint, tmp_path / 'test_cpu', '', logs)
    assert test['command'].startswith("CUDA_VISIBLE_DEVICES=''")
    assert {'mIoU', 'mAcc', 'aAcc'} <= set(metrics) and 0 <= metrics['mIoU'] <= 100
    assert ddp_check.param_diff(checkpoint, checkpoint)['max_rel_diff'] == 0

    kwargs = dict(compare_iters=2, rtol=1e-2, metric='mIoU', points=1.0, metric_tol=1.0)
    params = ddp_check.param_diff(checkpoint, checkpoint)
    # The same records as "DDP" fail: their world size is 1, not 2.
    results = ddp_check.summarize(records, records, params, metrics, metrics, gpus=2, **kwargs)
    assert results['losses']['world_sizes'] == dict(single=[1], ddp=[1]) and not results['passed']
    ddp = {i: dict(r, world_size=2) for i, r in records.items()}
    results = ddp_check.summarize(records, ddp, params, metrics, dict(metrics, mIoU=metrics['mIoU'] + 0.5),
                                  gpus=2, **kwargs)
    assert results['passed'] and results['eval']['diff_points'] == pytest.approx(0.5)
    assert not ddp_check.summarize(records, ddp, params, metrics, dict(metrics, mIoU=metrics['mIoU'] + 1.5),
                                   gpus=2, **kwargs)['passed']
    settings = dict(config=str(DEMO_CONFIG), gpus=2, total_batch=2, iters=2, seed=0, amp=False, **kwargs)
    markdown = ddp_check.render_markdown(dict(settings=settings, env=ddp_check.environment(), **results,
                                              commands=[train, test]))
    assert markdown.startswith('# DDP check of upernet_vmamba-demo_shapes-128x128.py: PASS')
    assert f"| 1 | loss | {records[1]['loss']:.6g} | {records[1]['loss']:.6g} | 0.00e+00 | pass |" in markdown
    assert train['command'] in markdown and test['command'] in markdown


def test_main_with_a_one_process_stand_in_for_ddp(load_tool, tmp_path, monkeypatch, demo_cfg):
    """main() from the configs to the report, the DDP run replaced by one process on its half batch: it must fail."""
    ddp_check = load_tool('ddp_check')
    cfg = copy.deepcopy(demo_cfg)
    set_data_root(cfg, str(generate_shapes_dataset(tmp_path / 'shapes', num_train=4, num_val=2)))
    cfg.dump(str(tmp_path / 'demo_small.py'))
    one_process = ddp_check.train
    monkeypatch.setattr(ddp_check, 'train', lambda name, path, work_dir, gpus, logs: one_process(
        name, path, work_dir, 1, logs))
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda i: f'stand-in {i}')
    work_dir = tmp_path / 'w'
    monkeypatch.setattr(sys, 'argv', ['ddp_check.py', '--config', str(tmp_path / 'demo_small.py'), '--iters', '2',
                                      '--compare-iters', '2', '--work-dir', str(work_dir)])
    with pytest.raises(SystemExit) as exit_info:
        ddp_check.main()
    assert exit_info.value.code == 1
    report = json.loads((work_dir / 'report.json').read_text())
    assert not report['passed'] and report['losses']['world_sizes'] == dict(single=[1], ddp=[1])
    assert [row['iter'] for row in report['losses']['rows'] if row['checked']] == [1, 2]
    # Both evaluations ran on the CPU here: the same numbers.
    assert report['eval']['passed'] and report['eval']['diff_points'] == 0 and 'mIoU' in report['eval']['gpu']
    assert [c['name'] for c in report['commands']] == ['train_single', 'train_ddp', 'test_gpu', 'test_cpu']
    assert (work_dir / 'report.md').read_text().startswith('# DDP check of demo_small.py: FAIL')
    assert Config.fromfile(work_dir / 'configs' / 'ddp.py').train_dataloader.batch_size == 2


def test_main_needs_the_gpus(load_tool, tmp_path, monkeypatch):
    ddp_check = load_tool('ddp_check')
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(sys, 'argv', ['ddp_check.py', '--gpus', '2', '--work-dir', str(tmp_path / 'w')])
    with pytest.raises(SystemExit, match=r'needs 2 CUDA devices, torch.cuda.device_count\(\) sees 1'):
        ddp_check.main()
    assert not (tmp_path / 'w').exists()
    monkeypatch.setattr(sys, 'argv', ['ddp_check.py', '--gpus', '2', '--total-batch', '3'])
    with pytest.raises(SystemExit):
        ddp_check.parse_args()
