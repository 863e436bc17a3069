"""Export a VMamba UperNet (decode-head logits) or Mask R-CNN (backbone + FPN maps) to ONNX; check it in ONNX Runtime.

    python tools/deploy/export_onnx.py CONFIG CHECKPOINT --out model.onnx [--shape H W] [--dynamic] [--verify]
    python tools/deploy/export_onnx.py CONFIG CHECKPOINT --out model.onnx --verify-only   # check an existing file

The graph's one input ``input`` is the normalised ``[1, 3, H, W]`` image (what the config's data preprocessor
produces). CHECKPOINT is an mmengine checkpoint of the whole model, loaded strictly, or ``none`` for the random
initialisation (to try the export; its outputs mean nothing). The SS2D layers are exported with the chunked scan of
mmvmamba/deploy/onnx_scan.py (no Triton). ``--dynamic`` makes height and width dynamic axes.

``--verify`` runs the file in ONNX Runtime (CPU) on a random input and on a demo image (or ``--image``) through the
data preprocessor, at the export shape and, for a dynamic graph, at two more (``--check-shapes``; by default one of
them odd-sized, not a multiple of 32), compares every output with PyTorch (max |diff| <= ``--tolerance``, 1e-4) and
prints the diffs and ms/image of both. It exits with 1 if a check fails. Needs ``pip install mmvmamba[deploy]``.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from mmengine.config import Config

from mmvmamba.deploy.export import (
    DEFAULT_OPSET,
    FP32_TOLERANCE,
    OPTIMIZE_MODES,
    CheckResult,
    build_model,
    compare_with_onnxruntime,
    demo_image,
    export_kind,
    export_module,
    export_onnx,
    import_optional,
    preprocess_image,
)
from mmvmamba.deploy.onnx_scan import CHUNK, LEVELS

NO_CHECKPOINT = 'none'


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='mmseg UperNet or mmdet Mask R-CNN config')
    parser.add_argument('checkpoint', help=f"checkpoint of the whole model, or '{NO_CHECKPOINT}' for random weights")
    parser.add_argument('--out', required=True, type=Path, help='the .onnx file to write (or check)')
    parser.add_argument('--shape', nargs=2, type=int, default=(512, 512), metavar=('H', 'W'),
                        help='input height and width to export at. Default: 512 512')
    parser.add_argument('--dynamic', action='store_true', help='dynamic input height and width')
    parser.add_argument('--verify', action='store_true', help='check the exported file in ONNX Runtime')
    parser.add_argument('--verify-only', action='store_true',
                        help='do not export: check the existing --out file at its input size (for a dynamic file, '
                        'at --shape and the --check-shapes)')
    parser.add_argument('--check-shapes', nargs='+', type=int, metavar='H W',
                        help='for a dynamic graph, the other sizes to check, as H W pairs. '
                        'Default: (H + 32, W + 64) and the odd (H + 17, W + 11) rounded to odd numbers')
    parser.add_argument('--image', type=Path, help='BGR image file for the real-input check (resized to each shape). '
                        "Default: the demo's generated shapes image")
    parser.add_argument('--tolerance', type=float, default=FP32_TOLERANCE,
                        help=f'bound on max |ONNX Runtime - PyTorch|. Default: {FP32_TOLERANCE}')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per input (median). Default: 3')
    parser.add_argument('--threads', type=int,
                        help="CPU threads of PyTorch and of ONNX Runtime's session. Default: PyTorch's default")
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset. Default: {DEFAULT_OPSET}')
    parser.add_argument('--chunk', type=int, default=CHUNK, help=f'steps per chunk of the scan. Default: {CHUNK}')
    parser.add_argument('--levels', type=int, default=LEVELS,
                        help=f'chunk levels of the scan (maps up to chunk**levels positions). Default: {LEVELS}')
    parser.add_argument('--optimize', choices=OPTIMIZE_MODES, default='fold',
                        help="fold: fold constants, drop unused nodes; full: also the exporter's pattern rewrites "
                        '(slow); none. Default: fold')
    args = parser.parse_args(argv)
    if min(args.shape) < 1:
        parser.error(f'--shape must be positive, got {args.shape}')
    if args.check_shapes is not None and (len(args.check_shapes) % 2 or min(args.check_shapes) < 1):
        parser.error(f'--check-shapes takes positive H W pairs, got {args.check_shapes}')
    if args.repeats < 1:
        parser.error('--repeats must be >= 1')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be >= 1')
    return args


def default_check_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Two sizes besides the export size: a larger one and an odd one (never a multiple of 32), both H != W."""
    return [(height + 32, width + 64), ((height + 17) | 1, (width + 11) | 1)]


