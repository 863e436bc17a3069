"""Loading checkpoint files without running pickled code.

``torch.load(weights_only=True)`` only rebuilds tensors, containers and an allow-list of types. Two kinds of
files we must read contain other pickled objects:

* the official VMamba classification checkpoints pickle their yacs training config (``yacs.config.CfgNode``);
* the checkpoints mmengine writes (and so every released Mask R-CNN / UperNet file) pickle the message hub's
  ``HistoryBuffer`` and numpy arrays and scalars.

The allow-list below names exactly those types. The yacs config is rebuilt as an inert dict (``PickledConfig``),
so yacs need not be installed and none of its code runs. Anything else in a file is refused with an error that
names the type; we never fall back to ``weights_only=False``.
"""
import pickle
from collections.abc import Callable
from os import PathLike

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


class PickledConfig(dict):
    """Inert stand-in for a pickled ``yacs.config.CfgNode``: its items, and its attributes in ``__dict__``."""


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
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f'refusing to load {path}: it pickles a type outside the checkpoint allow-list, '
                         f'and loading it would run code from the file.\n{err}') from err
