"""The demo: train and evaluate a small VMamba Mask R-CNN and a small VMamba UperNet on generated data, on the CPU.

    python tools/demo.py                       # both tasks, default iterations, outputs in work_dirs/demo
    python tools/demo.py --task seg --seg-iters 100 --work-dir work_dirs/demo_seg

On its first run it writes a deterministic shapes dataset to data/shapes/ (no download; see
mmvmamba/datasets/synthetic_shapes.py). Each task then evaluates the untrained model (the baseline), trains it
(configs/det/mask-rcnn_vmamba-demo_fpn_shapes.py, configs/seg/upernet_vmamba-demo_shapes-128x128.py), evaluates it
with mmdet's CocoMetric (box and mask AP) or mmseg's IoUMetric (mIoU), draws the predictions as PNG files, and
prints where the logs, checkpoints and drawings are. The same configs train on a GPU when one is visible.
"""
import argparse
import copy
import json
import os.path as osp
import time
from pathlib import Path

from mmengine.config import Config
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--task', choices=['det', 'seg', 'both'], default='both', help='Default: both')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='Default: work_dirs/demo')
    parser.add_argument('--data-root', default='data/shapes', help='generated here if absent. Default: data/shapes')
    parser.add_argument('--det-iters', type=int, help='training iterations of the detector (config default: 400)')
    parser.add_argument('--seg-iters', type=int, help='training iterations of the segmentor (config default: 300)')
    parser.add_argument('--num-train', type=int, default=96, help='generated training images. Default: 96')
    parser.add_argument('--num-val', type=int, default=24, help='generated validation images. Default: 24')
    return parser.parse_args()


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


def run_task(task: str, args: argparse.Namespace) -> dict:
    work_dir = osp.join(args.work_dir, task)
    cfg = build_cfg(task, work_dir, args.data_root, args.det_iters if task == 'det' else args.seg_iters)
    start = time.time()
    baseline = evaluate_untrained(cfg, task)

    vis_dir = osp.join(work_dir, 'vis')
    enable_visualization(cfg, vis_dir)
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    pngs = sorted(str(p) for p in Path(vis_dir).rglob('*.png'))
    return dict(
        task=task,
        config=str(CONFIGS[task]),
        iterations=cfg.train_cfg.max_iters,
        untrained={k: float(baseline.get(k, 0.0)) for k in METRICS[task]},
        trained={k: float(metrics.get(k, 0.0)) for k in METRICS[task]},
        seconds=round(time.time() - start, 1),
        log_dir=osp.abspath(runner.log_dir),
        checkpoints=sorted(osp.abspath(p) for p in Path(work_dir).glob('iter_*.pth')),
        visualizations=osp.abspath(vis_dir),
        num_visualizations=len(pngs))


def main() -> None:
    args = parse_args()
    data_root = generate_shapes_dataset(args.data_root, num_train=args.num_train, num_val=args.num_val)
    print(f'demo data: {osp.abspath(data_root)}')
    tasks = ['det', 'seg'] if args.task == 'both' else [args.task]
    results = [run_task(task, args) for task in tasks]

    summary_file = Path(args.work_dir) / 'demo_results.json'
    summary_file.write_text(json.dumps(results, indent=2))
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
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
