"""Crafted checkpoint files are refused, with an error that says why and without running anything from the file.

Each file is loaded in a child process, so a file that crashes the interpreter (an object array built over forged
pointer bytes segfaults when it is touched) shows as a negative return code instead of killing the test runner.
The child loads it through every route: ``safe_load`` (init_cfg's and the converter's loader), a backbone's
``init_cfg``, and mmengine's ``load_checkpoint`` with the allow-list registered (what ``load_from``, ``--resume``
and ``tools/test.py`` do).
"""
import json
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

from tests.paths import REPO_ROOT

# Runs in the child: loads argv[1] through each route, one JSON line per route.
_CHILD = r'''
import json, sys
import torch
from mmengine.runner import load_checkpoint
from mmvmamba import VMamba
from mmvmamba.checkpoint import register_checkpoint_safe_globals, safe_load

path = sys.argv[1]


def init_cfg():
    model = VMamba(arch='tiny', dims=16, depths=(1, 1, 2, 1), init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()


def mmengine_load_from():
    register_checkpoint_safe_globals()
    load_checkpoint(torch.nn.Linear(1, 1), path, map_location='cpu')


for name, route in (('safe_load', lambda: safe_load(path)), ('init_cfg', init_cfg),
                    ('mmengine', mmengine_load_from)):
    print(json.dumps(dict(route=name, started=True)), flush=True)
    try:
        route()
    except Exception as err:
        print(json.dumps(dict(route=name, error=type(err).__name__, message=str(err))), flush=True)
    else:
        print(json.dumps(dict(route=name, error=None)), flush=True)
'''


class _Reduce:
    """Pickles as ``reduce[0](*reduce[1])``, then ``BUILD`` with ``reduce[2]`` when given."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def _crafted(name: str, marker: str):
    """(payload, what the refusal names, zip format?) of each crafted file."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own array reconstructor
    # numpy.ndarray((1,), 'O', buffer=b'AAAAAAAA') is an object array whose element pointer is 0x4141414141414141;
    # as the state of an OrderedDict, unpickling itself reads that element (dict.update iterates it).
    forged = _Reduce(np.ndarray, ((1, ), 'O', b'AAAAAAAA'))
    return {
        'object-array-over-bytes': (_Reduce(OrderedDict, (), forged), 'numpy.ndarray', True),
        'object-array': (np.array([1, 'x', None], dtype=object), "numpy dtype 'O8'", True),
        'structured-array': (np.zeros(2, dtype=[('p', 'f4'), ('q', 'i8')]), 'numpy dtype', True),
        'array-data-shorter-than-shape': (_Reduce(reconstruct, (np.ndarray, (0, ), b'b'),
                                                  (1, (1 << 20, ), np.dtype('f8'), False, b'\0' * 8)),
                                          'numpy array data of 8', True),
        'exec': (_Reduce(exec, (f"open({marker!r}, 'w').close()", )), 'exec', True),
        'os.system': (_Reduce(os.system, (f'touch {marker}', )), 'system', True),
        'legacy-format-os.system': (_Reduce(os.system, (f'touch {marker}', )), 'system', False),
    }[name]


CASES = ['object-array-over-bytes', 'object-array', 'structured-array', 'array-data-shorter-than-shape', 'exec',
         'os.system', 'legacy-format-os.system']


def _save_crafted(tmp_path, case: str):
    marker = tmp_path / 'payload-ran'
    payload, named, zip_format = _crafted(case, str(marker))
    path = tmp_path / f'{case}.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'extra': payload}}, path,
               _use_new_zipfile_serialization=zip_format)
    return path, marker, named


def _run_child(path) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, '-c', _CHILD, str(path)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, 'PYTHONPATH': str(REPO_ROOT)})
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith('{'):
            record = json.loads(line)
            results.setdefault(record['route'], {}).update(record)
    return proc, results


@pytest.mark.parametrize('case', CASES)
def test_crafted_file_is_refused_in_every_route(tmp_path, case):
    path, marker, named = _save_crafted(tmp_path, case)
    proc, results = _run_child(path)
    started = [route for route, record in results.items() if 'error' not in record]
    assert proc.returncode == 0, (f'the child loading {case} died with return code {proc.returncode} (negative: '
                                  f'killed by that signal, 11 is SIGSEGV) in route {started}\n{proc.stderr[-3000:]}')
    assert not marker.exists(), f'loading {case} ran the code in the file'
    assert set(results) == {'safe_load', 'init_cfg', 'mmengine'}, proc.stderr[-3000:]
    for route, record in results.items():
        assert record['error'] is not None, f'{route} loaded {case}'
        message = record['message']
        if case.startswith('legacy') and route != 'mmengine':
            # Our loader reads only the zip format; mmengine's torch.load refuses the payload itself.
            assert record['error'] == 'CheckpointFileError' and 'legacy format' in message and str(path) in message
            continue
        if route != 'mmengine':
            assert record['error'] == 'ValueError' and f'refusing to load {path}' in message, message
        else:
            assert record['error'] == 'UnpicklingError', message
        assert named in message, message


def test_converter_tool_refuses_a_crafted_array(tmp_path):
    path, _, _ = _save_crafted(tmp_path, 'object-array-over-bytes')
    dst = tmp_path / 'converted.pth'
    proc = subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'convert_official_ckpt.py'), str(path), str(dst)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, f'return code {proc.returncode} (negative: killed by a signal)\n{proc.stderr[-3000:]}'
    assert f'refusing to load {path}' in proc.stderr and 'numpy.ndarray' in proc.stderr
    assert not dst.exists() and not dst.with_name(dst.name + '.tmp').exists()
