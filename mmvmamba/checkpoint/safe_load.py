"""Loading checkpoint files without running pickled code.

``torch.load(weights_only=True)`` only rebuilds tensors, containers and an allow-list of types. Two kinds of
files we must read contain other pickled objects:

* the official VMamba classification checkpoints pickle their yacs training config (``yacs.config.CfgNode``);
* the checkpoints mmengine writes (and so every released Mask R-CNN / UperNet file) pickle the message hub's
  ``HistoryBuffer``, the statistics methods it refers to (as ``getattr(HistoryBuffer, 'mean')``), and numpy
  arrays and scalars.

The allow-list below names exactly those types. The yacs config is rebuilt as an inert OrderedDict (``PickledConfig``),
so yacs need not be installed and none of its code runs. Anything else in a file is refused with an error that
names the type; we never fall back to ``weights_only=False``.
"""
import pickle
from collections import OrderedDict
from collections.abc import Callable
from os import PathLike

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


class PickledConfig:
    """Inert stand-in for a pickled ``yacs.config.CfgNode``: rebuilt as an ``OrderedDict`` of its items.

    ``torch.load(weights_only=True)`` fills only plain dict types, so the stand-in creates an OrderedDict; the
    CfgNode's own attributes (its immutability flags) end up in that OrderedDict's ``__dict__``.
    """

    def __new__(cls, *args, **kwargs) -> OrderedDict:
        return OrderedDict()


# HistoryBuffer's built-in statistics (it fills its registry with them lazily, on the first instance).
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_statistic(owner, name: str):
    """Stands in for ``builtins.getattr`` while unpickling: only a HistoryBuffer statistics method may be looked up."""
    allowed = set(_HISTORY_BUFFER_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if owner is HistoryBuffer and name in allowed:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f'refusing getattr({owner!r}, {name!r}) while unpickling: only HistoryBuffer '
                                 f'statistics methods {sorted(allowed)} are allowed')


def _numpy_types() -> list[tuple[Callable, str] | Callable]:
    reconstruct = np._core.multiarray._reconstruct
    scalar = np._core.multiarray.scalar
    dtype_classes = [type(np.dtype(name)) for name in ('float64', 'float32', 'float16', 'int64', 'int32', 'bool')]
    return [
        np.ndarray, np.dtype, *dtype_classes,
        # numpy 2 pickles under numpy._core, numpy 1 under numpy.core: accept both names.
        (reconstruct, 'numpy._core.multiarray._reconstruct'),
        (reconstruct, 'numpy.core.multiarray._reconstruct'),
        (scalar, 'numpy._core.multiarray.scalar'),
        (scalar, 'numpy.core.multiarray.scalar'),
    ]


def checkpoint_safe_globals() -> list[tuple[Callable, str] | Callable]:
    """The non-tensor types that official VMamba and mmengine checkpoints may contain."""
    return [
        (PickledConfig, 'yacs.config.CfgNode'),
        HistoryBuffer,
        (_history_buffer_statistic, 'builtins.getattr'),
        *_numpy_types(),
    ]


def register_checkpoint_safe_globals() -> None:
    """Allow these types in every ``torch.load(weights_only=True)`` of this process.

    mmengine's own loading (``load_from``, ``--resume``, ``tools/test.py``) calls ``torch.load`` with torch's
    default ``weights_only=True``; registering the allow-list lets it read the files mmengine itself writes,
    so nobody has to switch ``weights_only`` off for the whole process.
    """
    torch.serialization.add_safe_globals(checkpoint_safe_globals())


def safe_load(path: str | PathLike, map_location: str | torch.device | None = 'cpu') -> dict:
    """``torch.load`` of a checkpoint with ``weights_only=True`` and the allow-list above.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds a pickled type outside the allow-list (named in the message).
    """
    # The context manager un-registers what it added on exit: add only what is not registered process-wide already.
    registered = torch.serialization.get_safe_globals()
    missing = [item for item in checkpoint_safe_globals() if item not in registered]
    try:
        with torch.serialization.safe_globals(missing):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f'refusing to load {path}: it pickles a type outside the checkpoint allow-list, '
                         f'and loading it would run code from the file.\n{err}') from err
