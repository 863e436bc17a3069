"""The demo: train and evaluate a small VMamba Mask R-CNN and a small VMamba UperNet on generated data, on the CPU.

    python tools/demo.py                       # both tasks, default iterations, outputs in work_dirs/demo
    python tools/demo.py --task seg --seg-iters 100 --work-dir work_dirs/demo_seg

On its first run it writes a deterministic shapes dataset to data/shapes/ (no download; see
mmvmamba/datasets/synthetic_shapes.py). Each task then evaluates the untrained model (the baseline), trains it
(configs/det/mask-rcnn_vmamba-demo_fpn_shapes.py, configs/seg/upernet_vmamba-demo_shapes-128x128.py), evaluates it
with mmdet's CocoMetric (box and mask AP) or mmseg's IoUMetric (mIoU), draws the predictions as PNG files, and
prints where the logs, checkpoints and drawings are. The same configs train on a GPU when one is visible.

The console shows the steps, training progress and the results. What the runners print (configs, environment,
per-parameter optimizer settings, warnings, evaluation tables) goes to WORK_DIR/demo_output.log, next to mmengine's
own logs in WORK_DIR/{det,seg}; ``--verbose`` prints it on the console instead.
"""
import argparse
import contextlib
import copy
import json
import os.path as osp
import sys
import time
from pathlib import Path
from typing import TextIO

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmvmamba.datasets.synthetic_shapes import generate_shapes_dataset
from mmvmamba.engine.config_utils import enable_visualization, set_data_root, set_max_iters

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    'det': REPO / 'configs' / 'det' / 'mask-rcnn_vmamba-demo_fpn_shapes.py',
    'seg': REPO / 'configs' / 'seg' / 'upernet_vmamba-demo_shapes-128x128.py',
}
# The metrics shown for each task, as the evaluators name them.
METRICS = {'det': ('coco/bbox_mAP', 'coco/segm_mAP'), 'seg': ('mIoU', 'mAcc', 'aAcc')}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--task', choices=['det', 'seg', 'both'], default='both', help='Default: both')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='Default: work_dirs/demo')
    parser.add_argument('--data-root', default='data/shapes', help='generated here if absent. Default: data/shapes')
    parser.add_argument('--det-iters', type=int, help='training iterations of the detector (config default: 400)')
    parser.add_argument('--seg-iters', type=int, help='training iterations of the segmentor (config default: 300)')
    parser.add_argument('--num-train', type=int, default=96, help='generated training images. Default: 96')
    parser.add_argument('--num-val', type=int, default=24, help='generated validation images. Default: 24')
    parser.add_argument('--verbose', action='store_true',
                        help="print the runners' whole output on the console instead of WORK_DIR/demo_output.log")
    return parser.parse_args(argv)


def say(console: TextIO, line: str) -> None:
    print(line, file=console, flush=True)


