"""Fixtures for the tests of tools/analysis."""
import importlib
from pathlib import Path

import pytest

TOOLS_DIR = Path(__file__).resolve().parents[2] / 'tools' / 'analysis'


@pytest.fixture
def load_tool(monkeypatch):
    """``load_tool('get_flops')`` imports tools/analysis/get_flops.py as the scripts see each other."""
    monkeypatch.syspath_prepend(str(TOOLS_DIR))

    def load(name: str):
        return importlib.import_module(name)

    return load
