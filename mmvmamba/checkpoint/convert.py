"""Conversion of official VMamba checkpoints (classification, legacy, mmdet/mmseg) to backbone state dicts."""
import re
from collections import OrderedDict

import torch

# January-2024 names -> current names, applied once per key, in this order (official rename hook, spec 4.1).
_LEGACY_RENAMES = (
    (re.compile(r'^patch_embed\.proj\.'), 'patch_embed.0.'),
    (re.compile(r'^patch_embed\.norm\.'), 'patch_embed.2.'),
    (re.compile(r'^(layers\.\d+\.blocks\.\d+\.)ln_1\.'), r'\1norm.'),
    (re.compile(r'^(layers\.\d+\.blocks\.\d+\.)self_attention\.'), r'\1op.'),
    (re.compile(r'^norm\.'), 'classifier.norm.'),
    (re.compile(r'^head\.'), 'classifier.head.'),
)
# Classification-only keys: the classifier of the current format and what the legacy renames map there.
_CLASSIFIER = re.compile(r'^classifier\.')
# Linear weights, stored (out, in); channel-first training code may have saved them as (out, in, 1, 1).
_LINEAR_WEIGHT = re.compile(r'(\.in_proj|\.out_proj|\.fc1|\.fc2|\.reduction)\.weight$')
_WRAPPER_PREFIXES = ('module.', 'backbone.')


def _pick_state_dict(checkpoint: dict, use_ema: bool, prefix: str | None) -> tuple[dict, str]:
    """The tensor dict inside a checkpoint, and a short description of where it came from."""
    if use_ema:
        if 'model_ema' not in checkpoint:
            raise KeyError(f"use_ema=True but the checkpoint has no 'model_ema' (keys: {sorted(checkpoint)})")
        return checkpoint['model_ema'], "'model_ema'"
    for key in ('state_dict', 'model'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            state_dict, source = checkpoint[key], repr(key)
            break
    else:
        if not all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
            raise ValueError(f"not a VMamba checkpoint: no 'state_dict' or 'model' entry and not a plain state dict "
                             f'(keys: {sorted(checkpoint)[:10]})')
        state_dict, source = checkpoint, 'the top level'
    if prefix:
        state_dict = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        if not state_dict:
            raise ValueError(f'no key of {source} starts with prefix {prefix!r}')
    return state_dict, source


def _strip_wrappers(state_dict: dict) -> dict:
    """Remove ``module.`` (DataParallel) and take the ``backbone.`` part of a detector or segmentor."""
    if any(key.startswith('module.') for key in state_dict):
        state_dict = {key.removeprefix('module.'): value for key, value in state_dict.items()}
    if any(key.startswith('backbone.') for key in state_dict):
        state_dict = {key[len('backbone.'):]: value for key, value in state_dict.items() if key.startswith('backbone.')}
    return state_dict


def _rename_legacy(key: str) -> str:
    for pattern, replacement in _LEGACY_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def convert_vmamba_official(checkpoint: dict,
                            use_ema: bool = False,
                            prefix: str | None = None) -> tuple[OrderedDict, list[str]]:
    """Turn any official VMamba checkpoint into a state dict of :class:`mmvmamba.VMamba`.

    Handles classification files (``model`` or ``model_ema``), the January-2024 legacy key names,
    mmdet / mmseg files (``state_dict`` with a ``backbone.`` prefix) and already converted state dicts
    (returned unchanged, so conversion is idempotent).

    Args:
        checkpoint: The loaded checkpoint (a dict).
        use_ema: Take a classification checkpoint's ``model_ema`` instead of ``model``. Default: False.
        prefix: Only keep keys with this prefix, stripped. Default: None (automatic).

    Returns:
        The backbone state dict and the sorted list of classifier keys that were dropped.
    """
    state_dict, _ = _pick_state_dict(checkpoint, use_ema, prefix)
    state_dict = _strip_wrappers(state_dict)
    converted, dropped = OrderedDict(), []
    for key, value in state_dict.items():
        key = _rename_legacy(key)
        if _CLASSIFIER.match(key):
            dropped.append(key)
            continue
        if _LINEAR_WEIGHT.search(key) and value.dim() == 4 and value.shape[2:] == (1, 1):
            value = value.flatten(1)
        converted[key] = value
    return converted, sorted(dropped)
