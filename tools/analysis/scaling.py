"""Input-size scaling of backbones: throughput and peak memory of VMamba, Swin-T and ResNet-50 as the input grows.

For each backbone and square input size, the backbone runs ``--warmup`` untimed and ``--iters`` timed passes
(inference under ``torch.no_grad``, or forward + backward with ``--train``); the median time gives images/s. On
CUDA the timing is synchronised and the peak memory is ``torch.cuda.max_memory_allocated`` over the timed passes
(weights included); on the CPU the time is wall-clock and memory is not measured. A size that runs out of GPU
memory is recorded as OOM and larger sizes of that backbone are skipped.

Linearity check: ``time / pixels`` at each size divided by the same at the smallest size (1.0 everywhere means
the cost grows linearly with the pixel count; attention over the whole image would grow it with the pixel count)
and the slope of ``log(time)`` against ``log(pixels)`` (1 linear, 2 quadratic), likewise for memory.

Outputs in ``--out-dir``: ``scaling.png`` (img/s and memory against the size), ``scaling.csv``, ``scaling.md``.

Examples::

    python tools/analysis/scaling.py --arch tiny --sizes 224 384 512 768 1024 1536 2048 --amp
    python tools/analysis/scaling.py configs/det/mask-rcnn_vmamba-t_fpn_1x_coco.py --train --batch-size 2
"""
import argparse
import csv
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from analysis_common import DEFAULT_OUT_DIR, build_backbone, build_resnet50, build_swin_t, load_config

MODEL_CHOICES = ('vmamba', 'swin-t', 'resnet50')
GPU_SIZES = (224, 384, 512, 768, 1024, 1280, 1536, 2048)
CPU_SIZES = (224, 384, 512)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Throughput and peak memory of VMamba vs Swin-T vs ResNet-50 backbones as the input grows; '
        'PNG plot, CSV and markdown table with a linearity check.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Examples::' + __doc__.split('Examples::')[1])
    parser.add_argument('config', nargs='?', help='det/seg config whose backbone is the VMamba one')
    parser.add_argument('--arch', help='VMamba preset instead of a config. Default: tiny (when no config)')
    parser.add_argument('--checkpoint', help='VMamba weights (timings do not depend on them)')
    parser.add_argument('--models', nargs='+', choices=MODEL_CHOICES, default=list(MODEL_CHOICES),
                        help=f'backbones to run. Default: {" ".join(MODEL_CHOICES)}')
    parser.add_argument('--sizes', type=int, nargs='+',
                        help=f'square input sides. Default: {" ".join(map(str, GPU_SIZES))} on CUDA, '
                        f'{" ".join(map(str, CPU_SIZES))} on the CPU')
    parser.add_argument('--batch-size', type=int, default=1, help='Default: 1')
    parser.add_argument('--warmup', type=int, default=3, help='untimed passes per size. Default: 3')
    parser.add_argument('--iters', type=int, default=10, help='timed passes per size. Default: 10')
    parser.add_argument('--train', action='store_true', help='time forward + backward instead of inference')
    parser.add_argument('--amp', action='store_true', help='autocast to --amp-dtype (CUDA only)')
    parser.add_argument('--amp-dtype', choices=('float16', 'bfloat16'), default='bfloat16', help='Default: bfloat16')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='Default: cuda if available, else cpu')
    parser.add_argument('--out-dir', default=DEFAULT_OUT_DIR, help=f'Default: {DEFAULT_OUT_DIR}')
    args = parser.parse_args(argv)
    if args.config is not None and args.arch is not None:
        parser.error('give either a CONFIG or --arch, not both')
    if args.config is None and args.arch is None:
        args.arch = 'tiny'
    if args.amp and not args.device.startswith('cuda'):
        parser.error('--amp needs a CUDA device')
    if min(args.batch_size, args.iters) < 1 or args.warmup < 0:
        parser.error('--batch-size and --iters must be >= 1, --warmup >= 0')
    if args.sizes is None:
        args.sizes = list(GPU_SIZES if args.device.startswith('cuda') else CPU_SIZES)
    args.sizes = sorted(set(args.sizes))
    if args.sizes[0] < 32:
        parser.error('sizes must be >= 32 (ResNet-50 and Swin-T downsample by 32)')
    return args


