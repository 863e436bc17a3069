"""Effective receptive field (ERF) of a VMamba backbone next to a ResNet-50.

For each image, the output map of one stage is taken, its centre pixel passed through ReLU and summed over the
channels (as RepLKNet does: a plain sum over the channels of a LayerNorm output is constant, so its gradient is
zero), and the gradient of that scalar with respect to the input image computed; ``|grad|`` summed over the three
colour channels, averaged over the images, is the ERF map (as in RepLKNet and the VMamba paper, which shows
VMamba's ERF is global while a CNN's is local). The maps are drawn side by side in one PNG (normalised to their
maximum, log colour scale) and summarised in a text file: the fraction of the image area that holds 20/50/90 % of
the gradient mass (the smallest set of pixels, and the smallest centred square).

Weights matter: the ERF of a trained network differs from that of a random one. Pass ``--checkpoint`` (VMamba:
official classification, detection or segmentation checkpoints, or converted ones) and ``--resnet-checkpoint``
(torchvision/mmdet ResNet-50 weights, or a det/seg checkpoint with a ``backbone.`` prefix).

On the CPU the selective scan runs as a Python loop over the pixels, so a 1024 x 1024 VMamba gradient takes minutes
an image there; use a GPU (Triton kernels) or ``--size 256``.

Examples::

    python tools/analysis/erf.py --arch tiny --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth \\
        --resnet-checkpoint resnet50-0676ba61.pth --images data/imagenet/val --num-images 50 --size 1024
    python tools/analysis/erf.py configs/det/mask-rcnn_vmamba-t_fpn_1x_coco.py --size 512
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from analysis_common import DEFAULT_OUT_DIR, build_backbone, build_resnet50, build_swin_t, load_config, write_json

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
MASS_LEVELS = (0.2, 0.5, 0.9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Effective receptive field of a VMamba backbone and a ResNet-50: heat maps (PNG) and area '
        'fractions (text).',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Examples::' + __doc__.split('Examples::')[1])
    parser.add_argument('config', nargs='?', help='det/seg config whose backbone is used')
    parser.add_argument('--arch', help='VMamba preset instead of a config (tiny, small, base, ...)')
    parser.add_argument('--checkpoint', help='VMamba weights (official or converted; backbone, cls, det or seg)')
    parser.add_argument('--resnet-checkpoint', help='ResNet-50 weights (torchvision/mmdet, or det/seg checkpoint)')
    parser.add_argument('--no-resnet', action='store_true', help='draw only the VMamba map')
    parser.add_argument('--with-swin', action='store_true', help='add a Swin-T map (random weights unless '
                        '--swin-checkpoint)')
    parser.add_argument('--swin-checkpoint', help='official Swin-T weights for --with-swin')
    parser.add_argument('--images', help='folder of images (resized to --size); default: random N(0, 1) inputs')
    parser.add_argument('--num-images', type=int, default=8, help='images to average over. Default: 8')
    parser.add_argument('--size', type=int, default=1024, help='input side (square). Default: 1024')
    parser.add_argument('--stage', type=int, default=-1,
                        help='which output of the backbones (0..3; -1 the last). Default: -1')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='Default: cuda if available, else cpu')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random inputs. Default: 0')
    parser.add_argument('--out-dir', default=DEFAULT_OUT_DIR, help=f'Default: {DEFAULT_OUT_DIR}')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.arch is None):
        parser.error('give either a CONFIG or --arch')
    if args.num_images < 1 or args.size < 8:
        parser.error('--num-images must be >= 1 and --size >= 8')
    if not -4 <= args.stage <= 3:
        parser.error('--stage must be in -4..3')
    return args


def load_images(folder: str | None, num: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """``num`` normalised ``[1, 3, size, size]`` images from ``folder`` (sorted, cycled), or random ones."""
    if folder is None:
        generator = torch.Generator().manual_seed(seed)
        return [torch.randn(1, 3, size, size, generator=generator) for _ in range(num)]
    import mmcv

    paths = sorted(p for p in Path(folder).rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_SUFFIXES)}) under {folder}')
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = []
    for i in range(num):
        image = mmcv.imresize(mmcv.imread(str(paths[i % len(paths)]), channel_order='rgb'), (size, size))
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        images.append((image - mean) / std)
    return images


def input_gradient(backbone: nn.Module, image: torch.Tensor, stage: int) -> torch.Tensor:
    """``|d relu(out[stage][:, :, h//2, w//2]).sum() / d image|`` summed over colour channels: ``[H, W]``."""
    x = image.clone().requires_grad_(True)
    outs = backbone(x)
    out = outs if isinstance(outs, torch.Tensor) else outs[stage]
    height, width = out.shape[-2:]
    centre = torch.relu(out[:, :, height // 2, width // 2]).sum()
    (grad, ) = torch.autograd.grad(centre, x)
    return grad.abs().sum(dim=1)[0]


def erf_map(backbone: nn.Module, images: list[torch.Tensor], stage: int, device: str) -> np.ndarray:
    """The ERF map of ``backbone``: input gradients averaged over ``images``, float64 ``[H, W]``."""
    backbone.to(device)
    backbone.eval()
    total = None
    for image in images:
        grad = input_gradient(backbone, image.to(device), stage).double().cpu()
        total = grad if total is None else total + grad
    return (total / len(images)).numpy()


def area_fractions(score: np.ndarray, levels: tuple[float, ...] = MASS_LEVELS) -> dict[str, dict[float, float]]:
    """Fractions of the image area holding each level of the gradient mass.

    ``pixels``: the smallest set of pixels (the largest values first). ``centred_square``: the smallest square
    around the centre (the side growing one pixel at a time, clipped at the borders).
    """
    total = float(score.sum())
    height, width = score.shape
    area = height * width
    result: dict[str, dict[float, float]] = {'pixels': {}, 'centred_square': {}}
    if total <= 0:
        return {kind: {level: float('nan') for level in levels} for kind in result}
    cumulative = np.cumsum(np.sort(score.ravel())[::-1]) / total
    for level in levels:
        result['pixels'][level] = (int(np.searchsorted(cumulative, level)) + 1) / area
    # Mass in centred squares of every half-side r: a 2-D cumulative sum, then one lookup per r.
    table = np.pad(score, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    cy, cx = height // 2, width // 2
    squares = []
    for radius in range(max(height, width)):
        top, bottom = max(cy - radius, 0), min(cy + radius + 1, height)
        left, right = max(cx - radius, 0), min(cx + radius + 1, width)
        mass = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
        squares.append((mass / total, (bottom - top) * (right - left) / area))
    for level in levels:
        result['centred_square'][level] = next((frac for mass, frac in squares if mass >= level - 1e-12), 1.0)
    return result


def draw(maps: dict[str, np.ndarray], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 4.4), squeeze=False)
    image = None
    for ax, (name, score) in zip(axes[0], maps.items()):
        peak = score.max()
        normed = score / peak if peak > 0 else score
        image = ax.imshow(np.clip(normed, 1e-4, 1.0), cmap='inferno', norm=LogNorm(vmin=1e-4, vmax=1.0))
        half = area_fractions(score)['pixels'][0.5]
        ax.set_title(f'{name}\n50 % of |grad| in {100 * half:.1f} % of the area', fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.025, pad=0.02, label='|grad| / max (log scale)')
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)


def summary_text(maps: dict[str, np.ndarray], header: str) -> str:
    lines = [header, '', 'fraction of the image area holding p of the gradient mass (smaller = more local):',
             f"{'model':<28} {'kind':<15} " + ' '.join(f'{int(100 * p):>6}%' for p in MASS_LEVELS)]
    for name, score in maps.items():
        fractions = area_fractions(score)
        for kind in ('pixels', 'centred_square'):
            values = ' '.join(f'{100 * fractions[kind][p]:6.2f}%' for p in MASS_LEVELS)
            lines.append(f'{name:<28} {kind:<15} {values}')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.config:
        vmamba = build_backbone(load_config(args.config), checkpoint=args.checkpoint)
        vmamba_name = f'VMamba ({Path(args.config).stem})'
    else:
        vmamba = build_backbone(arch=args.arch, checkpoint=args.checkpoint)
        vmamba_name = f'VMamba-{args.arch}'
    models = {vmamba_name + ('' if args.checkpoint else ', random init'): vmamba}
    if not args.no_resnet:
        models['ResNet-50' + ('' if args.resnet_checkpoint else ', random init')] = build_resnet50(
            args.resnet_checkpoint)
    if args.with_swin:
        models['Swin-T' + ('' if args.swin_checkpoint else ', random init')] = build_swin_t(args.swin_checkpoint)

    images = load_images(args.images, args.num_images, args.size, args.seed)
    stage = args.stage
    stage_name = 'the last output' if stage == -1 else f'output {stage}'
    maps = {name: erf_map(model, images, stage, args.device) for name, model in models.items()}

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = args.images or 'random N(0,1) inputs'
    header = (f'ERF: gradient of relu(centre pixel).sum() of {stage_name} of each backbone w.r.t. the input, |grad| '
              f'summed over RGB, averaged over {args.num_images} images ({source}) at {args.size}x{args.size}')
    png = out_dir / 'erf.png'
    draw(maps, png, f'ERF of {stage_name}, {args.size}x{args.size}, {args.num_images} images ({source})')
    text = summary_text(maps, header)
    (out_dir / 'erf.txt').write_text(text + '\n')
    np.savez_compressed(out_dir / 'erf_maps.npz', **{f'map{i}': score for i, score in enumerate(maps.values())},
                        names=np.array(list(maps)))
    fractions = {name: area_fractions(score) for name, score in maps.items()}
    write_json(out_dir / 'erf.json', dict(header=header, area_fractions=fractions))
    print(text)
    print(f'\nwrote {png}, {out_dir / "erf.txt"}, {out_dir / "erf.json"} and {out_dir / "erf_maps.npz"}')
    return dict(maps=maps, fractions=fractions, png=png)


if __name__ == '__main__':
    main()