def onnx_input_shape(path: Path) -> tuple[tuple[int, int], bool]:
    """``((H, W), dynamic)`` of the file's input; H and W are 0 for dynamic axes."""
    onnx = import_optional('onnx')
    model = onnx.load(str(path), load_external_data=False)
    if len(model.graph.input) != 1:
        raise ValueError(f'{path} has {len(model.graph.input)} inputs; an exported VMamba model has one')
    dims = model.graph.input[0].type.tensor_type.shape.dim[2:]
    sizes = tuple(d.dim_value if d.HasField('dim_value') else 0 for d in dims)
    return sizes, 0 in sizes


def load_image(path: Path | None, height: int, width: int):
    import cv2

    if path is None:
        return demo_image(height, width)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'could not read the image {path}')
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def print_results(results: list[CheckResult], tolerance: float) -> bool:
    print(f'{"input":<8} {"H x W":>11} {"max |ORT - PyTorch|":>20} {"worst output":>13} '
          f'{"ORT ms/img":>11} {"PyTorch ms/img":>15}  result')
    ok = True
    for r in results:
        passed = not r.errors and r.max_diff <= tolerance
        ok &= passed
        worst = max(r.diffs, key=r.diffs.get) if r.diffs else '-'
        size = f'{r.shape[0]} x {r.shape[1]}'
        print(f'{r.name:<8} {size:>11} {r.max_diff:>20.3e} {worst:>13} {r.ort_ms:>11.1f} {r.torch_ms:>15.1f}  '
              f'{"ok" if passed else "FAIL"}')
        for error in r.errors:
            print(f'    {error}')
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = Config.fromfile(args.config)
    kind = export_kind(cfg)
    checkpoint = None if args.checkpoint == NO_CHECKPOINT else args.checkpoint
    if checkpoint is None:
        print(f"checkpoint '{NO_CHECKPOINT}': random weights (the outputs mean nothing)")
    model = build_model(cfg, checkpoint)
    module = export_module(model, kind)

    if args.verify_only:
        if not args.out.is_file():
            raise FileNotFoundError(f'--verify-only: {args.out} does not exist')
        (height, width), dynamic = onnx_input_shape(args.out)
        if dynamic:
            height, width = args.shape
    else:
        height, width = args.shape
        dynamic = args.dynamic
        args.out.parent.mkdir(parents=True, exist_ok=True)
        example = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        outputs = export_onnx(module, example, args.out, dynamic=dynamic, opset=args.opset, chunk=args.chunk,
                              levels=args.levels, optimize=args.optimize)
        print(f'wrote {args.out} ({kind}, {"dynamic H, W" if dynamic else f"{height} x {width}"}, '
              f'opset {args.opset}, outputs {", ".join(outputs)}) in {time.perf_counter() - start:.0f} s')
        if not args.verify:
            return 0

    shapes = [(height, width)]
    if dynamic:
        pairs = args.check_shapes
        shapes += (list(zip(pairs[::2], pairs[1::2])) if pairs else default_check_shapes(height, width))
    generator = torch.Generator().manual_seed(1)
    inputs = []
    for h, w in shapes:
        inputs.append(('random', torch.randn(1, 3, h, w, generator=generator)))
        inputs.append(('image', preprocess_image(model, load_image(args.image, h, w))))
    print(f'checking {args.out} in ONNX Runtime against PyTorch (fp32, bound {args.tolerance:g}, '
          f'{torch.get_num_threads()} threads, median of {args.repeats} runs):')
    ok = print_results(compare_with_onnxruntime(args.out, module, inputs, repeats=args.repeats), args.tolerance)
    if not ok:
        print(f'FAILED: {args.out} does not match PyTorch within {args.tolerance:g}')
        return 1
    print('all checks passed')
    return 0


if __name__ == '__main__':
    sys.exit(main())
