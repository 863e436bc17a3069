"""Benchmark the SS2D kernels on the GPU at the anchors.md shapes (bf16 in, fp32 out for the scan).

    python tools/benchmark_kernels.py [--csv rows.csv] [--commit LABEL]

For every kernel row: forward, backward and forward+backward medians of ``triton.testing.do_bench`` (20th/80th
percentiles too), achieved GB/s over the fewest bytes the kernel must move (each input read once, each output
written once), the fraction of a device-to-device copy measured in the same run, and the official VMamba time of
anchors.md. Providers: ``triton`` (ours), ``torch_ref`` (the tests' references) and ``torch_compile`` (the reference
under torch.compile), where each finishes in reasonable time.
"""
import argparse
import csv
import importlib
import subprocess
import sys

import torch
import triton

import mmvmamba_kernels as mk

launch = importlib.import_module('mmvmamba_kernels.scan_launch')   # the kernels' host launchers

QUANTILES = [0.5, 0.2, 0.8]
# anchors.md, official VMamba (CUDA selective scan "oflex", Triton cross-scan/merge) on the same kind of H100, ms
OFFICIAL = {
    ('selective_scan', '224-b128-stage1'): (1.100, 2.618),
    ('selective_scan', '224-b128-stage3'): (0.307, 0.880),
    ('selective_scan', 'coco-b2-stage1'): (0.327, 0.789),
    ('selective_scan', 'coco-b2-stage3'): (0.111, 0.270),
    ('cross_scan', '224-b128-stage1'): (0.768, None),
    ('cross_merge', '224-b128-stage1'): (0.146, None),
}
# (batch, dim, height, width) of VMamba-T: K = 4 directions, N = 1
SHAPES = {
    '224-b128-stage1': (128, 96, 56, 56),
    '224-b128-stage3': (128, 384, 14, 14),
    'coco-b2-stage1': (2, 96, 200, 334),
    'coco-b2-stage3': (2, 384, 50, 84),
}


def bench(fn, grad_to_none=None) -> tuple[float, float, float]:
    return tuple(triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=QUANTILES, grad_to_none=grad_to_none))


def bench_graph(fn) -> tuple[float, float, float]:
    """Replays of a CUDA graph of ``fn``: GPU time without the Python, dispatcher and launch overhead."""
    return tuple(triton.testing.do_bench_cudagraph(fn, rep=200, quantiles=QUANTILES))


def copy_bandwidth() -> float:
    """GB/s of a 2 GiB device-to-device copy, bytes read + written."""
    src = torch.empty(2**30, dtype=torch.int16, device='cuda').random_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))[0]
    return 2 * src.numel() * src.element_size() / ms / 1e6


def scan_inputs(batch, dim, height, width, d_state=1, dtype=torch.bfloat16):
    rows, length = 4 * dim, height * width
    dev = 'cuda'
    return dict(u=torch.randn(batch, rows, length, device=dev).to(dtype).requires_grad_(),
                delta=(0.5 * torch.randn(batch, rows, length, device=dev) - 1).to(dtype).requires_grad_(),
                A=(-torch.exp(torch.rand(rows, d_state, device=dev) * 2.5 - 1)).requires_grad_(),
                B=torch.randn(batch, 4, d_state, length, device=dev).to(dtype).requires_grad_(),
                C=torch.randn(batch, 4, d_state, length, device=dev).to(dtype).requires_grad_(),
                D=torch.randn(rows, device=dev).requires_grad_(),
                delta_bias=(0.5 * torch.randn(rows, device=dev)).requires_grad_())


def modes(fn, inputs: dict) -> dict[str, tuple[float, float, float]]:
    """fwd, bwd and fwd+bwd timings of ``fn(**inputs)`` with a fixed random output gradient."""
    leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    out = fn(**inputs)
    grad = torch.randn_like(out)

    def fwd():
        with torch.no_grad():
            fn(**inputs)

    def bwd():
        out.backward(grad, retain_graph=True)

    def fwd_bwd():
        fn(**inputs).backward(grad)

    return dict(fwd=bench(fwd), bwd=bench(bwd, leaves), fwd_bwd=bench(fwd_bwd, leaves))


