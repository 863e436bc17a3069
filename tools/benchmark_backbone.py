"""Whole-model speed and memory of VMamba on a GPU, measured the way ../shared/spec/anchors.md measures the official.

    python tools/benchmark_backbone.py                       # every case of the anchors table
    python tools/benchmark_backbone.py --cases cls-tiny dense-coco --dtype bf16
    python tools/benchmark_backbone.py --stability-steps 1000  # dense fp16 training with a GradScaler: NaN/inf check
    python tools/benchmark_backbone.py --keep-ratio 2000       # COCO keep-ratio shapes: the real detection workload

Cases: ``cls-{tiny,small,base}``: the classification-shaped model (backbone, LayerNorm, average pool, 1000-way
linear head) at 224x224, batch 128; ``dense-coco``: VMamba-T backbone (4 outputs) on 2x3x800x1333; ``dense-ade``:
8x3x512x512. Each is timed for inference (``torch.no_grad``) and forward+backward (no optimizer) with CUDA events
after warm-up; the median of ``--iters`` runs is reported with peak memory. Settings as the official throughput
script: cudnn.benchmark on, TF32 for convolutions on, TF32 for matmul off, autocast in ``--dtype``.

``--keep-ratio N`` instead trains the dense VMamba-T backbone (fwd+bwd, fp16 autocast as mmdet trains) over a seeded
stream of N COCO-like batch shapes (``mmvmamba.analysis.coco_sizes``: batches of 2 resized to fit 1333x800 and padded
to multiples of 32), each batch of a new random input, after a per-process warm-up on shapes outside the stream
(reported apart: it holds the compile). It prints the mean ms/step over the whole stream including every one-off
cost, first-sight and repeat means, the compiles during the stream, peak memory, and for the 40 distinct shapes of
anchors.md a first and a second (steady-state) pass with GPU-busy time, host-issue time and kernels per step.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.autograd import DeviceType

from mmvmamba import VMamba
from mmvmamba.analysis.coco_sizes import batch_shapes, distinct_batch_shapes

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
CASES = {
    'cls-tiny': dict(arch='tiny', shape=(128, 3, 224, 224), classifier=True),
    'cls-small': dict(arch='small', shape=(128, 3, 224, 224), classifier=True),
    'cls-base': dict(arch='base', shape=(128, 3, 224, 224), classifier=True),
    'dense-coco': dict(arch='tiny', shape=(2, 3, 800, 1333), classifier=False),
    'dense-ade': dict(arch='tiny', shape=(8, 3, 512, 512), classifier=False),
}


class Classifier(nn.Module):
    """The official classification model's shape: backbone, norm of the last stage, average pool, linear head.

    The backbone's ``outnorm3`` plays the official ``classifier.norm`` (a LayerNorm over the last stage's channels).
    """

    def __init__(self, arch: str, num_classes: int = 1000, **backbone_options):
        super().__init__()
        self.backbone = VMamba(arch=arch, out_indices=(3, ), **backbone_options)
        self.head = nn.Linear(self.backbone.dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[0].mean((2, 3)))


# How the backbone runs: eager, compiled (the default on CUDA), compiled with CUDA graph trees, or our graph cache.
VARIANTS = {
    'eager': dict(compile=False),
    'compiled': dict(compile=True),
    'compiled-reduce-overhead': dict(compile=True, compile_mode='reduce-overhead'),
    'graphed': dict(compile=False, cuda_graph=True),
}


def build(case: dict, variant: str = 'eager') -> nn.Module:
    options = dict(VARIANTS[variant])
    mode = options.pop('compile_mode', None)
    model = Classifier(case['arch'], **options) if case['classifier'] else VMamba(arch=case['arch'], **options)
    backbone = model.backbone if case['classifier'] else model
    backbone.compiled_forward.mode = mode
    return model.cuda()


def loss_of(outputs) -> torch.Tensor:
    outputs = outputs if isinstance(outputs, tuple) else (outputs, )
    return sum(o.float().square().mean() for o in outputs)


def time_ms(step, warmup: int, iters: int) -> float:
    """Median milliseconds of ``step()`` over ``iters`` runs, each between two CUDA events, after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_issue_ms(step, iters: int = 5) -> float:
    """Median host time to issue one step from an idle GPU (the GPU waits whenever this exceeds the kernels' time)."""
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - start))
    torch.cuda.synchronize()
    return statistics.median(times)


