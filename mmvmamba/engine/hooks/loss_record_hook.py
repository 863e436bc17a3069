"""Record the training losses averaged over all ranks, one JSON line an iteration.

mmengine's ``LoggerHook`` logs rank 0's ``log_vars`` only: in a DDP run each rank sees its share of the batch, so
the logged loss covers that share. The mean over ranks of the per-rank losses is what equals the loss of a
single-process run on the same total batch (the losses are means over equally sized shares), which is what
``tools/analysis/ddp_check.py`` compares.
"""
import json
import math
import os
import os.path as osp
from numbers import Number

import torch
from mmengine.dist import all_reduce, get_dist_info
from mmengine.hooks import Hook

from mmvmamba.registry import HOOKS


@HOOKS.register_module()
class LossRecordHook(Hook):
    """Append ``{"iter", "world_size", <log_vars averaged over ranks>}`` to ``<work_dir>/<filename>`` on rank 0.

    Every entry of the train step's outputs (``loss``, ``loss_*``, accuracies) is averaged over the ranks; in a
    non-distributed run the values are the local ones. A run that starts from iteration 0 empties the file first.
    A resumed run first drops the records after the iteration it resumes from: the stopped run recorded them after
    its last checkpoint, and the resumed run trains those iterations again, so each iteration appears once (with the
    values of the run that continues). Then it appends.

    Args:
        filename: File name under the runner's ``work_dir``. Default: 'losses.jsonl'.
        interval: Record every ``interval`` iterations. Default: 1.
    """

    def __init__(self, filename: str = 'losses.jsonl', interval: int = 1):
        if interval < 1:
            raise ValueError(f'LossRecordHook interval must be >= 1, got {interval}')
        self.filename = filename
        self.interval = interval

    def _path(self, runner) -> str:
        return osp.join(runner.work_dir, self.filename)

    def before_train(self, runner) -> None:
        rank, _ = get_dist_info()
        if rank != 0:
            return
        if runner.iter == 0:
            open(self._path(runner), 'w').close()
        elif osp.isfile(self._path(runner)):
            _drop_records_after(self._path(runner), runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not outputs or not self.every_n_train_iters(runner, self.interval):
            return
        names = list(outputs)
        values = torch.tensor([_scalar(name, outputs[name]) for name in names], dtype=torch.float64)
        # Every rank must call this at the same iterations with the same names (true of one model's log_vars);
        # mmengine.dist moves the tensor to the backend's device (CUDA for NCCL) and back, and does nothing
        # outside a distributed run.
        all_reduce(values, op='mean')
        rank, world_size = get_dist_info()
        if rank != 0:
            return
        record = {'iter': runner.iter + 1, 'world_size': world_size}
        record.update({name: _json_number(value) for name, value in zip(names, values.tolist())})
        with open(self._path(runner), 'a') as f:
            f.write(json.dumps(record) + '\n')
            f.flush()


def _drop_records_after(path: str, last_iter: int) -> None:
    """Rewrite the record file without the records of iterations after ``last_iter`` (atomically, by replacing it).

    A last line without its newline is a record cut off when the stopped run was killed: it is dropped too.
    """
    with open(path) as f:
        lines = f.read().split('\n')
    complete, partial = lines[:-1], lines[-1]  # the part after the last newline: '' or an unfinished record
    kept = []
    for number, line in enumerate(complete, start=1):
        try:
            iteration = int(json.loads(line)['iter'])
        except (ValueError, TypeError, KeyError) as err:  # json.JSONDecodeError is a ValueError
            raise ValueError(f'{path}, line {number}: not a LossRecordHook record ({err}): {line[:200]!r}') from err
        if iteration <= last_iter:
            kept.append(line)
    if len(kept) == len(complete) and not partial:
        return
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(''.join(line + '\n' for line in kept))
    os.replace(tmp, path)


def _scalar(name: str, value) -> float:
    """One log_vars entry as a float (a one-element tensor or a number)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f'LossRecordHook records scalars; outputs[{name!r}] has shape {tuple(value.shape)}')
        return float(value.detach().item())
    if isinstance(value, Number):
        return float(value)
    raise TypeError(f'LossRecordHook records numbers; outputs[{name!r}] is a {type(value).__name__}')


def _json_number(value: float):
    # json.dumps would write NaN/Infinity, which strict JSON readers refuse; a diverged loss is kept as a string.
    return value if math.isfinite(value) else str(value)
