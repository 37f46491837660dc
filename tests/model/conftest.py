"""Fixtures of the model tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


@pytest.fixture
def default_copy(tmp_path: Path) -> Path:
    """A copy of the default bundle that a test may edit."""
    dst = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, dst)
    return dst