def scan_bytes(batch, dim, height, width, d_state=1):
    n, bc = batch * 4 * dim * height * width, batch * 4 * d_state * height * width
    fwd = n * (2 + 2 + 4) + bc * 2 * 2                   # u, delta bf16 in; out fp32; B, C bf16
    bwd = n * (2 + 2 + 4 + 2 + 2) + bc * 2 * 2 * 2       # + dout fp32 in; du, ddelta bf16; dB, dC bf16
    return dict(fwd=fwd, bwd=bwd, fwd_bwd=fwd + bwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--csv', help='also write the rows to this CSV file')
    parser.add_argument('--commit', help='commit label to record (default: git rev-parse HEAD)')
    parser.add_argument('--skip-compile', action='store_true', help='no torch.compile baselines')
    parser.add_argument('--only-graph', action='store_true', help='only the CUDA-graph kernel rows')
    parser.add_argument('--only-fused', action='store_true', help='only the fused vs unfused rows')
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    commit = args.commit or subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
    copy_gbs = copy_bandwidth()
    card = torch.cuda.get_device_name()
    print(f'# card: {card}; torch {torch.__version__}; triton {triton.__version__}; commit {commit or "none"}; '
          f'copy ceiling {copy_gbs:.0f} GB/s', flush=True)
    rows = []

    def record(kernel, shape, provider, mode, t, nbytes):
        official = OFFICIAL.get((kernel, shape))
        off = None if official is None else official[0 if mode == 'fwd' else 1] if mode != 'fwd_bwd' else None
        gbs = nbytes / t[0] / 1e6 if nbytes else None
        row = dict(kernel=kernel, shape=shape, provider=provider, mode=mode, ms=round(t[0], 4),
                   ms_p20=round(t[1], 4), ms_p80=round(t[2], 4), gbs=round(gbs) if gbs else '',
                   pct_copy=round(100 * gbs / copy_gbs, 1) if gbs else '', official_ms=off or '',
                   speedup_vs_official=round(off / t[0], 2) if off else '')
        rows.append(row)
        print(' | '.join(str(v) for v in row.values()), flush=True)

    print('kernel | shape | provider | mode | ms | p20 | p80 | GB/s | % copy | official ms | official/ours')
    ref_providers = [('torch_ref', mk.selective_scan_ref)]
    if not args.skip_compile:
        # the backward-only timing replays one graph (retain_graph), which buffers donated to the compiled
        # backward would forbid
        importlib.import_module('torch._functorch.config').donated_buffer = False
        ref_providers.append(('torch_compile', torch.compile(mk.selective_scan_ref)))
    # selective scan at the four anchor shapes
    for shape, (batch, dim, height, width) in ({} if args.only_fused else SHAPES).items():
        inputs = scan_inputs(batch, dim, height, width)
        nbytes = scan_bytes(batch, dim, height, width)
        for mode, t in ({} if args.only_graph else modes(lambda **kw: mk.selective_scan(**kw), inputs)).items():
            record('selective_scan', shape, 'triton', mode, t, nbytes[mode])
        # the kernels alone (host launchers in a CUDA graph), as the official rows time the CUDA extension's calls
        tensors = [inputs[k].detach() for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')]
        block_t = launch.scan_config(height * width, 1)['block_t']
        out, hs = launch.sequence_scan_fwd(*tensors, True, block_t, 0)
        dout = torch.randn_like(out)
        record('selective_scan', shape, 'triton_graph', 'fwd',
               bench_graph(lambda: launch.sequence_scan_fwd(*tensors, True, block_t, 0)), nbytes['fwd'])
        record('selective_scan', shape, 'triton_graph', 'bwd',
               bench_graph(lambda: launch.sequence_scan_bwd(*tensors, dout, hs, True, block_t, 0)), nbytes['bwd'])
        # the references (a log-depth prefix scan over L) and Inductor's kernels for them, as baselines
        for provider, ref_fn in ([] if args.only_graph else ref_providers):
            for mode, t in modes(ref_fn, inputs).items():
                record('selective_scan', shape, provider, mode, t, nbytes[mode])
        del inputs
        torch.cuda.empty_cache()

    # cross-scan and cross-merge (bf16 in and out, as in the official rows)
    batch, dim, height, width = SHAPES['224-b128-stage1']
    x_map = torch.randn(batch, dim, height, width, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    y_map = torch.randn(batch, 4, dim, height, width, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    nbytes = batch * dim * height * width * 2 * 5
    providers = [('triton', mk.cross_scan, mk.cross_merge), ('torch_ref', mk.cross_scan_ref, mk.cross_merge_ref)]
    if not args.skip_compile:
        providers.append(('torch_compile', torch.compile(mk.cross_scan_ref), torch.compile(mk.cross_merge_ref)))
    if not args.only_fused:
        record('cross_scan', '224-b128-stage1', 'triton_graph', 'fwd',
               bench_graph(lambda: launch.launch_cross_scan(x_map)), nbytes)
        y_seq = y_map.detach().view(batch, 4, dim, -1)
        record('cross_merge', '224-b128-stage1', 'triton_graph', 'fwd',
               bench_graph(lambda: launch.launch_cross_merge(y_seq, height, width)), nbytes)
    for provider, scan_fn, merge_fn in ([] if args.only_graph or args.only_fused else providers):
        for mode, t in modes(lambda x: scan_fn(x), dict(x=x_map)).items():
            record('cross_scan', '224-b128-stage1', provider, mode, t, nbytes * (2 if mode == 'fwd_bwd' else 1))
        for mode, t in modes(lambda y: merge_fn(y), dict(y=y_map)).items():
            record('cross_merge', '224-b128-stage1', provider, mode, t, nbytes * (2 if mode == 'fwd_bwd' else 1))
    torch.cuda.empty_cache()

    # fused cross_selective_scan vs the unfused triton pipeline (same math; spatial vs sequence-layout inputs)
    for shape, (batch, dim, height, width) in ({} if args.only_graph else SHAPES).items():
        s = scan_inputs(batch, dim, height, width)
        x = torch.randn(batch, dim, height, width, device='cuda', dtype=torch.bfloat16, requires_grad=True)
        sp = dict(x=x, delta=s['delta'].detach().view(batch, 4, dim, height, width).requires_grad_(), A=s['A'],
                  B=s['B'].detach().view(batch, 4, 1, height, width).requires_grad_(),
                  C=s['C'].detach().view(batch, 4, 1, height, width).requires_grad_(), D=s['D'],
                  delta_bias=s['delta_bias'])

        def unfused(x, delta, A, B, C, D, delta_bias):
            xs = mk.cross_scan(x).view(batch, 4 * dim, -1)
            ys = mk.selective_scan(xs, delta.view(batch, 4 * dim, -1), A, B.view(batch, 4, 1, -1),
                                   C.view(batch, 4, 1, -1), D, delta_bias)
            return mk.cross_merge(ys.view(batch, 4, dim, height, width))

        # as in the model: low-rank step sizes (dt_rank = ceil(dim / 16)) expanded by dt_proj's weight; the unfused
        # pipeline gets dt in the scan orders, as the official x_proj on cross-scanned copies produces it
        rank = -(-dim // 16)
        dt = (0.5 * torch.randn(batch, 4, rank, height * width, device='cuda')).bfloat16().requires_grad_()
        weight = (torch.randn(4, dim, rank, device='cuda') / rank**0.5).requires_grad_()
        low_rank = dict(sp, delta=dt.detach().unflatten(3, (height, width)).requires_grad_(), delta_proj_weight=weight)

        def unfused_low_rank(x, delta, A, B, C, D, delta_bias, delta_proj_weight):
            full = torch.matmul(delta_proj_weight.to(delta.dtype), delta.flatten(3))
            return unfused(x, full.unflatten(3, (height, width)), A, B, C, D, delta_bias)

        n = batch * dim * height * width
        fused_bytes = dict(fwd=n * (2 + 4 * 2 + 4), bwd=n * (2 + 4 * 2 + 4 + 2 + 4 * 2), fwd_bwd=None)
        for provider, fn, fn_inputs in (('triton_fused', mk.cross_selective_scan, sp),
                                        ('triton_unfused', unfused, sp),
                                        ('triton_fused_low_rank', mk.cross_selective_scan, low_rank),
                                        ('triton_unfused_low_rank', unfused_low_rank, dict(low_rank, delta=dt))):
            for mode, t in modes(fn, fn_inputs).items():  # GB/s only for the full step sizes the byte count assumes
                record('ss2d_scan_stage', shape, provider, mode, t,
                       0 if 'low_rank' in provider else fused_bytes[mode] or 0)
        del s, sp, x, low_rank, dt
        torch.cuda.empty_cache()

    if args.csv:
        with open(args.csv, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f'# done: {len(rows)} rows on {card}', file=sys.stderr)


if __name__ == '__main__':
    main()
