"""Where the real datasets and reference files are, and how a test gets them: a missing dataset skips the
test with its reason, or fails it under CI (``UNIHEMA_REQUIRE_DATA=1``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS_ROOT = Path(os.environ.get("UNIHEMA_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))
REFERENCE_ROOT = REPO_ROOT.parent / "shared" / "reference"


def missing(what: str, where: Path) -> None:
    """Fail under CI, skip otherwise, saying what is missing and where it was looked for."""
    if os.environ.get("UNIHEMA_REQUIRE_DATA") == "1":
        pytest.fail(f"{what} missing at {where} (UNIHEMA_REQUIRE_DATA=1)")
    pytest.skip(f"{what} not found at {where}")


def dataset_path(name: str) -> Path:
    """Path of a staged real dataset; skips the test (or fails under CI) when it is missing."""
    path = DATASETS_ROOT / name
    if not path.is_dir():
        missing(f"dataset {name!r}", path)
    return path


def reference_file(name: str) -> Path:
    """A file of ../shared/reference (e.g. the authors' state-dict listing); skips, or fails under CI."""
    path = REFERENCE_ROOT / name
    if not path.is_file():
        missing(f"reference file {name!r}", path)
    return path
