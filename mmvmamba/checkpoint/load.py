"""Loading a checkpoint into a VMamba backbone: strict, except for the out-norms a classifier never has."""
import re
from os import PathLike

import torch.nn as nn

from .convert import convert_vmamba_official
from .safe_load import safe_load

_OUTNORM = re.compile(r'^outnorm\d\.(weight|bias)$')


def load_backbone_state_dict(model: nn.Module, state_dict: dict) -> tuple[list[str], list[str]]:
    """``load_state_dict`` that allows only ``outnorm*`` to be missing or unused.

    A classification checkpoint has no out-norms: they are reset to weight 1, bias 0. A detection checkpoint has
    out-norms for stages that this model's ``out_indices`` leaves out: those are not loaded.

    Returns:
        The missing and the unused ``outnorm*`` keys.

    Raises:
        ValueError: any other key is missing or unexpected (all of them are listed), or a shape differs.
    """
    expected = model.state_dict()
    mismatched = [f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}'
                  for key, value in state_dict.items() if key in expected and value.shape != expected[key].shape]
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    unused_outnorm = [key for key in unexpected if _OUTNORM.match(key)]
    unexpected = [key for key in unexpected if not _OUTNORM.match(key)]
    missing_outnorm = [key for key in missing if _OUTNORM.match(key)]
    other_missing = [key for key in missing if not _OUTNORM.match(key)]
    if mismatched or other_missing or unexpected:
        raise ValueError('the checkpoint does not fit this VMamba backbone (is it for another variant?)\n'
                         f'  shape mismatches ({len(mismatched)}): {mismatched}\n'
                         f'  missing keys ({len(other_missing)}): {other_missing}\n'
                         f'  unexpected keys ({len(unexpected)}): {unexpected}')
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in unused_outnorm}, strict=False)
    for key in missing_outnorm:
        module_name, param_name = key.split('.')
        param = getattr(getattr(model, module_name), param_name)
        param.data.fill_(1.0 if param_name == 'weight' else 0.0)
    return missing_outnorm, unused_outnorm


def load_backbone_checkpoint(model: nn.Module,
                             path: str | PathLike,
                             use_ema: bool = False,
                             prefix: str | None = None,
                             map_location: str = 'cpu') -> str:
    """Load an official or converted checkpoint file into ``model``; returns a one-line report.

    Raises:
        FileNotFoundError, CheckpointFileError, ValueError: see :func:`.safe_load` (the file) and
            :func:`load_backbone_state_dict` (its keys); errors about the contents carry a note naming the file.
    """
    checkpoint = safe_load(path, map_location=map_location)
    try:
        state_dict, dropped = convert_vmamba_official(checkpoint, use_ema=use_ema, prefix=prefix)
        missing_outnorm, unused_outnorm = load_backbone_state_dict(model, state_dict)
    except (KeyError, ValueError) as err:
        err.add_note(f'while loading the checkpoint {str(path)!r} into the VMamba backbone')
        raise
    report = f'{len(state_dict) - len(unused_outnorm)} tensors loaded'
    if dropped:
        report += f'; dropped classifier keys {dropped}'
    if missing_outnorm:
        report += f'; not in the checkpoint, set to weight 1 / bias 0: {missing_outnorm}'
    if unused_outnorm:
        report += f'; out-norms of stages not in out_indices, not loaded: {unused_outnorm}'
    return report
