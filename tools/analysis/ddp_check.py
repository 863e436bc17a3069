"""Check that DDP training through tools/dist_train.sh matches single-GPU training on the same total batch.

    python tools/analysis/ddp_check.py --gpus 2 --amp --work-dir work_dirs/ddp_check

Two configs are derived from --config (default: the shapes demo, its data generated in data/shapes on first use)
and dumped to WORK_DIR/configs: the same deterministic training (the config's test pipeline, dropout off, a fixed
seed, --iters iterations of --total-batch images), once as one process (tools/train.py) and once as --gpus DDP
processes of total/gpus images each with SyncBN (tools/dist_train.sh). Both record the cross-rank mean of their
losses every iteration (mmvmamba.LossRecordHook, WORK_DIR/{single,ddp}/losses.jsonl). Then

* losses: the ``loss`` of the first --compare-iters iterations must agree within --rtol;
* parameters: the largest relative difference between the two final checkpoints is reported (not checked);
* evaluation: tools/test.py evaluates the DDP checkpoint on one GPU (Triton kernels) and on the CPU (the PyTorch
  reference); the main metric (mIoU, COCO box mAP for a detector) must agree within --metric-tol points.

Writes WORK_DIR/report.json and WORK_DIR/report.md (also printed), the logs of the runs in WORK_DIR/logs, and
exits with 0 only if every check passes.
"""
import argparse
import copy
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from mmengine.config import Config

from mmvmamba.checkpoint import safe_load
from mmvmamba.datasets.synthetic_shapes import generate_shapes_dataset
from mmvmamba.engine.config_utils import leaf_datasets, set_data_root, task_of, use_amp

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / 'configs' / 'seg' / 'upernet_vmamba-demo_shapes-128x128.py'
# The metric each task is judged by, and the factor that turns it into points (mmseg's mIoU is a percentage
# already, mmdet's COCO mAP a fraction).
MAIN_METRICS = {'seg': ('mIoU', 1.0), 'det': ('coco/bbox_mAP', 100.0)}
# Model arguments that switch on dropout or stochastic depth: their masks come from each process's own random
# stream, so one process on 4 images and two on 2 images each would drop different things.
DROPOUT_KEYS = ('dropout_ratio', 'drop_rate', 'drop_path_rate', 'attn_drop_rate', 'ssm_dropout', 'mlp_dropout')
# Transforms that draw random numbers without 'Random' in their names.
OTHER_RANDOM_TRANSFORMS = ('PhotoMetricDistortion', 'Mosaic', 'MixUp', 'CopyPaste', 'AutoAugment', 'CutOut', 'Albu')
RECORD_KEYS = ('iter', 'world_size')
# The arguments the report records.
SETTINGS = ('config', 'gpus', 'total_batch', 'iters', 'compare_iters', 'seed', 'amp', 'rtol', 'metric_tol')


