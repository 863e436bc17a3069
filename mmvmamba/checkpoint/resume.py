"""Choosing and checking the checkpoint that a resumed run continues from (``tools/train.py --resume``).

mmengine resumes from the file named in ``<work_dir>/last_checkpoint``. Without that file it logs one line and
trains from iteration 0, overwriting the ``iter_*.pth`` already in the work dir; with a truncated file it stops with
torch's "corrupted" message. :func:`resume_checkpoint` refuses both, names the file and the problem, and points at
the newest checkpoint in the work dir that is intact. It never writes, moves or removes a checkpoint.
"""
import re
from os import PathLike
from pathlib import Path

from .files import CheckpointFileError, check_checkpoint_file, is_checkpoint_intact

# The files mmengine's CheckpointHook writes: iter_<N>.pth or epoch_<N>.pth.
_HOOK_CHECKPOINT = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


def work_dir_checkpoints(work_dir: str | PathLike) -> list[Path]:
    """The ``*.pth`` files directly in ``work_dir``: ``iter_N`` / ``epoch_N`` by N, newest first, then the others
    (e.g. ``best_*.pth``) by modification time, newest first."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    files = [path for path in work_dir.glob('*.pth') if path.is_file()]
    numbered = sorted((path for path in files if _HOOK_CHECKPOINT.match(path.name)),
                      key=lambda path: int(_HOOK_CHECKPOINT.match(path.name).group(2)), reverse=True)
    others = sorted((path for path in files if not _HOOK_CHECKPOINT.match(path.name)),
                    key=lambda path: path.stat().st_mtime, reverse=True)
    return numbered + others


def newest_intact_checkpoint(work_dir: str | PathLike, exclude: str | PathLike | None = None) -> Path | None:
    """The first of :func:`work_dir_checkpoints` (other than ``exclude``) that is a complete checkpoint."""
    excluded = Path(exclude).resolve() if exclude is not None else None
    for path in work_dir_checkpoints(work_dir):
        if path.resolve() != excluded and is_checkpoint_intact(path):
            return path
    return None


def _intact_hint(work_dir: Path, bad: str | PathLike | None) -> str:
    intact = newest_intact_checkpoint(work_dir, exclude=bad)
    if intact is None:
        return f'No other checkpoint in {str(work_dir)!r} is intact.'
    return (f'The newest intact checkpoint in {str(work_dir)!r} is {str(intact)!r}: resume from it with '
            f'--resume {intact}')


def resume_checkpoint(work_dir: str | PathLike, checkpoint: str | PathLike | None,
                      allow_fresh_start: bool = False) -> str | None:
    """The checkpoint a resumed run continues from, checked to be complete.

    Args:
        work_dir: The run's work dir.
        checkpoint: The file to resume from (``--resume PATH``), or None for the one that
            ``<work_dir>/last_checkpoint`` names (``--resume``).
        allow_fresh_start: With ``checkpoint=None``, return None (train from iteration 0) instead of raising when the
            work dir holds no ``last_checkpoint`` and no checkpoint at all. Default: False.

    Returns:
        The path to resume from; None only for an allowed fresh start.

    Raises:
        FileNotFoundError: there is nothing to resume from (and a fresh start was not allowed, or would overwrite
            checkpoints already in the work dir), or the checkpoint does not exist.
        CheckpointFileError: the checkpoint is empty, truncated or corrupted.
    """
    work_dir = Path(work_dir)
    if checkpoint is None:
        pointer = work_dir / 'last_checkpoint'
        if pointer.is_file():
            checkpoint = pointer.read_text().strip()
            if not checkpoint:
                raise FileNotFoundError(f'--resume: {str(pointer)!r} is empty, so it names no checkpoint to resume '
                                        f'from. {_intact_hint(work_dir, None)}')
        else:
            existing = work_dir_checkpoints(work_dir)
            if existing:
                names = ', '.join(path.name for path in existing[:10])
                raise FileNotFoundError(
                    f'--resume: {str(work_dir)!r} holds checkpoints ({names}) but no last_checkpoint file naming the '
                    f'one to continue from, and a run from iteration 0 would overwrite them. '
                    f'{_intact_hint(work_dir, None)}')
            if allow_fresh_start:
                return None
            raise FileNotFoundError(
                f'--resume: there is no checkpoint to resume from in {str(work_dir)!r} (no last_checkpoint file, no '
                '*.pth). Check --work-dir, or pass --allow-fresh-start to train from iteration 0 when the work dir '
                'holds nothing to resume.')
    try:
        check_checkpoint_file(checkpoint)
    except (CheckpointFileError, FileNotFoundError) as err:
        raise type(err)(f'cannot resume: {err}\n{_intact_hint(work_dir, checkpoint)}') from err
    return str(checkpoint)
