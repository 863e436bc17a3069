"""LossRecordHook across a resume: each iteration is recorded once."""
import json

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from mmvmamba.checkpoint import register_checkpoint_safe_globals


class _Net(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, inputs, mode='tensor'):
        out = self.linear(torch.stack(inputs))
        return dict(loss=out.square().mean()) if mode == 'loss' else out


class _Data(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return dict(inputs=torch.full((4, ), float(index)))


@pytest.fixture
def allow_list():
    """Resuming reads mmengine's checkpoint with torch's weights_only default, as tools/train.py sets it up."""
    before = torch.serialization.get_safe_globals()
    register_checkpoint_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)


def _train(work_dir, max_iters: int, resume: bool = False) -> Runner:
    runner = Runner(
        model=_Net(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=_Data(), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2,
                              num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        # A checkpoint every 2 iterations and none at the end: a run stopped after iteration 3 resumes from 2.
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False, save_last=False)),
        custom_hooks=[dict(type='mmvmamba.LossRecordHook')],
        resume=resume)
    runner.train()
    return runner


def _records(work_dir) -> list[dict]:
    return [json.loads(line) for line in (work_dir / 'losses.jsonl').read_text().splitlines()]


def test_resumed_run_records_each_iteration_once(tmp_path, allow_list):
    _train(tmp_path, max_iters=3)  # stands for a run killed after iteration 3; its last checkpoint is iter_2
    first = _records(tmp_path)
    assert [r['iter'] for r in first] == [1, 2, 3]
    assert (tmp_path / 'last_checkpoint').read_text().strip().endswith('iter_2.pth')

    _train(tmp_path, max_iters=5, resume=True)
    records = _records(tmp_path)
    assert [r['iter'] for r in records] == [1, 2, 3, 4, 5]
    assert records[:2] == first[:2]  # the iterations before the checkpoint keep the first run's values


def test_resume_drops_a_record_cut_off_by_the_kill(tmp_path, allow_list):
    _train(tmp_path, max_iters=3)
    with open(tmp_path / 'losses.jsonl', 'a') as f:
        f.write('{"iter": 4, "world_si')  # killed while writing
    _train(tmp_path, max_iters=4, resume=True)
    assert [r['iter'] for r in _records(tmp_path)] == [1, 2, 3, 4]


def test_resume_refuses_a_record_file_it_cannot_read(tmp_path, allow_list):
    _train(tmp_path, max_iters=3)
    path = tmp_path / 'losses.jsonl'
    lines = path.read_text().splitlines()
    path.write_text('\n'.join([lines[0], 'not json', *lines[1:]]) + '\n')
    with pytest.raises(ValueError, match=r'losses\.jsonl, line 2: not a LossRecordHook record'):
        _train(tmp_path, max_iters=4, resume=True)
    assert path.read_text().splitlines()[1] == 'not json'  # left as it was