class CommandFailed(RuntimeError):
    """A training or test subprocess exited with an error."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=str(DEFAULT_CONFIG), help='Default: the shapes demo config')
    parser.add_argument('--gpus', type=int, default=2, help='DDP processes, one a GPU. Default: 2')
    parser.add_argument('--total-batch', type=int, default=4,
                        help='images an iteration in both runs (total/gpus a GPU in DDP). Default: 4')
    parser.add_argument('--iters', type=int, default=20, help='training iterations. Default: 20')
    parser.add_argument('--compare-iters', type=int, default=5, help='iterations whose losses are checked. Default: 5')
    parser.add_argument('--seed', type=int, default=0, help='Default: 0')
    parser.add_argument('--amp', action='store_true', help='train with AmpOptimWrapper (fp16 autocast, dynamic scale)')
    parser.add_argument('--backbone-cuda-graph', action='store_true',
                        help="the DDP run replays the backbone from CUDA graphs (its cuda_graph=True); the "
                        'single-GPU reference stays eager')
    # The two runs do the same arithmetic in another order (a cross-GPU mean of two half-batch losses and gradients,
    # SyncBN statistics gathered across GPUs) and under AMP/TF32 in reduced precision, so they never agree bitwise;
    # 1e-2 leaves room for that rounding over the first iterations and is below what a missing gradient sync does
    # to the demo's losses (3-6% from iteration 2, simulated on the CPU); a missing SyncBN (0.5-2.5%) shows in some
    # of the iterations only.
    parser.add_argument('--rtol', type=float, default=1e-2, help='relative tolerance of the losses. Default: 0.01')
    parser.add_argument('--metric-tol', type=float, default=1.0,
                        help='largest GPU vs CPU difference of the main metric, in points. Default: 1')
    parser.add_argument('--data-root',
                        help='generate the shapes dataset here (if absent) and train on it. Default: data/shapes for '
                        "the default config, the config's own data otherwise")
    parser.add_argument('--work-dir', type=Path, default=Path('work_dirs/ddp_check'),
                        help='Default: work_dirs/ddp_check')
    args = parser.parse_args()
    if args.gpus < 2:
        parser.error(f'--gpus must be at least 2 for a DDP check, got {args.gpus}')
    if args.total_batch % args.gpus:
        parser.error(f'--total-batch {args.total_batch} does not split into --gpus {args.gpus} equal shares')
    if not 1 <= args.compare_iters <= args.iters:
        parser.error(f'--compare-iters must be between 1 and --iters {args.iters}, got {args.compare_iters}')
    return args


def deterministic_pipeline(cfg) -> list:
    """The config's test pipeline, to train on: both runs then see the same pixels for the same images."""
    pipeline = cfg.get('test_pipeline') or next(leaf_datasets(cfg.test_dataloader.dataset))[1].get('pipeline')
    if not pipeline:
        raise ValueError('the config has neither test_pipeline nor test_dataloader.dataset.pipeline to train on')
    types = [step['type'] for step in pipeline]
    random = [t for t in types if 'Random' in t.split('.')[-1] or t.split('.')[-1] in OTHER_RANDOM_TRANSFORMS]
    if random:
        raise ValueError(f'the test pipeline has random transforms {random}; the check needs a deterministic one')
    if not any(t.split('.')[-1].startswith('LoadAnnotations') for t in types):
        raise ValueError(f'the test pipeline {types} loads no annotations (LoadAnnotations), so it cannot train')
    return copy.deepcopy(list(pipeline))


def disable_dropout(model_cfg: dict) -> None:
    """Set every dropout/drop-path rate in the model config to 0, VMamba's preset drop_path_rate included."""
    for key, value in model_cfg.items():
        if key in DROPOUT_KEYS and isinstance(value, (int, float)):
            model_cfg[key] = 0.0
        elif isinstance(value, dict):
            disable_dropout(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, dict):
                    disable_dropout(item)
    backbone = model_cfg.get('backbone')
    # VMamba's arch presets carry a drop_path_rate that applies when the config does not name one.
    if isinstance(backbone, dict) and str(backbone.get('type', '')).split('.')[-1] in ('VMamba', 'MM_VSSM'):
        backbone['drop_path_rate'] = 0.0


