"""Helpers shared by the box and mask readers: split names, image headers, box clean-up, skip/fix records.

Policy for boxes (the same in every reader):

- a box partly outside the image is clipped to the image (recorded as :class:`~unihema.data.schema.Fixed`);
- a box with zero area, before or after clipping (including a box wholly outside the image), is dropped
  (``Fixed``): it cannot supervise anything visible;
- a box with inverted or non-finite coordinates is ambiguous: the whole annotation file is skipped
  (:class:`~unihema.data.schema.Skipped`), because dropping one box would teach that object as background.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from unihema.data.schema import Fixed, ReadResult, Skipped
from unihema.data.vocab import DETECTION_CLASSES, detection_index

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

SPLIT_NAMES: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
"""Folder / file-name spellings of a split -> the canonical split name used in :class:`Sample`."""

DATASET_DISEASE: dict[str, str] = {
    # Normal peripheral blood smears (no disease is named by these sources).
    "bccd": "healthy",
    "txl_pbc": "healthy",
    "segmentation_wbc": "healthy",
    "bccd_nucleus_masks": "healthy",
    # Thick-smear malaria parasite detection.
    "fiocruz_malaria_thick": "malaria",
}
"""Default disease context of the staged datasets; readers take a ``disease=`` option to override it."""

ROUNDING_TOLERANCE_PX = 0.5
"""A box edge at most this far outside the image is rounding of normalised coordinates: clipped silently."""

MAX_SEARCH_DEPTH = 2
"""How many folder levels below the given root a reader looks for its layout (``bccd/BCCD/Annotations``)."""


class ReaderWarning(UserWarning):
    """Warning emitted for every item a reader skipped."""


def dataset_name(root: Path, dataset: str | None) -> str:
    """The registry name of a dataset: ``dataset`` when given, else the root folder's name in lower case."""
    return dataset if dataset else Path(root).resolve().name.lower()


def default_disease(dataset: str, disease: str | None) -> str | None:
    return disease if disease is not None else DATASET_DISEASE.get(dataset)


def canonical_split(name: str) -> str | None:
    """``"valid"`` -> ``"val"``; ``None`` for a name that is not a split."""
    return SPLIT_NAMES.get(name.strip().lower())


def split_from_name(name: str) -> str | None:
    """Split named by a file name such as ``instances_val2017.json`` or ``test.json`` (letters-only tokens)."""
    found = {canonical_split(tok) for tok in re.split(r"[^a-z]+", name.lower()) if canonical_split(tok)}
    return found.pop() if len(found) == 1 else None


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (posix), or the absolute path when it lies outside ``root``."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def skip(result: ReadResult, path: str, reason: str) -> None:
    """Record a skipped item and warn about it (the warning names the file and the reason)."""
    result.skipped.append(Skipped(path, reason))
    warnings.warn(f"{result.dataset}: skipped {path}: {reason}", ReaderWarning, stacklevel=3)


def fix(result: ReadResult, path: str, what: str) -> None:
    result.fixed.append(Fixed(path, what))


def candidate_dirs(root: Path, max_depth: int = MAX_SEARCH_DEPTH) -> list[Path]:
    """``root`` and its sub-folders down to ``max_depth`` levels, sorted, hidden folders excluded."""
    found = [root]
    frontier = [root]
    for _ in range(max_depth):
        nxt: list[Path] = []
        for folder in frontier:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            nxt.extend(children)
        found.extend(nxt)
        frontier = nxt
    return found


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files of a folder (by extension), sorted by name."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def image_header_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the image header only (no pixel decoding)."""
    with Image.open(path) as im:
        width, height = im.size
    return height, width


def check_image(path: Path, verify: bool) -> tuple[tuple[int, int] | None, str | None]:
    """Size ``(h, w)`` and ``None``, or ``None`` and the reason the image is unreadable.

    Without ``verify`` only the header is parsed (cheap). With ``verify`` the pixels are decoded too,
    which is the only reliable way to catch truncated files (``Image.verify`` skips JPEG data).
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            if verify:
                im.load()
    except FileNotFoundError:
        return None, "image file not found"
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three for damaged files
        return None, f"unreadable image ({err})"
    if width <= 0 or height <= 0:
        return None, f"image has an empty size {width}x{height}"
    return (height, width), None


def find_image(folder: Path, stem: str, preferred: str | None = None) -> Path | None:
    """``folder/preferred`` when it exists, else ``folder/<stem><ext>`` for any image extension."""
    if preferred:
        path = folder / preferred
        if path.is_file():
            return path
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


@dataclass(frozen=True)
class BoxCheck:
    """Result of :func:`clean_boxes`: the kept boxes and labels, what was fixed, or why the file is bad."""

    boxes: np.ndarray
    labels: np.ndarray
    keep: np.ndarray
    fixes: tuple[str, ...]
    error: str | None


def clean_boxes(
    boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int], names: Sequence[str] | None = None
) -> BoxCheck:
    """Apply the box policy of this module to xyxy pixel ``boxes`` of an image of ``size`` = (h, w).

    ``names`` (one per box, for messages) defaults to the vocabulary names of ``labels``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if names is None:
        names = [DETECTION_CLASSES[i] for i in labels]
    height, width = size
    if not np.isfinite(boxes).all():
        bad = int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])
        return _bad(f"box {bad} ({names[bad]}) has a non-finite coordinate {_fmt(boxes[bad])}")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        bad = int(np.flatnonzero(inverted)[0])
        return _bad(f"box {bad} ({names[bad]}) has max < min: {_fmt(boxes[bad])}")
    fixes: list[str] = []
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = area > 0
    for i in np.flatnonzero(~keep):
        inside = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]) > 0
        where = "lies outside the image" if inside else "has zero area"
        fixes.append(f"dropped {names[i]} box {_fmt(boxes[i])}: it {where} ({width}x{height})")
    moved = keep & (np.abs(clipped - boxes) > ROUNDING_TOLERANCE_PX).any(axis=1)
    for i in np.flatnonzero(moved):
        fixes.append(f"clipped {names[i]} box {_fmt(boxes[i])} to the image ({width}x{height})")
    return BoxCheck(clipped[keep].astype(np.float32), labels[keep], keep, tuple(fixes), None)


def _bad(error: str) -> BoxCheck:
    return BoxCheck(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0,), bool), (), error)


def _fmt(box: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def resolve_classes(names: Iterable[str], class_map: dict[str, str] | None = None) -> dict[str, int]:
    """Map dataset class names to detection vocabulary indices (``class_map`` renames first).

    Raises ``KeyError`` naming the first unknown class.
    """
    class_map = class_map or {}
    return {name: detection_index(class_map.get(name, name)) for name in names}


def annotated(indices: Iterable[int]) -> tuple[str, ...]:
    """Vocabulary names of ``indices``, ordered by vocabulary index."""
    return tuple(DETECTION_CLASSES[i] for i in sorted(set(indices)))


def describe_folder(root: Path) -> str:
    """A short listing of a folder for wrong-format errors."""
    if not root.is_dir():
        return "no such directory"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    return f"{len(entries)} entries ({shown})" if entries else "an empty folder"
