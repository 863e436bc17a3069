"""Loading checkpoint files without running pickled code.

``torch.load(weights_only=True)`` only rebuilds tensors, containers and an allow-list of types. Two kinds of
files we must read contain other pickled objects:

* the official VMamba classification checkpoints pickle their yacs training config (``yacs.config.CfgNode``);
* the checkpoints mmengine writes (and so every released Mask R-CNN / UperNet file) pickle the message hub's
  ``HistoryBuffer``, the statistics methods it refers to (as ``getattr(HistoryBuffer, 'mean')``), and numpy
  arrays and scalars.

The allow-list below names exactly those types, each behind a check. The yacs config is rebuilt as an inert
OrderedDict (``PickledConfig``), so yacs need not be installed and none of its code runs. numpy is never handed to
the unpickler as it is: ``numpy.ndarray`` itself would let a file call ``numpy.ndarray((1,), 'O', buffer=...)`` and
build an object array over forged pointer bytes, which crashes the process (SIGSEGV) when touched. Instead
``numpy.dtype``, the array reconstructor and ``numpy.ndarray`` are stand-ins that accept only plain numeric dtypes
(bool, integers, floats, complex; no objects, no structured or sub-array dtypes) and raw data of exactly the
declared size; arrays come back as :class:`CheckedArray`, an ``ndarray`` subclass that pickles again as a plain
``numpy.ndarray``. Anything else in a file is refused with an error that names the type; we never fall back to
``weights_only=False``. Only the zip format of torch >= 1.6 is read (see :func:`.files.check_checkpoint_file`).

When the allow-list is active: importing mmvmamba changes nothing in torch. :func:`safe_load` (the backbone's
``init_cfg``, ``tools/convert_official_ckpt.py``) enables it for its own ``torch.load`` only. mmengine's
``load_from``, ``--resume`` and test checkpoints go through mmengine's own ``torch.load`` with torch's
``weights_only=True`` default; for those, :func:`register_checkpoint_safe_globals` adds the allow-list to torch for the
rest of the process. ``tools/train.py`` and ``tools/test.py`` call it before they build the runner; code that builds
an mmengine ``Runner`` itself calls it before ``train()``, ``val()`` or ``test()``.
"""
import math
import pickle
import reprlib
from collections import OrderedDict
from collections.abc import Callable
from os import PathLike

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from .files import check_checkpoint_file


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


# ---- numpy: numeric arrays and scalars only ----

_NUMERIC_TYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                  np.float16, np.float32, np.float64, np.complex64, np.complex128)
# The type string numpy pickles a dtype by (``numpy.dtype('f8', False, True)``), for each allowed type.
_NUMERIC_DTYPES = {np.dtype(t).__reduce__()[1][0]: np.dtype(t) for t in _NUMERIC_TYPES}
# What numpy's own reduce passes to the reconstructor: an empty int8 ('b') array to fill from the state.
_RECONSTRUCT_ARGS = ((0, ), b'b')


def _short(value) -> str:
    """``repr`` cut short: the values come from the file and may be large."""
    return reprlib.repr(value)


def _refuse(message: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f'{message}; only plain numeric numpy arrays and scalars are allowed')


class PickledDType:
    """Stands in for ``numpy.dtype`` while unpickling: a numeric dtype from its type string and byte order.

    The file's dtype state goes through :meth:`__setstate__` here, never through numpy's own. The result is
    :attr:`dtype`; :class:`CheckedArray` and the scalar reconstructor take a ``PickledDType``, nothing else.
    """

    def __new__(cls, spec=None, align=False, copy=True) -> 'PickledDType':
        if type(spec) is not str or spec not in _NUMERIC_DTYPES:
            raise _refuse(f'refusing numpy dtype {_short(spec)} in the file')
        if align not in (False, 0) or copy not in (True, 1):
            raise _refuse(f'refusing numpy dtype arguments align={_short(align)}, copy={_short(copy)}')
        self = super().__new__(cls)
        self.dtype = _NUMERIC_DTYPES[spec]
        return self

    def __setstate__(self, state) -> None:
        # numpy pickles a numeric dtype's state as (3, byte order, None, None, None, -1, -1, 0).
        if not (type(state) is tuple and len(state) == 8 and state[0] == 3 and state[1] in ('<', '>', '|', '=')
                and state[2:] == (None, None, None, -1, -1, 0)):
            raise _refuse(f'refusing numpy dtype state {_short(state)} (sub-arrays, fields, metadata or flags)')
        if state[1] in ('<', '>'):
            self.dtype = self.dtype.newbyteorder(state[1])

    def __reduce__(self):
        raise TypeError('PickledDType only exists while unpickling; pickle its .dtype instead')