class ConsoleProgress(Hook):
    """Prints the training progress to ``console`` about ``parts`` times: iteration, loss, time spent and left."""

    def __init__(self, task: str, console: TextIO, parts: int = 10):
        self.task = task
        self.console = console
        self.parts = parts

    def before_train(self, runner) -> None:
        self.start = time.time()
        self.every = max(1, runner.max_iters // self.parts)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        done = runner.iter + 1  # the loop counts the iteration after its hooks
        if done % self.every and done != runner.max_iters:
            return
        spent = time.time() - self.start
        loss = float(outputs['loss']) if outputs and 'loss' in outputs else float('nan')
        say(self.console, f'  {self.task}: iteration {done}/{runner.max_iters}, loss {loss:.3f}, {spent:.0f} s, '
                          f'about {spent / done * (runner.max_iters - done):.0f} s left')


def pick_metrics(metrics: dict, task: str, model: str) -> dict[str, float]:
    """The metrics the demo shows for ``task``, from an evaluation of ``model``; a missing one is an error."""
    missing = [name for name in METRICS[task] if name not in metrics]
    if missing:
        hint = (" (mmdet's CocoMetric gives none when the model predicted nothing: see the log)"
                if task == 'det' else '')
        raise KeyError(f'the evaluation of the {model} {task} model gave no {", ".join(missing)}{hint}; '
                       f'it gave {sorted(metrics)}')
    return {name: float(metrics[name]) for name in METRICS[task]}


def build_cfg(task: str, work_dir: str, data_root: str, max_iters: int | None) -> Config:
    cfg = Config.fromfile(CONFIGS[task])
    cfg.work_dir = work_dir
    set_data_root(cfg, data_root)
    if max_iters is not None:
        set_max_iters(cfg, max_iters)
    # No validation while training: the demo evaluates once, after training, with drawing switched on.
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    # Runners of both tasks live in this process: give each its own visualizer instance.
    cfg.visualizer.name = f'demo_{task}_visualizer'
    return cfg


def evaluate_untrained(cfg: Config, task: str) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = osp.join(cfg.work_dir, 'untrained')
    cfg.visualizer.name = f'demo_{task}_untrained_visualizer'
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()
    return runner.test()


def run_task(task: str, args: argparse.Namespace, console: TextIO) -> dict:
    work_dir = osp.join(args.work_dir, task)
    cfg = build_cfg(task, work_dir, args.data_root, args.det_iters if task == 'det' else args.seg_iters)
    start = time.time()
    say(console, f'{task}: evaluating the untrained model (the baseline)')
    untrained = pick_metrics(evaluate_untrained(cfg, task), task, 'untrained')
    say(console, f'  {task}: untrained {format_metrics(untrained)} ({time.time() - start:.0f} s)')

    vis_dir = osp.join(work_dir, 'vis')
    enable_visualization(cfg, vis_dir)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(ConsoleProgress(task, console), priority='VERY_LOW')
    say(console, f'{task}: training {cfg.train_cfg.max_iters} iterations')
    runner.train()
    say(console, f'{task}: evaluating the trained model and drawing its predictions')
    trained = pick_metrics(runner.test(), task, 'trained')
    say(console, f'  {task}: trained {format_metrics(trained)} ({time.time() - start:.0f} s in all)')
    pngs = sorted(str(p) for p in Path(vis_dir).rglob('*.png'))
    return dict(
        task=task,
        config=str(CONFIGS[task]),
        iterations=cfg.train_cfg.max_iters,
        untrained=untrained,
        trained=trained,
        seconds=round(time.time() - start, 1),
        log_dir=osp.abspath(runner.log_dir),
        checkpoints=sorted(osp.abspath(p) for p in Path(work_dir).glob('iter_*.pth')),
        visualizations=osp.abspath(vis_dir),
        num_visualizations=len(pngs))


def format_metrics(metrics: dict[str, float]) -> str:
    return ', '.join(f'{name} {value:.3f}' for name, value in metrics.items())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console = sys.stdout
    data_root = generate_shapes_dataset(args.data_root, num_train=args.num_train, num_val=args.num_val)
    say(console, f'demo data: {osp.abspath(data_root)}')
    tasks = ['det', 'seg'] if args.task == 'both' else [args.task]
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    output_log = Path(args.work_dir).resolve() / 'demo_output.log'
    with contextlib.ExitStack() as quiet:
        if not args.verbose:
            # Open to the end: mmengine's loggers keep the stream that was sys.stdout when they were made.
            log = quiet.enter_context(open(output_log, 'w'))
            quiet.enter_context(contextlib.redirect_stdout(log))
            quiet.enter_context(contextlib.redirect_stderr(log))
            say(console, f"the runners' output: {output_log}")
        try:
            results = [run_task(task, args, console) for task in tasks]
        except BaseException:
            if not args.verbose:
                say(console, f"failed; the runners' output is in {output_log}")
            raise
        summary_file = Path(args.work_dir) / 'demo_results.json'
        summary_file.write_text(json.dumps(results, indent=2))
        say(console, summary(results, summary_file, None if args.verbose else output_log))


def summary(results: list[dict], summary_file: Path, output_log: Path | None) -> str:
    lines = ['', 'VMamba demo results (untrained -> trained):']
    for result in results:
        scores = ', '.join(f'{k} {result["untrained"][k]:.3f} -> {result["trained"][k]:.3f}'
                           for k in METRICS[result['task']])
        lines += [
            f'  {result["task"]}: {scores}  ({result["iterations"]} iterations, {result["seconds"]} s)',
            f'    logs:           {result["log_dir"]}',
            f'    checkpoints:    {", ".join(result["checkpoints"])}',
            f'    visualisations: {result["visualizations"]} ({result["num_visualizations"]} PNG files)',
        ]
    lines.append(f'  summary: {summary_file.resolve()}')
    if output_log is not None:
        lines.append(f"  the runners' output: {output_log}")
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