def graph_ms(step, iters: int) -> float:
    """Milliseconds of ``step`` replayed from a CUDA graph: its GPU time without the host's launch overhead."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return time_ms(graph.replay, 3, iters)


def make_step(runner, x: torch.Tensor, mode: str, dtype: torch.dtype, autocast_cache: bool = True):
    def step():
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32, cache_enabled=autocast_cache):
            if mode == 'infer':
                with torch.no_grad():
                    runner(x)
            else:
                loss_of(runner(x)).backward()

    return step


def measure(name: str, dtype: torch.dtype, warmup: int, iters: int, variant: str,
            cuda_graph: bool = False) -> list[dict]:
    case = CASES[name]
    model = build(case, variant)
    x = torch.randn(case['shape'], device='cuda')
    batch = case['shape'][0]
    rows = []
    for mode in ('infer', 'train'):
        model.train(mode == 'train')
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step = make_step(model, x, mode, dtype)
        ms = time_ms(step, warmup, iters)
        rows.append(dict(case=name, mode=mode, dtype=str(dtype).removeprefix('torch.'), variant=variant,
                         shape=list(case['shape']), ms=round(ms, 3), img_per_s=round(batch * 1000 / ms, 1),
                         peak_mib=round(torch.cuda.max_memory_allocated() / 2**20),
                         host_issue_ms=round(host_issue_ms(step), 3)))
        if cuda_graph and variant == 'eager':
            # autocast's weight-cast cache cannot outlive a capture (torch.cuda.make_graphed_callables' rule)
            rows[-1]['cuda_graph_ms'] = round(graph_ms(make_step(model, x, mode, dtype, False), iters), 3)
        print(json.dumps(rows[-1]), flush=True)
    del model
    return rows


def kernel_profile(step, steps: int) -> tuple[float, float]:
    """(GPU-busy ms, kernels) per call of ``step``, from the profiler's kernel records over ``steps`` calls."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    return (sum(e.self_device_time_total for e in events) / 1e3 / steps, sum(e.count for e in events) / steps)


def keep_ratio(batches: int, variant: str, dtype: torch.dtype, seed: int = 0) -> dict:
    """Dense VMamba-T fwd+bwd over a stream of COCO keep-ratio batch shapes (see the module docstring)."""
    model = build(CASES['dense-coco'], variant).train()
    generator = torch.Generator(device='cuda').manual_seed(seed)

    def train_step(hw):
        x = torch.randn((2, 3, *hw), device='cuda', generator=generator)
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            outs = model(x)
        loss_of(outs).backward()
        model.zero_grad(set_to_none=True)

    def timed(hw) -> float:
        start = time.perf_counter()
        train_step(hw)
        torch.cuda.synchronize()
        return 1e3 * (time.perf_counter() - start)

    stream = [hw for hw, _ in zip(batch_shapes(seed), range(batches))]
    listed = distinct_batch_shapes(40, seed)
    outside = [hw for hw in ((768, 1024), (1024, 768), (896, 896), (704, 1280), (1312, 704)) if hw not in stream]
    compiled = model.compiled_forward
    torch.cuda.synchronize()
    start = time.perf_counter()
    for hw in outside[:3]:
        train_step(hw)
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    warm_compiles, warm_compile_s = compiled.compiles, compiled.compile_seconds
    torch.cuda.reset_peak_memory_stats()

    seen, first, repeat = set(), [], []
    start = time.perf_counter()
    for hw in stream:
        (repeat if hw in seen else first).append(timed(hw))
        seen.add(hw)
    stream_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20

    first_pass = [timed(hw) for hw in listed]  # shapes the stream saw already, except those it never drew
    steady = [timed(hw) for hw in listed]
    common = max(set(stream), key=stream.count)
    host = host_issue_ms(lambda: train_step(common))
    shapes = iter(listed * 2)
    gpu_ms, kernels = kernel_profile(lambda: train_step(next(shapes)), 10)
    row = dict(case='keep-ratio', variant=variant, dtype=str(dtype).removeprefix('torch.'), batches=batches, seed=seed,
               distinct_shapes=len(seen), warmup_s=round(warmup_s, 1), warmup_compiles=warm_compiles,
               warmup_compile_s=round(warm_compile_s, 1),
               stream_mean_ms=round(1e3 * stream_s / batches, 2),
               stream_first_sight_ms=round(statistics.mean(first), 2),
               stream_repeat_ms=round(statistics.mean(repeat), 2) if repeat else None,
               stream_compiles=compiled.compiles - warm_compiles,
               stream_compile_s=round(compiled.compile_seconds - warm_compile_s, 1),
               stream_peak_mib=round(peak),
               list40_first_pass_ms=round(statistics.mean(first_pass), 2),
               list40_steady_ms=round(statistics.mean(steady), 2),
               list40_gpu_busy_ms=round(gpu_ms, 2), list40_kernels_per_step=round(kernels),
               host_issue_ms=round(host, 2), host_issue_shape=list(common))
    print(json.dumps(row), flush=True)
    return row


