"""Convert an official VMamba checkpoint (classification, legacy, Mask R-CNN or UperNet) to a clean backbone state dict.

    python tools/convert_official_ckpt.py vssm1_tiny_0230s_ckpt_epoch_264.pth vmamba-t.pth [--use-ema]

The output is a plain ``{name: tensor}`` dict with the official backbone names (no classifier), which
``torch.load(..., weights_only=True)`` reads anywhere and ``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads.
The source is read without running pickled code (see mmvmamba/checkpoint/safe_load.py).
"""
import argparse
from pathlib import Path

import torch

from mmvmamba.checkpoint import convert_vmamba_official, safe_load


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', type=Path, help='official checkpoint')
    parser.add_argument('dst', type=Path, help='where to write the backbone state dict')
    parser.add_argument('--use-ema', action='store_true', help="take a classification checkpoint's model_ema")
    parser.add_argument('--force', action='store_true', help='overwrite dst if it exists')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.dst.exists() and not args.force:
        raise SystemExit(f'{args.dst} exists; pass --force to overwrite it')
    if args.dst.resolve() == args.src.resolve():
        raise SystemExit('dst must differ from src (the source checkpoint is never overwritten)')
    state_dict, dropped = convert_vmamba_official(safe_load(args.src), use_ema=args.use_ema)
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.dst.with_name(args.dst.name + '.tmp')
    torch.save(state_dict, tmp)
    tmp.replace(args.dst)  # a crash mid-write never leaves a truncated dst
    print(f'wrote {len(state_dict)} tensors to {args.dst}' + (f'; dropped {dropped}' if dropped else ''))


if __name__ == '__main__':
    main()
