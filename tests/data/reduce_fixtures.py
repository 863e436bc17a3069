"""Write the reduced parity fixtures of tests/data/parity from the full set made by the official code.

    python tests/data/reduce_fixtures.py SRC [--dst tests/data/parity] [--stages 2]

SRC is the folder of the full fixtures (``a_tiny_s1l8_ln2d.pt`` ...; see tests/data/README.md). Nothing is
computed: every kept tensor is copied bit for bit. A backbone's first ``--stages`` stages depend only on the stem,
those stages' blocks, the downsampling between them and their output norms, so the reduced file keeps exactly those
weights, the official outputs of those stages and a config with ``depths`` and ``out_indices`` cut to match. The
1000-way classifier matrix of the classification checkpoints is dropped (the backbone loader discards every
classifier key; their norm and bias stay to exercise that). A key this script does not expect is an error.
"""
import argparse
import re
from pathlib import Path

import torch

VARIANTS = ('a_tiny_s1l8_ln2d', 'c_vanilla_v0_ln', 'd_tiny_s1l8_ln')
CLS_CHECKPOINTS = ('a_tiny_s1l8_ln2d_cls_ckpt', 'c_vanilla_v0_ln_cls_legacy_ckpt')
DET_CHECKPOINTS = ('a_tiny_s1l8_ln2d_det_ckpt',)
# Classifier keys, current and January-2024 names: the matrix is dropped, the rest kept.
CLASSIFIER_DROPPED = {'classifier.head.weight', 'head.weight'}
CLASSIFIER_KEPT = {'classifier.head.bias', 'classifier.norm.weight', 'classifier.norm.bias', 'head.bias',
                   'norm.weight', 'norm.bias'}
STAGE_KEY = re.compile(r'^layers\.(\d+)\.(blocks|downsample)\.')
OUTNORM_KEY = re.compile(r'^outnorm(\d+)\.')


def keep_backbone_key(key: str, stages: int) -> bool:
    """Whether a backbone weight (current or legacy name) is used by the outputs of the first ``stages`` stages."""
    if key.startswith('patch_embed.'):
        return True
    if match := STAGE_KEY.match(key):
        index, part = int(match[1]), match[2]
        # a stage's downsampling feeds the next stage, so the last kept stage's is not needed
        return index < stages if part == 'blocks' else index < stages - 1
    if match := OUTNORM_KEY.match(key):
        return int(match[1]) < stages
    raise KeyError(f'unexpected backbone key {key!r}')


def reduce_state_dict(state_dict: dict, stages: int, classifier: bool = False) -> dict:
    reduced = {}
    for key, value in state_dict.items():
        if classifier and key in CLASSIFIER_DROPPED:
            continue
        if (classifier and key in CLASSIFIER_KEPT) or keep_backbone_key(key, stages):
            reduced[key] = value
    return reduced


def reduce_config(config: dict, stages: int) -> dict:
    return {**config, 'depths': config['depths'][:stages], 'out_indices': list(range(stages))}


def reduce_outputs(fixture: dict, stages: int) -> dict:
    return {**fixture, 'outputs': fixture['outputs'][:stages], 'outputs_odd': fixture['outputs_odd'][:stages],
            'config': reduce_config(fixture['config'], stages)}


def note(stages: int, what: str) -> str:
    return (f'reduced by tests/data/reduce_fixtures.py to the first {stages} stages: {what}; every kept tensor is '
            f'the official one, unchanged')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', type=Path, help='folder of the full fixtures')
    parser.add_argument('--dst', type=Path, default=Path(__file__).resolve().parent / 'parity')
    parser.add_argument('--stages', type=int, default=2)
    args = parser.parse_args()
    args.dst.mkdir(parents=True, exist_ok=True)
    load = lambda name: torch.load(args.src / f'{name}.pt', map_location='cpu', weights_only=True)  # noqa: E731
    written = {}

    for name in VARIANTS:
        fixture = reduce_outputs(load(name), args.stages)
        fixture['state_dict'] = reduce_state_dict(fixture['state_dict'], args.stages)
        fixture['meta'] = {**fixture['meta'], 'reduction': note(args.stages, 'weights, outputs and config')}
        written[name] = fixture
    for name in CLS_CHECKPOINTS:
        checkpoint = load(name)
        written[name] = {**checkpoint, 'model': reduce_state_dict(checkpoint['model'], args.stages, classifier=True)}
        expected = reduce_outputs(load(f'{name}_expected'), args.stages)
        kept = set(written[name]['model'])
        expected['missing_keys'] = [k for k in expected['missing_keys'] if keep_backbone_key(k, args.stages)]
        # the official loader reports classifier keys under their current names
        expected['unexpected_keys'] = [k for k in expected['unexpected_keys'] if k != 'classifier.head.weight']
        expected['reduction'] = note(args.stages, f'outputs, config and key lists ({len(kept)} checkpoint keys); '
                                                  f'official_load_log is the full run\'s')
        written[f'{name}_expected'] = expected
    for name in DET_CHECKPOINTS:
        checkpoint = load(name)
        state_dict = {}
        for key, value in checkpoint['state_dict'].items():
            if not key.startswith('backbone.') or keep_backbone_key(key.removeprefix('backbone.'), args.stages):
                state_dict[key] = value
        written[name] = {**checkpoint, 'state_dict': state_dict}

    for name, content in written.items():
        path = args.dst / f'{name}.pt'
        torch.save(content, path)
        print(f'{path}: {path.stat().st_size / 1e3:.0f} kB')


if __name__ == '__main__':
    main()
