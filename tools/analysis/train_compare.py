"""Train a VMamba detector/segmentor and its Swin-T counterpart on the same data at the real input sizes, side by side.

    python tools/analysis/train_compare.py --task det --iters 300 --amp    # Mask R-CNN 1333x800, VMamba-T vs Swin-T
    python tools/analysis/train_compare.py --task seg --iters 300 --amp    # UperNet 512x512 crops
    python tools/analysis/train_compare.py --task det --keep-ratio --iters 300 --amp   # COCO-like image sizes

Each model is trained from random initialisation through mmengine's Runner from this repository's config and the
stock mmdet / mmseg Swin-T config, both switched to the generated shapes dataset (``data/shapes``, made on first
use; images are resized to the real training sizes: 1333x800 for Mask R-CNN, the ADE20K 512x512 crop pipeline for
UperNet) and to an iteration-based schedule; then evaluated once. Reported per model: median seconds per
iteration after warm-up, the backbone's share of it (GPU-stream time from its forward's start to its end, and from
the first gradient reaching its outputs to its first layer's weight gradient), peak GPU memory, first and last
losses, whether any loss was NaN/inf, and the metrics.

``--keep-ratio`` (Mask R-CNN) keeps the shipped pipelines' keep-ratio ``Resize`` to 1333x800 and the data
preprocessor's padding to multiples of 32, and first gives each image a COCO-like size (a non-keep-ratio resize to a
size drawn from ``mmvmamba.analysis.coco_sizes``: landscape, portrait and squarish images as in COCO), so every batch
has a shape of COCO's keep-ratio training.
"""
import argparse
import json
import math
import random
import statistics
import tempfile
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mmvmamba.analysis.coco_sizes import draw_image_size
from mmvmamba.datasets.synthetic_shapes import generate_shapes_dataset
from mmvmamba.engine.config_utils import use_amp

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    'det': {
        'vmamba-t': str(REPO / 'configs/det/mask-rcnn_vmamba-t_fpn_1x_coco.py'),
        'swin-t': 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    },
    'seg': {
        'vmamba-t': str(REPO / 'configs/seg/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py'),
        'swin-t': 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    },
}
# Variants of a configured model: (model of CONFIGS, backbone settings to change).
VARIANTS = {
    'vmamba-t-graph': ('vmamba-t', dict(cuda_graph=True)),
    'vmamba-t-eager': ('vmamba-t', dict(compile=False)),
}
DET_CLASSES = ('square', 'circle', 'triangle')
SEG_CLASSES = ('background', 'square', 'circle', 'triangle')


def load_config(path: str) -> Config:
    if path.startswith(('mmdet::', 'mmseg::')):  # a stock config: inherit it from a one-line file
        with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:
            f.write(f"_base_ = ['{path}']\n")
        return Config.fromfile(f.name)
    return Config.fromfile(path)


def _det_dataset(root: str, split: str, pipeline: list, test_mode: bool) -> dict:
    return dict(type='CocoDataset', data_root=root, metainfo=dict(classes=DET_CLASSES),
                ann_file=f'annotations/instances_{split}.json', data_prefix=dict(img=f'images/{split}/'),
                filter_cfg=dict(filter_empty_gt=not test_mode, min_size=4), test_mode=test_mode, pipeline=pipeline)