class CheckedArray(np.ndarray):
    """A numeric ``numpy.ndarray`` read from a checkpoint; it pickles again as a plain ``numpy.ndarray``.

    While unpickling it stands in for ``numpy.ndarray``: calling it (``numpy.ndarray(shape, dtype, buffer)`` in a
    file) is refused, and :meth:`__setstate__` accepts only a :class:`PickledDType` and raw bytes of exactly the
    size that the shape and dtype declare. numpy creates instances of it without calling ``__new__`` (the
    reconstructor, views, ufunc results), so those work as for any ndarray.
    """

    def __new__(cls, *args, **kwargs):
        raise _refuse('refusing a call of numpy.ndarray(...) in the file: it would build an array over raw bytes')

    def __setstate__(self, state) -> None:
        if not (type(state) is tuple and len(state) == 5):
            raise _refuse(f'refusing numpy array state of type {type(state).__name__}')
        version, shape, dtype, is_fortran, rawdata = state
        if type(dtype) is not PickledDType:
            raise _refuse(f'refusing numpy array of dtype {_short(dtype)}')
        if version != 1 or type(is_fortran) is not bool:
            raise _refuse(f'refusing numpy array state version={_short(version)}, is_fortran={_short(is_fortran)}')
        if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
            raise _refuse(f'refusing numpy array shape {_short(shape)}')
        expected = math.prod(shape) * dtype.dtype.itemsize
        if type(rawdata) is not bytes or len(rawdata) != expected:
            size = len(rawdata) if type(rawdata) is bytes else type(rawdata).__name__
            raise _refuse(f'refusing numpy array data of {size} for shape {shape} and dtype {dtype.dtype} '
                          f'({expected} bytes)')
        super().__setstate__((version, shape, dtype.dtype, is_fortran, rawdata))

    def __reduce__(self):
        return self.view(np.ndarray).__reduce__()

    def __reduce_ex__(self, protocol):
        return self.view(np.ndarray).__reduce_ex__(protocol)


def _reconstruct_checked_array(cls, shape, typecode) -> CheckedArray:
    """Stands in for numpy's ``_reconstruct``: an empty :class:`CheckedArray` for BUILD to fill."""
    if cls is not CheckedArray or (shape, typecode) != _RECONSTRUCT_ARGS:
        raise _refuse(f'refusing numpy array reconstruction {_short((cls, shape, typecode))}')
    return np.empty(0, dtype=np.int8).view(CheckedArray)


def _checked_scalar(dtype, data) -> np.generic:
    """Stands in for numpy's ``scalar``: a numeric scalar from exactly ``itemsize`` bytes."""
    if type(dtype) is not PickledDType:
        raise _refuse(f'refusing numpy scalar of dtype {_short(dtype)}')
    if type(data) is not bytes or len(data) != dtype.dtype.itemsize:
        raise _refuse(f'refusing numpy scalar data {_short(data)} for dtype {dtype.dtype}')
    return np.frombuffer(data, dtype=dtype.dtype, count=1)[0]


def _empty_bytes(*args) -> bytes:
    """Stands in for ``builtins.bytes``: pickle protocol 2 writes ``b''`` (an empty array's data) as ``bytes()``."""
    if args:
        raise pickle.UnpicklingError(f'refusing bytes{_short(args)} while unpickling: only bytes() (b"") is allowed')
    return b''


