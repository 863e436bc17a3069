"""Where the parity fixtures and the key/shape manifests are.

Both ship in tests/data (see tests/data/README.md): a reduced set of the parity fixtures made by the official code
and the manifests of the released backbones. ``MMVMAMBA_FIXTURES`` points at another folder of the same structure
(e.g. the full set or held-out fixtures), ``MMVMAMBA_MANIFESTS`` at other manifests. A missing folder fails the tests
that need it: parity is never skipped silently.
"""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / 'tests' / 'data'
DEFAULT_FIXTURES = DATA_DIR / 'parity'
DEFAULT_MANIFESTS = DATA_DIR / 'manifests'


def _existing_dir(env_var: str, default: Path) -> Path:
    path = Path(os.environ.get(env_var) or default)
    if not path.is_dir():
        raise FileNotFoundError(f'{path} does not exist: set {env_var} to the folder (default {default})')
    return path


def fixtures_dir() -> Path:
    return _existing_dir('MMVMAMBA_FIXTURES', DEFAULT_FIXTURES)


def manifests_dir() -> Path:
    return _existing_dir('MMVMAMBA_MANIFESTS', DEFAULT_MANIFESTS)
