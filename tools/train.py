"""Train an mmdet detector or an mmseg segmentor with a VMamba backbone.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT] [--allow-fresh-start]] [--amp]
                                 [--cfg-options k=v ...]
    bash tools/dist_train.sh CONFIG GPUS [same options]

The config's ``default_scope`` (mmdet or mmseg) decides which library's registries the runner uses. mmdet's and
mmseg's own ``tools/train.py`` run the same configs; this one adds early checks: of the data paths, and of the
checkpoint to resume from or to load. ``--resume`` without a value continues from the checkpoint that the work dir's
``last_checkpoint`` names; it refuses to start (instead of training from iteration 0 and overwriting the work dir's
checkpoints) when there is none, unless ``--allow-fresh-start`` says that starting over is intended, and it refuses
an empty, truncated or corrupted checkpoint, naming the newest intact one in the work dir.
"""
import argparse
import os

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmvmamba.checkpoint import check_checkpoint_file, register_checkpoint_safe_globals, resume_checkpoint
from mmvmamba.engine.config_utils import check_data_paths, load_tool_config, use_amp


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a VMamba detector (mmdet) or segmentor (mmseg)')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='folder for logs and checkpoints (default: work_dirs/CONFIG_NAME)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CHECKPOINT, or without a value from the last checkpoint in the work dir')
    parser.add_argument('--allow-fresh-start', action='store_true',
                        help='with --resume: train from iteration 0 when the work dir holds no checkpoint at all '
                        '(without it, --resume refuses to start then)')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help="scale the lr by the total batch size over the config's auto_scale_lr.base_batch_size")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.init_cfg.checkpoint=PATH')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (tools/dist_train.sh passes pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if args.allow_fresh_start and args.resume is None:
        parser.error('--allow-fresh-start only applies to --resume')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    cfg = load_tool_config(args.config, args.cfg_options, args.launcher, args.work_dir)

    if args.amp:
        use_amp(cfg)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    check_checkpoint_to_load(cfg, args.allow_fresh_start)
    check_data_paths(cfg, ('train_dataloader', 'val_dataloader'))
    # mmengine loads load_from/--resume checkpoints with torch.load's weights_only=True default: allow the checked
    # types that its own checkpoints pickle (see mmvmamba/checkpoint/safe_load.py).
    register_checkpoint_safe_globals()
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.train()


def check_checkpoint_to_load(cfg, allow_fresh_start: bool) -> None:
    """Pick and check the checkpoint to resume from (``cfg.resume``) or to start from (``cfg.load_from``), before the
    runner is built; a remote ``load_from`` (``scheme://...``) is left to mmengine."""
    if cfg.get('resume'):
        cfg.load_from = resume_checkpoint(cfg.work_dir, cfg.get('load_from'), allow_fresh_start)
        if cfg.load_from is None:
            print(f'--resume: nothing to resume in {cfg.work_dir}; training from iteration 0 (--allow-fresh-start)')
            cfg.resume = False
    elif cfg.get('load_from') and '://' not in str(cfg.load_from):
        check_checkpoint_file(cfg.load_from)


if __name__ == '__main__':
    main()