def derive_config(cfg, *, gpus: int, total_batch: int, iters: int, seed: int, amp: bool, cuda_graph: bool = False):
    """A copy of ``cfg`` set up for the check, for ``gpus`` processes (1: the single-process reference).

    ``cuda_graph`` sets the backbone's ``cuda_graph=True`` (captured and replayed from the third iteration on).
    """
    if total_batch % gpus:
        raise ValueError(f'total batch {total_batch} does not split into {gpus} equal shares')
    cfg = copy.deepcopy(cfg)
    pipeline = deterministic_pipeline(cfg)
    if 'train_pipeline' in cfg:
        cfg.train_pipeline = copy.deepcopy(pipeline)
    for _, dataset in leaf_datasets(cfg.train_dataloader.dataset):
        dataset['pipeline'] = copy.deepcopy(pipeline)
    cfg.train_dataloader.batch_size = total_batch // gpus
    disable_dropout(cfg.model)
    if cuda_graph:
        cfg.model.backbone.cuda_graph = True

    # mmengine's IterBasedTrainLoop also validates at the last iteration unless val_begin is past it.
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1, val_begin=iters + 1)
    # The optimizer's lr from the first iteration on: under a warm-up from 1% of it (the demo's) the weights hardly
    # move in the compared iterations, and a missing gradient sync changed the demo's first 5 losses by < 0.6%
    # (simulated on the CPU), against 3-6% from iteration 2 on at the full lr.
    cfg.param_scheduler = None
    checkpoint = cfg.default_hooks.get('checkpoint') or dict(type='CheckpointHook')
    checkpoint.update(by_epoch=False, interval=iters)
    cfg.default_hooks.checkpoint = checkpoint
    # Every iteration's rank-0 loss, unsmoothed, in the logs next to losses.jsonl.
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1, log_metric_by_epoch=False)
    cfg.log_processor = dict(cfg.get('log_processor') or {}, by_epoch=False, window_size=1)
    cfg.randomness = dict(seed=seed, deterministic=False)
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='mmvmamba.LossRecordHook')]
    if gpus > 1:
        cfg.sync_bn = 'torch'  # BN statistics over the whole batch, as in the single process
    else:
        cfg.pop('sync_bn', None)
    if amp:
        use_amp(cfg)
    return cfg


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_logged(name: str, cmd: list[str], env: dict[str, str], logs_dir: Path) -> dict:
    """Run ``cmd`` with ``env`` added to this process's environment, its output in ``logs_dir/name.log``."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    log = logs_dir / f'{name}.log'
    full_env = {**os.environ, **env}
    # tools/*.py import mmvmamba from the repository even where it is not installed.
    full_env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), os.environ.get('PYTHONPATH')) if p)
    shown = ' '.join([*(f'{k}={shlex.quote(v)}' for k, v in env.items()), shlex.join(cmd)])
    print(f'[{name}] {shown}\n  log: {log}', flush=True)
    start = time.time()
    with open(log, 'w') as f:
        rc = subprocess.run(cmd, env=full_env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = round(time.time() - start, 1)
    if rc != 0:
        tail = ''.join(log.read_text(errors='replace').splitlines(keepends=True)[-30:])
        raise CommandFailed(f'{name} failed with exit code {rc} after {seconds} s: {shown}\n'
                            f'last lines of {log}:\n{tail}')
    return dict(name=name, command=shown, seconds=seconds, log=str(log))


def train(name: str, cfg_path: Path, work_dir: Path, gpus: int, logs_dir: Path) -> dict:
    """Train ``cfg_path`` as one process (``gpus`` 1) or through tools/dist_train.sh."""
    if gpus == 1:
        cmd = [sys.executable, str(REPO / 'tools' / 'train.py'), str(cfg_path), '--work-dir', str(work_dir)]
        return run_logged(name, cmd, {}, logs_dir)
    cmd = ['bash', str(REPO / 'tools' / 'dist_train.sh'), str(cfg_path), str(gpus), '--work-dir', str(work_dir)]
    return run_logged(name, cmd, dict(PYTHON=sys.executable, PORT=str(free_port())), logs_dir)


def read_test_metrics(work_dir: Path) -> dict:
    """The metrics of the latest tools/test.py run in ``work_dir`` (mmengine's ``<timestamp>/<timestamp>.json``)."""
    files = sorted(p for p in Path(work_dir).glob('*/*.json') if p.stem == p.parent.name)
    if not files:
        raise FileNotFoundError(f'no <timestamp>/<timestamp>.json metrics file of tools/test.py in {work_dir}')
    return json.loads(files[-1].read_text())


def evaluate(name: str, cfg_path: Path, checkpoint: Path, work_dir: Path, cuda_visible_devices: str,
             logs_dir: Path) -> tuple[dict, dict]:
    """The metrics of tools/test.py on ``checkpoint`` with CUDA_VISIBLE_DEVICES set, and the command record."""
    cmd = [sys.executable, str(REPO / 'tools' / 'test.py'), str(cfg_path), str(checkpoint), '--work-dir',
           str(work_dir)]
    record = run_logged(name, cmd, dict(CUDA_VISIBLE_DEVICES=cuda_visible_devices), logs_dir)
    return read_test_metrics(work_dir), record


def read_losses(path: Path) -> dict[int, dict]:
    """LossRecordHook's records by iteration (a resumed run's later line for an iteration wins)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'{path} does not exist: did the run have mmvmamba.LossRecordHook in custom_hooks?')
    records = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[int(record['iter'])] = record
    return records


def rel_diff(ref: float, value: float) -> float:
    if ref == value:
        return 0.0
    return abs(value - ref) / abs(ref) if ref != 0 else math.inf


def compare_losses(single: dict[int, dict], ddp: dict[int, dict], iters: int, rtol: float) -> tuple[list, bool]:
    """Rows (iter, name, single, ddp, rel_diff, checked, ok) of every value both runs record in the first ``iters``
    iterations, and whether every ``loss`` agrees within ``rtol`` of the single-process one."""
    missing = [i for i in range(1, iters + 1) if i not in single or i not in ddp]
    if missing:
        raise ValueError(f'iterations {missing} are not recorded in both runs (single: {sorted(single)[:iters]}, '
                         f'DDP: {sorted(ddp)[:iters]})')
    rows = []
    for i in range(1, iters + 1):
        for name, value in single[i].items():
            if name in RECORD_KEYS or name not in ddp[i]:
                continue
            a, b = float(value), float(ddp[i][name])  # float() also reads the 'nan'/'inf' strings of the hook
            checked = name == 'loss'
            ok = (math.isfinite(a) and math.isfinite(b) and abs(b - a) <= rtol * abs(a)) if checked else None
            rows.append(dict(iter=i, name=name, single=a, ddp=b, rel_diff=rel_diff(a, b), checked=checked, ok=ok))
    if not any(row['checked'] for row in rows):
        raise ValueError('neither run recorded a "loss" entry to compare')
    return rows, all(row['ok'] for row in rows if row['checked'])


def load_state_dict(path: Path) -> dict:
    checkpoint = safe_load(path)  # weights_only, with the checked allow-list of mmengine's checkpoint types
    return checkpoint.get('state_dict', checkpoint)


def param_diff(reference: Path, other: Path) -> dict:
    """The largest ``max|a - b| / max|a|`` over the floating-point tensors of two checkpoints (``a``: reference;
    absolute for an all-zero reference tensor), and which tensor it is."""
    a_state, b_state = load_state_dict(reference), load_state_dict(other)
    if set(a_state) != set(b_state):
        only_a, only_b = sorted(set(a_state) - set(b_state)), sorted(set(b_state) - set(a_state))
        raise ValueError(f'the checkpoints hold different tensors: only in {reference}: {only_a[:10]}, '
                         f'only in {other}: {only_b[:10]}')
    diffs = []
    for name, a in a_state.items():
        b = b_state[name]
        if not a.is_floating_point():
            continue  # num_batches_tracked counts iterations: equal or not, it is no parameter
        if a.shape != b.shape:
            raise ValueError(f'{name}: shape {tuple(a.shape)} in {reference}, {tuple(b.shape)} in {other}')
        if not a.numel():
            continue
        a, b = a.double(), b.double()
        scale = a.abs().max().item()
        diff = (a - b).abs().max().item()
        diffs.append((diff / scale if scale > 0 else diff, name))
    if not diffs:
        raise ValueError(f'{reference} holds no floating-point tensors to compare')
    # A NaN (a diverged run) ranks above every number.
    worst, worst_name = max(diffs, key=lambda item: (math.isnan(item[0]), item[0]))
    return dict(max_rel_diff=worst, tensor=worst_name, tensors=len(diffs))


def summarize(single: dict[int, dict], ddp: dict[int, dict], params: dict, gpu_metrics: dict, cpu_metrics: dict, *,
              gpus: int, compare_iters: int, rtol: float, metric: str, points: float, metric_tol: float) -> dict:
    """The checks' results: ``losses``, ``params``, ``eval`` and ``passed`` (losses and evaluation both pass)."""
    rows, losses_ok = compare_losses(single, ddp, compare_iters, rtol)
    world_sizes = dict(single=sorted({r['world_size'] for r in single.values()}),
                       ddp=sorted({r['world_size'] for r in ddp.values()}))
    # A "DDP" run that did not actually run distributed would match trivially.
    losses_ok = losses_ok and world_sizes == dict(single=[1], ddp=[gpus])
    for name, metrics in (('GPU', gpu_metrics), ('CPU', cpu_metrics)):
        if metric not in metrics:
            raise KeyError(f'the {name} evaluation has no {metric!r} metric; it has {sorted(metrics)}')
    diff_points = abs(gpu_metrics[metric] - cpu_metrics[metric]) * points
    eval_ok = diff_points <= metric_tol
    keys = [k for k in gpu_metrics if k in cpu_metrics and k not in ('time', 'data_time')]
    return dict(losses=dict(rows=rows, passed=losses_ok, world_sizes=world_sizes), params=params,
                eval=dict(metric=metric, keys=keys, gpu=gpu_metrics, cpu=cpu_metrics, diff_points=diff_points,
                          passed=eval_ok),
                passed=bool(losses_ok and eval_ok))


def _strict_json(value):
    """``value`` with NaN/inf floats as strings: json.dumps would write NaN/Infinity, which strict readers refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _verdict(ok: bool) -> str:
    return 'pass' if ok else 'FAIL'


def _fmt(value) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


def render_markdown(report: dict) -> str:
    """The report as markdown."""
    s = report['settings']
    lines = [
        f"# DDP check of {Path(s['config']).name}: {_verdict(report['passed']).upper()}",
        '',
        f"torch {report['env']['torch']} (CUDA {report['env']['cuda']}), GPUs: {', '.join(report['env']['gpus'])}",
        '',
        f"{s['gpus']} DDP processes of {s['total_batch'] // s['gpus']} images vs one process of {s['total_batch']}, "
        f"{s['iters']} iterations, seed {s['seed']}, AMP {'on' if s['amp'] else 'off'}, the test pipeline, "
        'no dropout, SyncBN in DDP.',
        '',
        f"## Losses (cross-rank means): {_verdict(report['losses']['passed'])}",
        '',
        f"`loss` must agree within rtol {s['rtol']} (the other values are shown only). "
        f"World sizes recorded: single {report['losses']['world_sizes']['single']}, "
        f"DDP {report['losses']['world_sizes']['ddp']}.",
        '',
        '| iter | value | single | DDP | rel. diff | |',
        '|---|---|---|---|---|---|',
    ]
    for row in report['losses']['rows']:
        mark = _verdict(row['ok']) if row['checked'] else ''
        lines.append(f"| {row['iter']} | {row['name']} | {_fmt(row['single'])} | {_fmt(row['ddp'])} | "
                     f"{row['rel_diff']:.2e} | {mark} |")
    params = report['params']
    lines += [
        '',
        f"## Parameters after {s['iters']} iterations",
        '',
        f"Largest relative difference (max\\|a-b\\| / max\\|a\\| of a tensor): {params['max_rel_diff']:.3e} in "
        f"`{params['tensor']}` ({params['tensors']} tensors). Shown, not checked: AdamW moves every parameter by "
        'about the lr whatever its gradient size, so rounding differences grow over the iterations.',
        '',
        f"## Evaluation of the DDP checkpoint: {_verdict(report['eval']['passed'])}",
        '',
        f"`{report['eval']['metric']}` on one GPU vs the CPU must agree within {s['metric_tol']} points.",
        '',
        '| device | ' + ' | '.join(report['eval']['keys']) + ' |',
        '|---|' + '---|' * len(report['eval']['keys']),
    ]
    for device in ('gpu', 'cpu'):
        metrics = report['eval'][device]
        lines.append(f'| {device.upper()} | ' + ' | '.join(_fmt(metrics.get(k)) for k in report['eval']['keys'])
                     + ' |')
    lines += [
        '',
        f"Difference: {report['eval']['diff_points']:.3f} points.",
        '',
        '## Commands',
        '',
        '```',
        *(f"{c['command']}    # {c['seconds']} s, log {c['log']}" for c in report['commands']),
        '```',
        '',
    ]
    return '\n'.join(lines)


def environment() -> dict:
    return dict(torch=torch.__version__, cuda=torch.version.cuda,
                gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ['none'])


def main() -> None:
    args = parse_args()
    visible = torch.cuda.device_count()
    if visible < args.gpus:
        sys.exit(f'ddp_check: --gpus {args.gpus} needs {args.gpus} CUDA devices, torch.cuda.device_count() sees '
                 f'{visible} (check CUDA_VISIBLE_DEVICES and the CUDA build of torch {torch.__version__})')
    first_gpu = (os.environ.get('CUDA_VISIBLE_DEVICES') or '0').split(',')[0]

    work_dir = args.work_dir.resolve()
    logs_dir = work_dir / 'logs'
    cfg = Config.fromfile(args.config)
    metric, points = MAIN_METRICS[task_of(cfg)]
    data_root = args.data_root or ('data/shapes' if Path(args.config).resolve() == DEFAULT_CONFIG else None)
    if data_root is not None:
        generate_shapes_dataset(data_root)
        set_data_root(cfg, str(Path(data_root).resolve()))

    runs = {'single': 1, 'ddp': args.gpus}  # name: processes
    paths = {}
    for name, gpus in runs.items():
        derived = derive_config(cfg, gpus=gpus, total_batch=args.total_batch, iters=args.iters, seed=args.seed,
                                amp=args.amp, cuda_graph=args.backbone_cuda_graph and name == 'ddp')
        paths[name] = work_dir / 'configs' / f'{name}.py'
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        derived.dump(str(paths[name]))

    checkpoints = {name: work_dir / name / f'iter_{args.iters}.pth' for name in paths}
    commands, metrics = [], {}
    try:
        for name, gpus in runs.items():
            commands.append(train(f'train_{name}', paths[name], work_dir / name, gpus, logs_dir))
        # the DDP checkpoint on one GPU (Triton kernels) and on the CPU (no visible GPU: the PyTorch reference)
        for device, visible_devices in (('gpu', first_gpu), ('cpu', '')):
            metrics[device], record = evaluate(f'test_{device}', paths['ddp'], checkpoints['ddp'],
                                               work_dir / f'test_{device}', visible_devices, logs_dir)
            commands.append(record)
    except CommandFailed as e:
        sys.exit(f'ddp_check: {e}')

    results = summarize(read_losses(work_dir / 'single' / 'losses.jsonl'),
                        read_losses(work_dir / 'ddp' / 'losses.jsonl'),
                        param_diff(checkpoints['single'], checkpoints['ddp']), metrics['gpu'], metrics['cpu'],
                        gpus=args.gpus, compare_iters=args.compare_iters, rtol=args.rtol, metric=metric,
                        points=points, metric_tol=args.metric_tol)
    settings = {key: getattr(args, key) for key in SETTINGS}
    report = dict(settings=dict(settings, config=str(args.config)), env=environment(), **results, commands=commands)
    (work_dir / 'report.json').write_text(json.dumps(_strict_json(report), indent=2) + '\n')
    markdown = render_markdown(report)
    (work_dir / 'report.md').write_text(markdown)
    print(markdown)
    print(f'wrote {work_dir / "report.md"} and {work_dir / "report.json"}')
    sys.exit(0 if report['passed'] else 1)


if __name__ == '__main__':
    main()