def profile(name: str, dtype: torch.dtype, mode: str, rows: int = 25) -> None:
    """Print the CUDA kernels that take the most time in one step (after warm-up), grouped by name."""
    case = CASES[name]
    model = build(case).train(mode == 'train')
    x = torch.randn(case['shape'], device='cuda')
    step = make_step(model, x, mode, dtype)
    for _ in range(3):
        step()
    host_ms = host_issue_ms(step)
    step_ms = time_ms(step, 0, 5)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        step()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    # kernels only: the operators that launched them carry the same device time again
    events = [e for e in averages if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    launches = sum(e.count for e in events)
    print(f'== profile {name} {mode} {dtype}: step {step_ms:.2f} ms, host issue {host_ms:.2f} ms, '
          f'{total / 1e3:.2f} ms of GPU kernels in {launches} launches')
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:rows]:
        print(f'{e.self_device_time_total / 1e3:8.3f} ms {100 * e.self_device_time_total / total:5.1f}% '
              f'{e.count:5d}x  {e.key[:110]}')
    print('-- host: operators by self CPU time')
    for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:rows // 2]:
        print(f'{e.self_cpu_time_total / 1e3:8.3f} ms {e.count:5d}x  {e.key[:110]}')


def stability(steps: int) -> dict:
    """Dense VMamba-T training steps under fp16 autocast with a GradScaler and AdamW; counts non-finite values."""
    model = VMamba(arch='tiny').cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler('cuda')
    generator = torch.Generator(device='cuda').manual_seed(0)
    nonfinite_losses, skipped_steps = 0, 0
    for _ in range(steps):
        x = torch.randn((2, 3, 800, 1333), device='cuda', generator=generator)
        with torch.autocast('cuda', dtype=torch.float16):
            outs = model(x)
            loss = sum(o.float().square().mean() for o in outs)
        nonfinite_losses += int(not torch.isfinite(loss))
        optimizer.zero_grad(set_to_none=True)
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        skipped_steps += int(scaler.get_scale() < scale)  # the scaler skips a step when it found inf/NaN grads
    params_finite = all(torch.isfinite(p).all() for p in model.parameters())
    result = dict(check='stability', steps=steps, nonfinite_losses=nonfinite_losses, scaler_skipped_steps=skipped_steps,
                  params_finite=bool(params_finite), final_loss=float(loss))
    print(json.dumps(result), flush=True)
    return result


def settings(commit: str | None) -> dict:
    commit = commit or subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                                      cwd=Path(__file__).parent).stdout.strip()
    return dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                tf32_conv=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                commit=commit or 'unknown')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cases', nargs='+', choices=sorted(CASES), default=list(CASES))
    parser.add_argument('--dtype', nargs='+', choices=sorted(DTYPES))
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--variants', nargs='+', choices=sorted(VARIANTS), default=['eager'],
                        help='how the backbone runs: eager, compiled (torch.compile, dynamic H/W: the default on '
                        'CUDA), compiled-reduce-overhead (with CUDA graph trees), graphed (cuda_graph=True)')
    parser.add_argument('--cuda-graph', action='store_true',
                        help='also time each eager step replayed from a CUDA graph (GPU time without host overhead)')
    parser.add_argument('--keep-ratio', type=int, default=0, metavar='N',
                        help='time the keep-ratio stream of N COCO-like batches instead (fp16 unless --dtype is given)')
    parser.add_argument('--cudnn-benchmark', choices=['on', 'off'], default='on',
                        help="cuDNN's autotuner: on as the official throughput script, off as mmdet's default")
    parser.add_argument('--stability-steps', type=int, default=0, help='run this many fp16 training steps instead')
    parser.add_argument('--profile', choices=['infer', 'train'], help='print a kernel profile of each case instead')
    parser.add_argument('--out', type=Path, help='write the rows as JSON here')
    parser.add_argument('--commit', help='commit label to record (default: git rev-parse of this checkout)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit('benchmark_backbone.py needs a CUDA GPU')
    torch.backends.cudnn.benchmark = args.cudnn_benchmark == 'on'
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False
    info = settings(args.commit)
    print(json.dumps(info), flush=True)
    dtypes = args.dtype or (['fp16'] if args.keep_ratio else ['bf16'])
    if args.profile:
        for name in args.cases:
            profile(name, DTYPES[dtypes[0]], args.profile)
        return
    if args.stability_steps:
        rows = [stability(args.stability_steps)]
    elif args.keep_ratio:
        rows = [keep_ratio(args.keep_ratio, variant, DTYPES[dtype]) for dtype in dtypes for variant in args.variants]
    else:
        rows = [row for name in args.cases for dtype in dtypes for variant in args.variants
                for row in measure(name, DTYPES[dtype], args.warmup, args.iters, variant, args.cuda_graph)]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(settings=info, rows=rows), indent=1))


if __name__ == '__main__':
    main()