def _seg_dataset(root: str, split: str, pipeline: list, test_mode: bool) -> dict:
    return dict(type='BaseSegDataset', data_root=root, metainfo=dict(classes=SEG_CLASSES), img_suffix='.png',
                seg_map_suffix='.png', reduce_zero_label=True, test_mode=test_mode, pipeline=pipeline,
                data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'))


def coco_like_sizes(count: int = 1000, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` (width, height) draws of the COCO size model: a uniform choice among them follows the model."""
    rng = random.Random(seed)
    return [draw_image_size(rng) for _ in range(count)]


def adapt(cfg: Config, task: str, root: str, iters: int, amp: bool, batch: int, work_dir: Path,
          workers: int = 2, keep_ratio: bool = False) -> Config:
    """Switch a COCO / ADE20K config to the shapes data, random initialisation and ``iters`` iterations."""
    cfg.work_dir = str(work_dir)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.pop('pretrained', None)
    if task == 'det':
        cfg.model.roi_head.bbox_head.num_classes = cfg.model.roi_head.mask_head.num_classes = len(DET_CLASSES)
        for pipeline in (cfg.train_pipeline, cfg.test_pipeline):
            resize = next(i for i, step in enumerate(pipeline) if step['type'] == 'Resize')
            if keep_ratio:  # a COCO-like image size first; the config's own keep-ratio Resize stays
                pipeline.insert(resize, dict(type='RandomChoiceResize', scales=coco_like_sizes(),
                                             resize_type='mmdet.Resize', keep_ratio=False))
            else:  # every image at the COCO training size
                pipeline[resize].update(scale=(1333, 800), keep_ratio=False)
        train = _det_dataset(root, 'training', cfg.train_pipeline, False)
        val = _det_dataset(root, 'validation', cfg.test_pipeline, True)
        cfg.val_evaluator = dict(type='CocoMetric', ann_file=f'{root}/annotations/instances_validation.json',
                                 metric=['bbox', 'segm'])
    else:
        cfg.model.decode_head.num_classes = cfg.model.auxiliary_head.num_classes = len(SEG_CLASSES)
        train = _seg_dataset(root, 'training', cfg.train_pipeline, False)
        val = _seg_dataset(root, 'validation', cfg.test_pipeline, True)
        cfg.val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_dataloader = dict(batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                                sampler=dict(type='InfiniteSampler', shuffle=True), dataset=train)
    cfg.val_dataloader = cfg.test_dataloader = dict(batch_size=1, num_workers=2, persistent_workers=False,
                                                    drop_last=False, sampler=dict(type='DefaultSampler',
                                                                                  shuffle=False), dataset=val)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)  # evaluated after
    cfg.val_cfg, cfg.test_cfg = dict(type='ValLoop'), dict(type='TestLoop')
    warmup = min(50, iters // 4)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup)]
    if amp:
        use_amp(cfg)
    else:
        cfg.optim_wrapper.type = 'OptimWrapper'
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=10, log_metric_by_epoch=False)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=iters)
    cfg.log_processor = dict(by_epoch=False)
    cfg.pop('auto_scale_lr', None)
    return cfg


def _history(runner: Runner, key: str) -> list[float]:
    if not runner.message_hub.log_scalars.get(key):
        return []
    return [float(v) for v in runner.message_hub.get_scalar(key).data[0]]


class BackboneTimer:
    """GPU-stream time of the backbone in each training iteration: its forward, and its backward from the first
    gradient reaching its outputs to the gradient of its first trained parameter (the stem: the last one made)."""

    def __init__(self, backbone: torch.nn.Module):
        self.iterations = []  # [forward start, forward end, backward start, backward end] CUDA events
        backbone.register_forward_pre_hook(self._forward_start)
        backbone.register_forward_hook(self._forward_end)
        first = next(p for p in backbone.parameters() if p.requires_grad)
        first.register_post_accumulate_grad_hook(lambda param: self._mark(3))

    @staticmethod
    def _event() -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _mark(self, index: int) -> None:
        if self.iterations and self.iterations[-1][index] is None:
            self.iterations[-1][index] = self._event()

    def _forward_start(self, module, args) -> None:
        if module.training and torch.is_grad_enabled():
            self.iterations.append([self._event(), None, None, None])

    def _forward_end(self, module, args, outputs) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        self._mark(1)
        for out in outputs:
            if out.requires_grad:
                out.register_hook(lambda grad: self._mark(2))

    def median_ms(self, skip: int) -> dict:
        torch.cuda.synchronize()
        done = [events for events in self.iterations[skip:] if None not in events] or self.iterations
        forward = [a.elapsed_time(b) for a, b, _, _ in done]
        backward = [c.elapsed_time(d) for _, _, c, d in done]
        return dict(backbone_forward_ms=round(statistics.median(forward), 2),
                    backbone_backward_ms=round(statistics.median(backward), 2))


def train_one(name: str, cfg: Config, warmup: int) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    runner = Runner.from_cfg(cfg)
    timer = BackboneTimer(runner.model.backbone) if torch.cuda.is_available() else None
    runner.train()
    times, losses = _history(runner, 'train/time'), _history(runner, 'train/loss')
    data_times = _history(runner, 'train/data_time')  # waiting for the data loader, part of `times`
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float('nan')
    metrics = runner.val_loop.run() if runner.val_loop is not None else {}
    steady = times[warmup:] or times
    data_wait = data_times[warmup:] or data_times or [float('nan')]
    shares = {}
    if timer is not None:
        shares = timer.median_ms(warmup)
        shares['backbone_share'] = round(
            (shares['backbone_forward_ms'] + shares['backbone_backward_ms']) / 1e3 / statistics.median(steady), 3)
    return dict(model=name, s_per_iter=round(statistics.median(steady), 4),
                data_s_per_iter=round(statistics.median(data_wait), 4), **shares, peak_mib=round(peak),
                first_loss=round(losses[0], 4), last_loss=round(statistics.mean(losses[-10:]), 4),
                nonfinite_losses=sum(not math.isfinite(v) for v in losses),
                metrics={k: round(float(v), 4) for k, v in metrics.items()})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', choices=sorted(CONFIGS), required=True)
    parser.add_argument('--models', nargs='+', default=['vmamba-t', 'swin-t'],
                        choices=['vmamba-t', 'swin-t', *VARIANTS],
                        help='vmamba-t-graph / vmamba-t-eager: the VMamba config with cuda_graph=True / compile=False '
                        'in the backbone')
    parser.add_argument('--keep-ratio', action='store_true',
                        help='det: COCO-like image sizes through the config\'s keep-ratio Resize (see above)')
    parser.add_argument('--iters', type=int, default=300)
    parser.add_argument('--warmup-iters', type=int, default=30, help='left out of the median time. Default: 30')
    parser.add_argument('--batch', type=int, default=2, help='images per iteration. Default: 2')
    parser.add_argument('--amp', action='store_true', help='fp16 autocast with a dynamic loss scale')
    parser.add_argument('--workers', type=int, default=2,
                        help='data loader processes (the recipes use 2 per GPU). Default: 2')
    parser.add_argument('--data-root', default='data/shapes')
    parser.add_argument('--out-dir', type=Path, default=Path('work_dirs/analysis/train_compare'))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.keep_ratio and args.task != 'det':
        raise SystemExit('--keep-ratio is for --task det (the segmentation recipes train on fixed 512x512 crops)')
    generate_shapes_dataset(args.data_root)
    rows = []
    for name in args.models:
        base, backbone_settings = VARIANTS.get(name, (name, {}))
        cfg = adapt(load_config(CONFIGS[args.task][base]), args.task, args.data_root, args.iters, args.amp,
                    args.batch, args.out_dir / args.task / name, args.workers, args.keep_ratio)
        cfg.model.backbone.update(backbone_settings)
        cfg.visualizer.name = f'train_compare_{args.task}_{name}'
        rows.append(train_one(name, cfg, args.warmup_iters))
        print(json.dumps(rows[-1]), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f'{args.task}{"-keep-ratio" if args.keep_ratio else ""}.json'
    out.write_text(json.dumps(dict(task=args.task, keep_ratio=args.keep_ratio, iters=args.iters, amp=args.amp,
                                   batch=args.batch,
                                   workers=args.workers,
                                   gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
                                   rows=rows), indent=1))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
