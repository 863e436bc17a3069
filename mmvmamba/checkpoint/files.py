"""Checking that a file is a complete PyTorch checkpoint before anything unpickles it.

``torch.load`` reports a text file as ``KeyError: 101`` or ``IndexError``, an empty file as a bare ``EOFError`` and a
truncated one as "the checkpoint file is corrupted", none naming the file. :func:`check_checkpoint_file` reads the
file's zip structure (and, where the writer recorded them, its CRC-32 checksums) and says which file and what is
wrong. It never changes or removes the file.
"""
import zipfile
from os import PathLike
from pathlib import Path

# torch.save's zip format (torch >= 1.6): a zip archive whose records sit under one folder, with the pickle in data.pkl.
_ZIP_SIGNATURES = (b'PK\x03\x04', b'PK\x05\x06')
# The legacy format (torch < 1.6, or _use_new_zipfile_serialization=False) starts with this pickled magic number.
_LEGACY_MAGIC = b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19'
_CHUNK = 1 << 24


class CheckpointFileError(ValueError):
    """A checkpoint file that is empty, truncated, corrupted or not a checkpoint at all."""


def check_checkpoint_file(path: str | PathLike, verify_crc: bool = True) -> None:
    """Raise unless ``path`` is a complete checkpoint in torch's zip format; read only, no unpickling.

    Args:
        path: The file.
        verify_crc: Also read every record and compare it with the CRC-32 the writer stored (skipped for files
            written with ``torch.utils.serialization.config.save.compute_crc32=False``, which store none).
            Default: True.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        CheckpointFileError: the file is empty, a text file, in the legacy (non-zip) format, truncated, or a record
            does not match its checksum; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {str(path)!r} does not exist' if not path.exists() else
                                f'checkpoint {str(path)!r} is not a file')
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFileError(f'checkpoint {str(path)!r} is empty (0 bytes): the save or the download that made '
                                  'it did not finish')
    with open(path, 'rb') as f:
        head = f.read(64)
    if not head.startswith(_ZIP_SIGNATURES):
        raise CheckpointFileError(f'checkpoint {str(path)!r} is not in PyTorch\'s zip checkpoint format: '
                                  f'{_describe_non_zip(head)}')
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            if not any(info.filename.endswith('/data.pkl') or info.filename == 'data.pkl' for info in records):
                raise CheckpointFileError(f'checkpoint {str(path)!r} is a zip archive but not a PyTorch checkpoint '
                                          '(it has no data.pkl record)')
            if verify_crc and any(info.CRC for info in records):
                for info in records:
                    _read_record(archive, info)
    except zipfile.BadZipFile as err:
        raise CheckpointFileError(f'checkpoint {str(path)!r} ({size} bytes) is truncated or corrupted ({err}): a '
                                  'save that was interrupted (a killed job, a full disk) or an incomplete copy leaves '
                                  'such a file') from err


def _read_record(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Read one record to its end: zipfile compares the CRC-32 there and raises ``BadZipFile`` on a mismatch."""
    try:
        with archive.open(info) as record:
            while record.read(_CHUNK):
                pass
    except (zipfile.BadZipFile, EOFError) as err:
        raise zipfile.BadZipFile(f'record {info.filename!r} does not match its stored checksum or size ({err})') \
            from err


def _describe_non_zip(head: bytes) -> str:
    """What a file that is not a zip archive looks like, from its first bytes."""
    if head.startswith(_LEGACY_MAGIC):
        return ('it is in the legacy format of torch < 1.6 (saved with _use_new_zipfile_serialization=False), which '
                'mmvmamba does not read. Load it where you trust it and save it again with a current torch.save')
    if head.startswith(b'\x80'):
        return 'it is a bare pickle, not a torch.save file'
    text = head.decode('utf-8', errors='ignore')  # the 64 bytes may end inside a multi-byte character
    if len(text.encode('utf-8')) >= len(head) - 3 and all(c.isprintable() or c.isspace() for c in text):
        return (f'it is a text file (it starts with {text[:40]!r}); an error page saved in place of a download, or '
                'a path to the wrong file?')
    return f'it starts with the bytes {head[:16]!r}'


def is_checkpoint_intact(path: str | PathLike) -> bool:
    """Whether :func:`check_checkpoint_file` accepts ``path`` (CRCs included)."""
    try:
        check_checkpoint_file(path)
    except (CheckpointFileError, FileNotFoundError):
        return False
    return True
