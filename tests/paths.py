"""Where the parity fixtures and the key/shape manifests are.

The parity fixtures were made by running the official VMamba code (see ../shared/fixtures/README.md). They live
outside the repository; ``MMVMAMBA_FIXTURES`` points at another folder of the same structure (e.g. held-out ones).
A missing folder fails the tests that need it: parity is never skipped silently.
"""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = REPO_ROOT.parent / 'shared' / 'fixtures' / 'parity'
DEFAULT_MANIFESTS = REPO_ROOT.parent / 'shared' / 'spec' / 'manifests'

def _existing_dir(env_var: str, default: Path) -> Path:
    path = Path(os.environ.get(env_var, default))
    if not path.is_dir():
        raise FileNotFoundError(f'{path} does not exist: set {env_var} to the folder (default {default})')
    return path

def fixtures_dir() -> Path:
    return _existing_dir('MMVMAMBA_FIXTURES', DEFAULT_FIXTURES)

def manifests_dir() -> Path:
    return _existing_dir('MMVMAMBA_MANIFESTS', DEFAULT_MANIFESTS)
