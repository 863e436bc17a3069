"""Parameters and FLOPs of an mmdet/mmseg config, or of its backbone or the ImageNet classifier, with the
convention of the published VMamba numbers (see :mod:`mmvmamba.analysis.flops`).

How the published numbers were measured, and what this tool does the same way:

* detection (Mask R-CNN): the detector's ``mode='tensor'`` forward (backbone, neck, RPN with its test-time
  proposals, box head on the proposals, mask head on the first 100) on one random ``3 x 1280 x 800`` image, i.e.
  H=1280, W=800. Default here: ``--shape 1280 800``. With random weights the RPN may keep fewer proposals than its
  ``test_cfg.rpn.max_per_img`` (1000); the published count assumes the full 1000, so the proposals are padded to
  that number (``--natural-proposals`` counts what the RPN returned instead);
* segmentation (UperNet): the segmentor's ``mode='tensor'`` forward (backbone and decode head; the auxiliary head
  is not run at test time but its parameters count) on a random ``3 x 512 x 2048`` input (H=512, W=2048);
* classification: the backbone with the ImageNet head (``classifier.norm`` LayerNorm, average pooling,
  ``Linear(C3, 1000)``) at 224 x 224.
* parameters: every parameter of the model built from the config (auxiliary head included).

This reproduces the official counting script (MzeroMiko/VMamba ``analyze/flops.py``, fvcore/mmengine with the
selective-scan handle) to the parameter and to < 0.01 % in FLOPs for Mask R-CNN T/S/B and UperNet T/S/B;
tests/analysis/test_get_flops.py checks the published figures.

Examples::

    python tools/analysis/get_flops.py configs/det/mask-rcnn_vmamba-t_fpn_1x_coco.py
    python tools/analysis/get_flops.py configs/seg/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py
    python tools/analysis/get_flops.py --arch tiny --cls
    python tools/analysis/get_flops.py CONFIG --backbone-only --shape 1024 1024
"""
import argparse
import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from analysis_common import DEFAULT_OUT_DIR, build_backbone, build_model, load_config, task_of

DEFAULT_SHAPES = {'det': (1280, 800), 'seg': (512, 2048), 'cls': (224, 224), 'backbone': (224, 224)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Parameters and FLOPs (one multiply-add = one FLOP, selective scan counted as '
        '9*B*L*D*N + B*D*L) of a detector/segmentor config, its backbone, or the classification model.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('Examples::')[1] if 'Examples::' in __doc__ else None)
    parser.add_argument('config', nargs='?', help='mmdet or mmseg config file')
    parser.add_argument('--arch', help='VMamba preset (tiny, small, base, tiny-s2l5, vanilla-tiny, ...) instead of a '
                        'config; only with --cls or --backbone-only')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width. Default: 1280 800 (det), 512 2048 (seg; --backbone-only '
                        'uses the one of its config), 224 224 (--cls, and --backbone-only with --arch)')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--cls', action='store_true', help='the ImageNet classifier: backbone + LayerNorm + avgpool '
                      '+ Linear(C3, num classes)')
    mode.add_argument('--backbone-only', action='store_true', help="count only the config's backbone")
    parser.add_argument('--num-classes', type=int, default=1000, help='classes of the --cls head. Default: 1000')
    parser.add_argument('--natural-proposals', action='store_true',
                        help='detectors: count the proposals the (randomly initialised) RPN returns instead of '
                        'padding them to test_cfg.rpn.max_per_img')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config settings, as in mmdet/mmseg tools')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random weights and input (only the RPN proposals depend on them). Default: 0')
    parser.add_argument('--out-dir', default=DEFAULT_OUT_DIR,
                        help=f'where the text and JSON reports go. Default: {DEFAULT_OUT_DIR}')
    args = parser.parse_args(argv)
    if args.config is None and args.arch is None:
        parser.error('give a CONFIG or --arch')
    if args.config is not None and args.arch is not None:
        parser.error('give either a CONFIG or --arch, not both')
    if args.arch is not None and not (args.cls or args.backbone_only):
        parser.error('--arch needs --cls or --backbone-only (a full detector/segmentor needs a config)')
    return args


class ImageClassifier(nn.Module):
    """Backbone + the VMamba ImageNet head (``classifier.norm`` is the backbone's last ``outnorm``).

    Args:
        backbone: returns the last stage's normed ``[B, C, H, W]`` map last.
        channels: ``C`` of that map.
        num_classes: Default: 1000.
    """

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int = 1000):
        super().__init__()
        self.backbone = backbone
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.avgpool(self.backbone(x)[-1]).flatten(1))


class TensorForward(nn.Module):
    """``model(inputs, data_samples, mode='tensor')`` as a one-input module, for the jit tracer."""

    def __init__(self, model: nn.Module, data_samples: list[Any] | None):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor) -> Any:
        return self.model(inputs, self.data_samples, mode='tensor')


def det_data_samples(height: int, width: int) -> list[Any]:
    from mmdet.structures import DetDataSample

    sample = DetDataSample()
    sample.set_metainfo(dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                             batch_input_shape=(height, width), scale_factor=(1.0, 1.0)))
    return [sample]


