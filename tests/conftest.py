"""Shared test fixtures. Real datasets live in ../shared/datasets (never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS_ROOT = Path(os.environ.get("UNIHEMA_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


def dataset_path(name: str) -> Path:
    """Path of a staged real dataset; skips the test (or fails under CI) when it is missing."""
    path = DATASETS_ROOT / name
    if not path.is_dir():
        if os.environ.get("UNIHEMA_REQUIRE_DATA") == "1":
            pytest.fail(f"dataset {name!r} missing at {path} (UNIHEMA_REQUIRE_DATA=1)")
        pytest.skip(f"dataset {name!r} not found at {path}")
    return path


@pytest.fixture
def datasets_root() -> Path:
    if not DATASETS_ROOT.is_dir():
        if os.environ.get("UNIHEMA_REQUIRE_DATA") == "1":
            pytest.fail(f"datasets missing at {DATASETS_ROOT} (UNIHEMA_REQUIRE_DATA=1)")
        pytest.skip(f"datasets not found at {DATASETS_ROOT}")
    return DATASETS_ROOT


REFERENCE_ROOT = REPO_ROOT.parent / "shared" / "reference"


def reference_file(name: str) -> Path:
    """A file of ../shared/reference (e.g. the authors' state-dict listing); skips, or fails under CI."""
    path = REFERENCE_ROOT / name
    if not path.is_file():
        if os.environ.get("UNIHEMA_REQUIRE_DATA") == "1":
            pytest.fail(f"reference file {path} missing (UNIHEMA_REQUIRE_DATA=1)")
        pytest.skip(f"reference file {path} not found")
    return path
