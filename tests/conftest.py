"""Shared test fixtures. Real datasets live in ../shared/datasets (never copied into the repository); the
helpers tests import live in the ``support`` package (``tests/support``, on pytest's ``pythonpath``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.paths import DATASETS_ROOT, missing


@pytest.fixture
def datasets_root() -> Path:
    if not DATASETS_ROOT.is_dir():
        missing("datasets", DATASETS_ROOT)
    return DATASETS_ROOT