def _pad_rpn_results(predict, max_per_img: int | None, seen: list[int], *args, **kwargs) -> list[Any]:
    results = []
    for result in predict(*args, **kwargs):   # InstanceData of bboxes, scores, labels
        seen.append(len(result))
        if max_per_img is not None and 0 < len(result) < max_per_img:
            result = result[torch.arange(max_per_img, device=result.bboxes.device) % len(result)]
        results.append(result)
    return results


@contextmanager
def full_proposals(detector: nn.Module, pad: bool) -> Iterator[list[int]]:
    """Within the block, pad the RPN's proposals to ``test_cfg.max_per_img`` (if ``pad``); yields the numbers of
    proposals the RPN returned. Detectors without an RPN are left alone."""
    seen: list[int] = []
    rpn_head = getattr(detector, 'rpn_head', None)
    if rpn_head is None:
        yield seen
        return
    test_cfg = getattr(rpn_head, 'test_cfg', None) or {}
    max_per_img = test_cfg.get('max_per_img') if pad else None
    rpn_head.predict = functools.partial(_pad_rpn_results, rpn_head.predict, max_per_img, seen)
    try:
        yield seen
    finally:
        del rpn_head.predict


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    """Build what ``args`` asks for and count it; returns the report as a dict."""
    from mmvmamba.analysis import count_flops, count_parameters

    cfg = load_config(args.config, args.cfg_options) if args.config else None
    torch.manual_seed(args.seed)
    if args.cls:
        mode = 'cls'
        backbone = build_backbone(cfg, args.arch, out_indices=(3, ))
        channels = backbone.dims[3] if hasattr(backbone, 'dims') else None
        if channels is None:
            raise ValueError('--cls needs a VMamba backbone (it reads the last stage width from `dims`)')
        model = ImageClassifier(backbone, channels, args.num_classes).eval()
    elif args.backbone_only:
        mode = 'backbone'
        model = build_backbone(cfg, args.arch)
    else:
        mode = task_of(cfg)
        model = build_model(cfg, mode)
    if args.shape:
        height, width = args.shape
    elif mode == 'backbone' and cfg is not None:
        height, width = DEFAULT_SHAPES[task_of(cfg)]
    else:
        height, width = DEFAULT_SHAPES[mode]
    inputs = torch.randn(1, 3, height, width)

    report: dict[str, Any] = dict(
        source=args.config or f'arch={args.arch}', mode=mode, input_shape=[1, 3, height, width])
    if mode == 'det':
        traced = TensorForward(model, det_data_samples(height, width))
        with full_proposals(model, pad=not args.natural_proposals) as seen:
            result = count_flops(traced, (inputs, ), breakdown=model)
        report['rpn_proposals_returned'] = seen or None
        report['proposals_padded_to_max_per_img'] = not args.natural_proposals
    elif mode == 'seg':
        result = count_flops(TensorForward(model, None), (inputs, ), breakdown=model)
    else:
        result = count_flops(model, (inputs, ))
    params = count_parameters(model)
    report.update(
        params=params,
        flops=result['total'],
        flops_by_module=result['by_module'],
        flops_by_operator=result['by_operator'],
        params_by_module={name: count_parameters(child) for name, child in model.named_children()},
        ss2d_scans=result['ss2d'],
        zero_counted_ops=result['unsupported'])
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"source:      {report['source']}",
        f"mode:        {report['mode']}",
        f"input shape: {tuple(report['input_shape'])} (B, C, H, W)",
        f"params:      {report['params'] / 1e6:.3f} M ({report['params']})",
        f"FLOPs:       {report['flops'] / 1e9:.3f} G ({report['flops']})",
        '',
        'by module (FLOPs / params):',
    ]
    for name, flops in report['flops_by_module'].items():
        params = report['params_by_module'].get(name, 0)
        lines.append(f'  {name:<20} {flops / 1e9:10.3f} G {params / 1e6:10.3f} M')
    lines.append('by operator:')
    for name, flops in sorted(report['flops_by_operator'].items(), key=lambda item: -item[1]):
        lines.append(f'  {name:<28} {flops / 1e9:10.3f} G')
    lines.append(f"SS2D scans counted with 9*B*L*D*N + B*D*L: {report['ss2d_scans']}")
    if report.get('rpn_proposals_returned') is not None:
        padded = ' (padded to max_per_img)' if report['proposals_padded_to_max_per_img'] else ''
        lines.append(f"RPN proposals returned: {report['rpn_proposals_returned']}{padded}")
    if report['zero_counted_ops']:
        ops = ', '.join(f'{op} x{count}' for op, count in sorted(report['zero_counted_ops'].items()))
        lines.append(f'ops counted as zero (no handle; the published numbers skip them too): {ops}')
    lines.append('Convention: one multiply-add = one FLOP (fvcore/mmengine FlopAnalyzer); element-wise ops are zero.')
    return '\n'.join(lines)


def report_name(report: dict[str, Any]) -> str:
    stem = Path(report['source']).stem if report['source'].endswith('.py') else report['source'].replace('=', '-')
    height, width = report['input_shape'][2:]
    return f"flops_{stem}_{report['mode']}_{height}x{width}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = analyse(args)
    text = format_report(report)
    print(text)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = report_name(report)
    (out_dir / f'{name}.txt').write_text(text + '\n')
    (out_dir / f'{name}.json').write_text(json.dumps(report, indent=2) + '\n')
    print(f'\nwrote {out_dir / name}.txt and .json')
    return report


if __name__ == '__main__':
    main()