def _numpy_types() -> list[tuple[Callable, str] | Callable]:
    return [
        (_empty_bytes, 'builtins.bytes'),
        (PickledDType, 'numpy.dtype'),
        (CheckedArray, 'numpy.ndarray'),
        # numpy 2 pickles under numpy._core, numpy 1 under numpy.core: accept both names.
        (_reconstruct_checked_array, 'numpy._core.multiarray._reconstruct'),
        (_reconstruct_checked_array, 'numpy.core.multiarray._reconstruct'),
        (_checked_scalar, 'numpy._core.multiarray.scalar'),
        (_checked_scalar, 'numpy.core.multiarray.scalar'),
    ]


def checkpoint_safe_globals() -> list[tuple[Callable, str] | Callable]:
    """The non-tensor types that official VMamba and mmengine checkpoints may contain, each behind its check."""
    return [
        (PickledConfig, 'yacs.config.CfgNode'),
        HistoryBuffer,
        (_history_buffer_statistic, 'builtins.getattr'),
        *_numpy_types(),
    ]


def _unchecked_numpy_globals(registered: list) -> list[str]:
    """Names under which torch's allow-list already holds numpy's own constructors (added by other code)."""
    unchecked = {np.ndarray, np.dtype, np._core.multiarray._reconstruct, np._core.multiarray.scalar}
    names = []
    for item in registered:
        obj, name = item if isinstance(item, tuple) else (item, f'{item.__module__}.{item.__qualname__}')
        if obj in unchecked or (isinstance(obj, type) and issubclass(obj, np.dtype)):
            names.append(name)
    return names


def _missing_safe_globals() -> list[tuple[Callable, str] | Callable]:
    """The part of our allow-list that torch does not hold yet; raises if numpy's unchecked types are in it."""
    registered = torch.serialization.get_safe_globals()
    unchecked = _unchecked_numpy_globals(registered)
    if unchecked:
        raise RuntimeError(f'torch.serialization holds numpy types without checks in its process-wide allow-list '
                           f'({unchecked}, added by other code): with them a crafted file can crash the process '
                           'while loading. Remove them (torch.serialization.clear_safe_globals()) and load '
                           'mmengine checkpoints through mmvmamba.checkpoint.register_checkpoint_safe_globals()')
    return [item for item in checkpoint_safe_globals() if item not in registered]


def register_checkpoint_safe_globals() -> None:
    """Allow the checked types in every ``torch.load(weights_only=True)`` for the rest of this process.

    mmengine's own loading (``load_from``, ``--resume``, ``tools/test.py``) calls ``torch.load`` with torch's
    default ``weights_only=True``; registering the allow-list lets it read the files mmengine itself writes, so
    nobody has to switch ``weights_only`` off. Calling it again adds nothing.

    Raises:
        RuntimeError: torch's allow-list already holds ``numpy.ndarray`` or ``numpy.dtype`` themselves.
    """
    torch.serialization.add_safe_globals(_missing_safe_globals())


def safe_load(path: str | PathLike, map_location: str | torch.device | None = 'cpu') -> dict:
    """``torch.load`` of a checkpoint with ``weights_only=True`` and the allow-list above (for this call only).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointFileError: ``path`` is empty, a text file, in the legacy format, truncated or corrupted.
        ValueError: the file holds a pickled type outside the allow-list or a refused numpy array (named in the
            message).
    """
    check_checkpoint_file(path)
    # The context manager un-registers what it added on exit: add only what is not registered process-wide already.
    try:
        with torch.serialization.safe_globals(_missing_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f'refusing to load {path}: it pickles a type or value outside the checkpoint allow-list '
                         f'(loading such a file could run code from it or crash the process).\n{err}') from err
    except Exception as err:
        err.add_note(f'while loading the checkpoint {str(path)!r}')
        raise
