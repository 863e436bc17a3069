"""Test-time throughput (images/s) of a full detector or segmentor built from a config.

Each pass is what ``tools/test.py`` runs per batch: ``model.test_step`` (data preprocessor: normalisation and
padding; then ``predict``: backbone, neck/heads and post-processing such as NMS, mask pasting or resizing the
logits) on synthetic ``--shape`` images. ``--warmup`` passes are not timed; the median of ``--iters`` timed passes
gives images/s. On CUDA every pass is synchronised. Random weights are fine for the backbone/neck cost but change
the number of detections, so the detector's post-processing time depends on ``--checkpoint``.

Examples::

    python tools/analysis/benchmark.py configs/det/mask-rcnn_vmamba-t_fpn_1x_coco.py --checkpoint ckpt.pth
    python tools/analysis/benchmark.py configs/seg/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py --shape 512 2048
"""
import argparse
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from analysis_common import DEFAULT_OUT_DIR, build_model, load_config, task_of, write_json

# (H, W) of a test image after the test pipeline: COCO images resized to (1333, 800) are at most 800 x 1333;
# ADE20K images resized to (2048, 512) keep the ratio, about 512 x 683 for the typical 4:3 image.
DEFAULT_SHAPES = {'det': (800, 1333), 'seg': (512, 683)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Test-time images/s of a detector or segmentor (model.test_step on synthetic images).',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Examples::' + __doc__.split('Examples::')[1])
    parser.add_argument('config', help='mmdet or mmseg config')
    parser.add_argument('--checkpoint', help='weights to load (strict). Default: random initialisation')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='image height and width. Default: 800 1333 (det), 512 683 (seg)')
    parser.add_argument('--batch-size', type=int, default=1, help='images per pass. Default: 1')
    parser.add_argument('--warmup', type=int, default=5, help='untimed passes. Default: 5')
    parser.add_argument('--iters', type=int, default=20, help='timed passes. Default: 20')
    parser.add_argument('--amp', action='store_true', help='autocast to --amp-dtype (CUDA only)')
    parser.add_argument('--amp-dtype', choices=('float16', 'bfloat16'), default='float16', help='Default: float16')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='Default: cuda if available, else cpu')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE', help='override config settings')
    parser.add_argument('--out-dir', default=DEFAULT_OUT_DIR, help=f'Default: {DEFAULT_OUT_DIR}')
    args = parser.parse_args(argv)
    if args.amp and not args.device.startswith('cuda'):
        parser.error('--amp needs a CUDA device')
    if min(args.batch_size, args.iters) < 1 or args.warmup < 0:
        parser.error('--batch-size and --iters must be >= 1, --warmup >= 0')
    return args


def synthetic_batch(task: str, height: int, width: int, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """What a test dataloader yields: uint8 ``[3, H, W]`` images and data samples with their meta information."""
    if task == 'det':
        from mmdet.structures import DetDataSample as DataSample
    else:
        from mmseg.structures import SegDataSample as DataSample
    generator = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator))
        sample = DataSample()
        sample.set_metainfo(dict(img_id=i, img_path=f'synthetic_{i}.jpg', img_shape=(height, width),
                                 ori_shape=(height, width), pad_shape=(height, width), scale_factor=(1.0, 1.0),
                                 flip=False, flip_direction=None))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def benchmark(model: nn.Module, batch: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    autocast = torch.autocast('cuda', dtype=getattr(torch, args.amp_dtype), enabled=args.amp)
    times = []
    with torch.no_grad(), autocast:
        for i in range(args.warmup + args.iters):
            _synchronize(device)
            start = time.perf_counter()
            model.test_step(batch)
            _synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    median = float(np.median(times))
    result = dict(median_ms=1e3 * median, mean_ms=1e3 * float(np.mean(times)), min_ms=1e3 * min(times),
                  max_ms=1e3 * max(times), img_per_s=args.batch_size / median)
    if device.type == 'cuda':
        result['peak_mem_mb'] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    task = task_of(cfg)
    model = build_model(cfg, task, checkpoint=args.checkpoint)
    model.to(args.device)
    height, width = args.shape or DEFAULT_SHAPES[task]
    batch = synthetic_batch(task, height, width, args.batch_size)
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats(torch.device(args.device))
    result = benchmark(model, batch, args)

    device = (torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith('cuda') else
              f'CPU ({platform.machine()}, {torch.get_num_threads()} threads)')
    report = dict(config=args.config, checkpoint=args.checkpoint, task=task, device=device, torch=torch.__version__,
                  shape=[height, width], batch_size=args.batch_size, warmup=args.warmup, iters=args.iters,
                  amp=args.amp_dtype if args.amp else None, **result)
    lines = [
        f'config:     {args.config}',
        f"weights:    {args.checkpoint or 'random initialisation'}",
        f"device:     {device}, torch {torch.__version__}, {'autocast ' + args.amp_dtype if args.amp else 'fp32'}",
        f'input:      batch {args.batch_size} x 3 x {height} x {width} (model.test_step)',
        f"throughput: {result['img_per_s']:.2f} img/s (median {result['median_ms']:.1f} ms a pass over "
        f"{args.iters} passes after {args.warmup} warm-up; min {result['min_ms']:.1f}, max {result['max_ms']:.1f})",
    ]
    if 'peak_mem_mb' in result:
        lines.append(f"peak mem:   {result['peak_mem_mb']:.0f} MiB (torch.cuda.max_memory_allocated)")
    text = '\n'.join(lines)
    print(text)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f'benchmark_{Path(args.config).stem}_{height}x{width}_bs{args.batch_size}'
    (out_dir / f'{name}.txt').write_text(text + '\n')
    write_json(out_dir / f'{name}.json', report)
    print(f'\nwrote {out_dir / name}.txt and .json')
    return report


if __name__ == '__main__':
    main()
