"""Config helpers shared by tools/train.py, tools/test.py and tools/demo.py (mmengine configs only).

They read and edit an mmengine ``Config`` of an mmdet or mmseg model without importing either library.
"""
import os.path as osp
from pathlib import Path

from mmengine.config import Config, ConfigDict

TASKS = {'mmdet': 'det', 'mmseg': 'seg'}
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
EVALUATORS = {'val_dataloader': 'val_evaluator', 'test_dataloader': 'test_evaluator'}


def task_of(cfg: Config) -> str:
    """``'det'`` for an mmdet config, ``'seg'`` for an mmseg one (from ``default_scope``)."""
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        raise ValueError(f"default_scope={scope!r}: expected one of {sorted(TASKS)} (an mmdet or mmseg config, "
                         "e.g. one that inherits mmdet::_base_/default_runtime.py)")
    return TASKS[scope]


def load_tool_config(config: str, cfg_options: dict | None, launcher: str, work_dir: str | None) -> Config:
    """The config as tools/train.py and tools/test.py run it: options merged, launcher and work_dir set.

    ``work_dir`` defaults to the config's own, else ``work_dirs/CONFIG_NAME``. Raises for a config that is
    neither mmdet's nor mmseg's (see :func:`task_of`).
    """
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    task_of(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def leaf_datasets(dataset: dict, where: str = 'dataset'):
    """(where, dataset config) of each dataset that reads files and holds a pipeline, through wrappers such as
    RepeatDataset and ConcatDataset; ``where`` names it for messages."""
    if 'dataset' in dataset:
        yield from leaf_datasets(dataset['dataset'], f'{where}.dataset')
    elif 'datasets' in dataset:
        for i, inner in enumerate(dataset['datasets']):
            yield from leaf_datasets(inner, f'{where}.datasets[{i}]')
    else:
        yield where, dataset


def _joined(root: str | None, path: str) -> str:
    return osp.join(root, path) if root and not osp.isabs(path) else path


def check_data_paths(cfg: Config, dataloaders: tuple[str, ...] = DATALOADERS) -> None:
    """Raise ``FileNotFoundError`` naming the config key to fix when a dataset's files or folders are missing.

    Checks each dataset's ``ann_file`` (when given), every ``data_prefix`` folder, and the evaluators'
    ``ann_file`` (COCO metrics), all relative to ``data_root`` as the datasets resolve them.
    """
    problems = []
    for loader_name in dataloaders:
        loader = cfg.get(loader_name)
        if not loader:
            continue
        for where, dataset in leaf_datasets(loader['dataset'], f'{loader_name}.dataset'):
            root = dataset.get('data_root')
            ann_file = dataset.get('ann_file')
            if ann_file and not osp.isfile(_joined(root, ann_file)):
                problems.append(f'{where}.ann_file: {_joined(root, ann_file)!r} is not a file '
                                f'(data_root={root!r}, ann_file={ann_file!r})')
            for key, prefix in (dataset.get('data_prefix') or {}).items():
                folder = _joined(root, prefix)
                if prefix and not osp.isdir(folder):
                    problems.append(f'{where}.data_prefix.{key}: {folder!r} is not a folder '
                                    f'(data_root={root!r}, data_prefix.{key}={prefix!r})')
        evaluator = cfg.get(EVALUATORS.get(loader_name, ''))
        for i, metric in enumerate(evaluator if isinstance(evaluator, list) else [evaluator] if evaluator else []):
            ann_file = metric.get('ann_file')
            if ann_file and not osp.isfile(ann_file):
                problems.append(f'{EVALUATORS[loader_name]}' + (f'[{i}]' if isinstance(evaluator, list) else '') +
                                f'.ann_file: {ann_file!r} is not a file')
    if problems:
        raise FileNotFoundError(
            'the dataset is not where the config says (paths are relative to the working directory '
            f'{str(Path.cwd())!r}):\n  ' + '\n  '.join(problems) +
            '\nPut the data there (COCO: data/coco/, ADE20K: data/ade/ADEChallengeData2016/; the demo data: '
            'python tools/demo.py) or point the config at it, e.g. --cfg-options '
            'train_dataloader.dataset.data_root=/path/to/data/')


def set_data_root(cfg: Config, root: str) -> None:
    """Point every dataset and COCO-style evaluator of ``cfg`` at ``root`` (their relative paths are kept)."""
    root = root if root.endswith('/') else root + '/'
    for loader_name in DATALOADERS:
        loader = cfg.get(loader_name)
        if not loader:
            continue
        for _, dataset in leaf_datasets(loader['dataset'], loader_name):
            dataset['data_root'] = root
        evaluator = cfg.get(EVALUATORS.get(loader_name, ''))
        dataset = loader['dataset']
        if isinstance(evaluator, dict) and evaluator.get('ann_file') and dataset.get('ann_file'):
            evaluator['ann_file'] = osp.join(root, dataset['ann_file'])


def use_amp(cfg: Config) -> None:
    """Train with mmengine's ``AmpOptimWrapper`` (autocast, dynamic loss scale unless the config sets one)."""
    if cfg.optim_wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper'):
        raise ValueError(f'AMP needs optim_wrapper.type OptimWrapper, got {cfg.optim_wrapper.type}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def set_max_iters(cfg: Config, max_iters: int) -> None:
    """Shorten or lengthen an iteration-based schedule, scaling the lr schedulers' iterations with it."""
    train_cfg = cfg.train_cfg
    if train_cfg.get('type') != 'IterBasedTrainLoop':
        raise ValueError(f"set_max_iters needs an IterBasedTrainLoop, got train_cfg={train_cfg}")
    old = train_cfg['max_iters']
    scale = max_iters / old
    train_cfg['max_iters'] = max_iters
    train_cfg['val_interval'] = min(train_cfg.get('val_interval', max_iters), max_iters)
    schedulers = cfg.get('param_scheduler') or []
    for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
        for key in ('begin', 'end'):
            if key in scheduler:
                scheduler[key] = max(0, round(scheduler[key] * scale)) if scheduler[key] < old else max_iters
        # A short run can round a warm-up to nothing; mmengine refuses a scheduler whose end is not after its begin.
        if 'begin' in scheduler:
            scheduler['begin'] = min(scheduler['begin'], max_iters - 1)
        if 'end' in scheduler:
            scheduler['end'] = max(scheduler['end'], scheduler.get('begin', 0) + 1)
        if 'T_max' in scheduler:
            scheduler['T_max'] = scheduler.get('end', max_iters) - scheduler.get('begin', 0)
    checkpoint = cfg.get('default_hooks', {}).get('checkpoint')
    if checkpoint and checkpoint.get('interval', 0) > max_iters:
        checkpoint['interval'] = max_iters


def enable_visualization(cfg: Config, out_dir: str) -> None:
    """Draw test predictions and save them as image files under ``out_dir`` (mmdet's and mmseg's test hooks)."""
    hooks = cfg.get('default_hooks', ConfigDict())
    if 'visualization' not in hooks:
        raise ValueError("the config has no default_hooks.visualization (DetVisualizationHook / "
                         "SegVisualizationHook) to draw predictions with")
    hooks['visualization']['draw'] = True
    hooks['visualization']['interval'] = 1  # every test image (mmseg's hook would draw one in 50)
    out_dir = osp.abspath(out_dir)
    if task_of(cfg) == 'det':
        hooks['visualization']['test_out_dir'] = out_dir  # joined under work_dir/timestamp, unless absolute
    else:
        cfg.visualizer['save_dir'] = out_dir
