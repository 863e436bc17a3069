"""tools/analysis/benchmark.py: a CPU smoke test of the full detector and segmentor at a small input."""
import json

import pytest

from tests.analysis.helpers import config_path


@pytest.mark.parametrize('task', ['det', 'seg'])
def test_benchmark_smoke(load_tool, tmp_path, task):
    benchmark = load_tool('benchmark')
    cfg = config_path(task, 'tiny', tmp_path)
    report = benchmark.main([str(cfg), '--shape', '96', '128', '--warmup', '1', '--iters', '1',
                             '--out-dir', str(tmp_path)])
    assert report['task'] == task and report['img_per_s'] > 0 and report['shape'] == [96, 128]
    saved = json.loads(next(tmp_path.glob('benchmark_*.json')).read_text())
    assert saved['img_per_s'] == report['img_per_s']
    assert 'img/s' in next(tmp_path.glob('benchmark_*.txt')).read_text()
