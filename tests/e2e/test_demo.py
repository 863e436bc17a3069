"""The demo (README's main job): train and evaluate the demo detector and segmentor, and check that they learned.

The baseline is the same model untrained, evaluated by the same run; the trained model must beat it clearly.
"""
import importlib.util
import json

import pytest

from .conftest import NUM_TRAIN, NUM_VAL, TOOLS, run_tool

DEMO_ITERS = {'det': 60, 'seg': 40}


@pytest.mark.parametrize('task', ['det', 'seg'])
def test_demo_learns(task, data_cwd):
    work_dir = data_cwd / f'work_dirs/demo_{task}'
    proc = run_tool([TOOLS / 'demo.py', '--task', task, f'--{task}-iters', DEMO_ITERS[task], '--work-dir', work_dir,
                     '--num-train', NUM_TRAIN, '--num-val', NUM_VAL], cwd=data_cwd)
    # The console shows the steps, the progress and the results; the runners' output goes to the log file.
    assert len(proc.stdout.splitlines()) < 40 and not proc.stderr, proc.stdout + proc.stderr
    assert f'{task}: iteration {DEMO_ITERS[task]}/{DEMO_ITERS[task]}, loss' in proc.stdout
    runners_output = (work_dir / 'demo_output.log').read_text()
    assert 'paramwise_options' in runners_output and 'paramwise_options' not in proc.stdout
    [result] = json.loads((work_dir / 'demo_results.json').read_text())
    untrained, trained = result['untrained'], result['trained']
    if task == 'det':
        # COCO AP is in [0, 1]; an untrained Mask R-CNN finds nothing (0) or next to nothing.
        assert trained['coco/bbox_mAP'] > max(0.02, 2 * untrained['coco/bbox_mAP']), result
        assert trained['coco/segm_mAP'] > max(0.02, 2 * untrained['coco/segm_mAP']), result
    else:
        # mIoU in percent over background + 3 shapes; an untrained model labels (nearly) everything one class.
        assert trained['mIoU'] > untrained['mIoU'] + 10, result
    assert result['iterations'] == DEMO_ITERS[task]
    assert result['num_visualizations'] == NUM_VAL
    assert [p.rsplit('/', 1)[1] for p in result['checkpoints']] == [f'iter_{DEMO_ITERS[task]}.pth']
    assert list((work_dir / task).glob('*/*.log'))


def test_demo_names_a_missing_metric():
    spec = importlib.util.spec_from_file_location('demo_tool', TOOLS / 'demo.py')
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    seg = {'mIoU': 50.0, 'mAcc': 60.0, 'aAcc': 90.0, 'data_time': 0.1}
    assert demo.pick_metrics(seg, 'seg', 'trained') == {'mIoU': 50.0, 'mAcc': 60.0, 'aAcc': 90.0}
    with pytest.raises(KeyError, match='untrained det model gave no coco/segm_mAP'):
        demo.pick_metrics({'coco/bbox_mAP': 0.0}, 'det', 'untrained')
