"""Train an mmdet detector or an mmseg segmentor with a VMamba backbone.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp] [--cfg-options k=v ...]
    bash tools/dist_train.sh CONFIG GPUS [same options]

The config's ``default_scope`` (mmdet or mmseg) decides which library's registries the runner uses. mmdet's and
mmseg's own ``tools/train.py`` run the same configs; this one adds early checks of the data paths and of the
``load_from`` checkpoint (an empty, truncated or text file is named as such).
"""
import argparse
import os

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmvmamba.checkpoint import check_checkpoint_file, register_checkpoint_safe_globals
from mmvmamba.engine.config_utils import check_data_paths, load_tool_config, use_amp


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a VMamba detector (mmdet) or segmentor (mmseg)')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='folder for logs and checkpoints (default: work_dirs/CONFIG_NAME)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CHECKPOINT, or without a value from the last checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help="scale the lr by the total batch size over the config's auto_scale_lr.base_batch_size")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.init_cfg.checkpoint=PATH')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (tools/dist_train.sh passes pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
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

    if cfg.get('load_from') and not cfg.get('resume') and '://' not in str(cfg.load_from):
        check_checkpoint_file(cfg.load_from)
    check_data_paths(cfg, ('train_dataloader', 'val_dataloader'))
    # mmengine loads load_from/--resume checkpoints with torch.load's weights_only=True default: allow the checked
    # types that its own checkpoints pickle (see mmvmamba/checkpoint/safe_load.py).
    register_checkpoint_safe_globals()
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
