"""Evaluate a checkpoint of an mmdet detector or an mmseg segmentor with a VMamba backbone.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--tta] [--cfg-options k=v ...]
    bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [same options]

The config's ``default_scope`` (mmdet or mmseg) decides which library's registries the runner uses. With
``--show-dir`` the predictions are drawn on the images and saved as image files under that folder. ``--tta``
evaluates with the config's ``tta_model`` and ``tta_pipeline`` (the multi-scale + flip mIoU(MS) of the UperNet
configs). mmdet's and mmseg's own ``tools/test.py`` run the same configs and checkpoints. The checkpoint is checked
to be a complete file before the runner is built (an empty, truncated or text file is named as such).
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmvmamba.checkpoint import check_checkpoint_file, register_checkpoint_safe_globals
from mmvmamba.engine.config_utils import check_data_paths, enable_visualization, load_tool_config, task_of


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate a VMamba detector (mmdet) or segmentor (mmseg)')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='folder for the log and metrics (default: work_dirs/CONFIG_NAME)')
    parser.add_argument('--out', help='also save the raw predictions: a .pkl file (det) or a folder (seg)')
    parser.add_argument('--show-dir', help='draw the predictions and save them as images in this folder')
    parser.add_argument('--tta', action='store_true', help="test-time augmentation of the config's tta_pipeline")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config entries')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (tools/dist_test.sh passes pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    cfg = load_tool_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    task = task_of(cfg)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist (release URLs: docs/model_zoo.md)')
    check_checkpoint_file(args.checkpoint)
    cfg.load_from = args.checkpoint
    cfg.resume = False

    if args.show_dir:
        enable_visualization(cfg, args.show_dir)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None and task == 'seg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True

    check_data_paths(cfg, ('test_dataloader', ))
    # mmengine loads the checkpoint with torch.load's weights_only=True default: allow the checked types that its own
    # checkpoints pickle (see mmvmamba/checkpoint/safe_load.py).
    register_checkpoint_safe_globals()
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    if args.out is not None and task == 'det':
        from mmdet.evaluation import DumpDetResults
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out for a detector must be a .pkl file, got {args.out!r}')
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()
    if args.show_dir:
        runner.logger.info(f'predictions drawn in {osp.abspath(args.show_dir)}')


if __name__ == '__main__':
    main()