def build_models(args: argparse.Namespace) -> dict[str, nn.Module]:
    models = {}
    for name in args.models:
        if name == 'vmamba':
            if args.config:
                models[f'VMamba ({Path(args.config).stem})'] = build_backbone(
                    load_config(args.config), checkpoint=args.checkpoint)
            else:
                models[f'VMamba-{args.arch}'] = build_backbone(arch=args.arch, checkpoint=args.checkpoint)
        elif name == 'swin-t':
            models['Swin-T'] = build_swin_t()
        else:
            models['ResNet-50'] = build_resnet50()
    return models


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _pass(model: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:

    def run() -> None:
        if train:
            outs = model(x)
            outs = [outs] if isinstance(outs, torch.Tensor) else outs
            sum(out.float().sum() for out in outs).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    return run


def measure(model: nn.Module, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """One row: median time, img/s and (CUDA) peak memory of ``model`` at ``size``."""
    device = torch.device(args.device)
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    run = _pass(model, x, args.train)
    autocast = torch.autocast('cuda', dtype=getattr(torch, args.amp_dtype), enabled=args.amp)
    row: dict[str, Any] = dict(size=size, pixels=size * size, batch=args.batch_size)
    try:
        with autocast:
            for _ in range(args.warmup):
                run()
            _synchronize(device)
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            for _ in range(args.iters):
                start = time.perf_counter()
                run()
                _synchronize(device)
                times.append(time.perf_counter() - start)
    except torch.cuda.OutOfMemoryError:
        del x
        torch.cuda.empty_cache()
        return dict(row, status='OOM', ms=None, img_per_s=None, peak_mem_mb=None)
    median = float(np.median(times))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == 'cuda' else None
    return dict(row, status='ok', ms=1e3 * median, img_per_s=args.batch_size / median, peak_mem_mb=peak)


def add_linearity(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Adds ``time_per_pixel_ratio`` (and ``mem_per_pixel_ratio``) to ``rows`` of one model; returns the slopes."""
    ok = [row for row in rows if row['status'] == 'ok']
    for row in rows:
        row['time_per_pixel_ratio'] = row['mem_per_pixel_ratio'] = None
    if not ok:
        return dict(time_slope=None, mem_slope=None)
    base = ok[0]
    for row in ok:
        row['time_per_pixel_ratio'] = (row['ms'] / row['pixels']) / (base['ms'] / base['pixels'])
        if row['peak_mem_mb'] is not None:
            row['mem_per_pixel_ratio'] = (row['peak_mem_mb'] / row['pixels']) / (base['peak_mem_mb'] / base['pixels'])
    slopes: dict[str, float | None] = dict(time_slope=None, mem_slope=None)
    if len(ok) >= 2:
        log_pixels = np.log([row['pixels'] for row in ok])
        slopes['time_slope'] = float(np.polyfit(log_pixels, np.log([row['ms'] for row in ok]), 1)[0])
        if all(row['peak_mem_mb'] is not None for row in ok):
            slopes['mem_slope'] = float(np.polyfit(log_pixels, np.log([row['peak_mem_mb'] for row in ok]), 1)[0])
    return slopes


def _fmt(value: float | None, spec: str) -> str:
    return '-' if value is None else format(value, spec)


def markdown(results: dict[str, list[dict[str, Any]]], slopes: dict[str, dict[str, float | None]],
             header: str) -> str:
    lines = [
        header, '', '| backbone | size | img/s | ms / batch | peak mem (MiB) | time/pixel vs smallest '
        '| mem/pixel vs smallest |', '|---|---|---|---|---|---|---|'
    ]
    for name, rows in results.items():
        for row in rows:
            if row['status'] != 'ok':
                lines.append(f"| {name} | {row['size']} | {row['status']} | - | - | - | - |")
                continue
            lines.append(f"| {name} | {row['size']} | {row['img_per_s']:.2f} | {row['ms']:.1f} | "
                         f"{_fmt(row['peak_mem_mb'], '.0f')} | {_fmt(row['time_per_pixel_ratio'], '.2f')} | "
                         f"{_fmt(row['mem_per_pixel_ratio'], '.2f')} |")
    lines += ['', 'Linearity: slope of log(time) and log(peak memory) against log(pixels) '
              '(1 = linear in the pixel count, 2 = quadratic):', '',
              '| backbone | time slope | memory slope |', '|---|---|---|']
    for name, slope in slopes.items():
        lines.append(f"| {name} | {_fmt(slope['time_slope'], '.2f')} | {_fmt(slope['mem_slope'], '.2f')} |")
    return '\n'.join(lines)


def plot(results: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    with_memory = any(row['peak_mem_mb'] is not None for rows in results.values() for row in rows)
    fig, axes = plt.subplots(1, 3 if with_memory else 2, figsize=(15 if with_memory else 10, 4.2))
    for name, rows in results.items():
        ok = [row for row in rows if row['status'] == 'ok']
        if not ok:
            continue
        sizes = [row['size'] for row in ok]
        axes[0].plot(sizes, [row['img_per_s'] for row in ok], marker='o', label=name)
        axes[1].plot(sizes, [row['time_per_pixel_ratio'] for row in ok], marker='o', label=name)
        if with_memory:
            axes[2].plot(sizes, [row['peak_mem_mb'] for row in ok], marker='o', label=name)
    axes[0].set(xlabel='input side (px)', ylabel='images / s', yscale='log', title='throughput')
    axes[1].axhline(1.0, color='grey', linestyle='--', linewidth=1)
    axes[1].set(xlabel='input side (px)', ylabel='(time / pixel) / same at smallest size',
                title='linearity (1 = linear in pixels)')
    if with_memory:
        axes[2].set(xlabel='input side (px)', ylabel='peak memory (MiB)', yscale='log', title='peak memory')
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def device_name(device: str) -> str:
    if device.startswith('cuda'):
        return torch.cuda.get_device_name(torch.device(device))
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    models = build_models(args)
    results: dict[str, list[dict[str, Any]]] = {}
    slopes: dict[str, dict[str, float | None]] = {}
    for name, model in models.items():
        model.to(args.device)
        model.train(args.train)
        rows = []
        for size in args.sizes:
            row = measure(model, size, args)
            rows.append(row)
            print(f"{name:<28} {size:>5}  {row['status']:<3}  {_fmt(row['img_per_s'], '9.2f')} img/s  "
                  f"{_fmt(row['peak_mem_mb'], '8.0f')} MiB", flush=True)
            if row['status'] == 'OOM':
                rows += [dict(size=s, pixels=s * s, batch=args.batch_size, status='skipped', ms=None,
                              img_per_s=None, peak_mem_mb=None) for s in args.sizes if s > size]
                break
        slopes[name] = add_linearity(rows)
        results[name] = rows
        model.to('cpu')
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()

    mode = 'forward+backward' if args.train else 'inference'
    precision = f'autocast {args.amp_dtype}' if args.amp else 'fp32'
    header = (f'Backbone scaling on {device_name(args.device)}, torch {torch.__version__}, {mode}, {precision}, '
              f'batch {args.batch_size}, median of {args.iters} after {args.warmup} warm-up passes'
              + ('' if args.device.startswith('cuda') else '; wall-clock, memory not measured on the CPU'))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = ['backbone', 'size', 'pixels', 'batch', 'status', 'ms', 'img_per_s', 'peak_mem_mb',
              'time_per_pixel_ratio', 'mem_per_pixel_ratio']
    with open(out_dir / 'scaling.csv', 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for name, rows in results.items():
            for row in rows:
                writer.writerow({'backbone': name, **{key: row.get(key) for key in fields[1:]}})
    table = markdown(results, slopes, header)
    (out_dir / 'scaling.md').write_text(table + '\n')
    plot(results, out_dir / 'scaling.png', header if len(header) < 110 else header[:header.index(', batch')])
    print('\n' + table)
    print(f"\nwrote {out_dir / 'scaling.png'}, {out_dir / 'scaling.csv'} and {out_dir / 'scaling.md'}")
    return dict(results=results, slopes=slopes)


if __name__ == '__main__':
    main()
