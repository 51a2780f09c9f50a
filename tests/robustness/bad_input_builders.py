"""Builders of the bad-input catalog: small dataset folders in native layouts, written in a test's
temporary folder, each with two good images and one bad input, and a snapshot of a folder's bytes (to prove
that nothing already written was changed or lost)."""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_LABEL = "0 0.5 0.5 0.2 0.2\n"
SIZE = (64, 48)  # width, height of every good image


def noisy_pixels(key: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A smear-like noisy RGB array (noise keeps PNG files large enough to truncate meaningfully)."""
    rng = np.random.default_rng(zlib.crc32(os.fsencode(key)))
    return rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def write_photo(path: Path, size: tuple[int, int] = SIZE, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noisy_pixels(path.name, size)).save(path, format=fmt)
    return path


def yolo_set(
    root: Path,
    images: dict[str, Callable[[Path], object]] | None = None,
    labels: dict[str, str] | None = None,
) -> Path:
    """``images/`` + ``labels/`` + ``classes.txt``: ``good_1.png`` and ``good_2.png`` with one box each,
    plus the ``images`` given (name -> writer of that file) and label files (stem -> text)."""
    for name in ("good_1.png", "good_2.png"):
        write_photo(root / "images" / name)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{Path(name).stem}.txt").write_text(GOOD_LABEL)
    for name, write in (images or {}).items():
        write(root / "images" / name)
        stem = Path(name).stem
        if not (labels and stem in labels):
            (root / "labels" / f"{stem}.txt").write_text(GOOD_LABEL)
    for stem, text in (labels or {}).items():
        if not (root / "images" / f"{stem}.png").exists() and not any((root / "images").glob(f"{stem}.*")):
            write_photo(root / "images" / f"{stem}.png")
        (root / "labels" / f"{stem}.txt").write_text(text)
    (root / "classes.txt").write_text("RBC\nWBC\nPlatelets\n")
    return root


def voc_xml(name: str, boxes: list[tuple[str, tuple]], size: tuple[int, int] = SIZE) -> str:
    objects = "".join(
        f"<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for label, (x0, y0, x1, y1) in boxes
    )
    return (
        f"<annotation><filename>{name}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"</size>{objects}</annotation>"
    )


def voc_set(root: Path, xml: dict[str, str] | None = None, split_lists: dict[str, str] | None = None) -> Path:
    """``JPEGImages/`` + ``Annotations/``: ``good_1`` and ``good_2`` with one RBC box each, plus the
    annotation files given (stem -> XML text; an image is written for each) and split lists."""
    for stem in ("good_1", "good_2"):
        write_photo(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", [("RBC", (5, 5, 20, 20))]))
    for stem, text in (xml or {}).items():
        write_photo(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(text)
    for split, text in (split_lists or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(text)
    return root


def coco_set(root: Path, files: dict[str, str]) -> Path:
    """``images/good_1.png``, ``images/good_2.png`` and ``annotations/instances_train.json`` boxing both,
    plus the annotation files given (name -> JSON text)."""
    for name in ("good_1.png", "good_2.png"):
        write_photo(root / "images" / name)
    good = {
        "images": [
            {"id": i, "file_name": f"good_{i}.png", "width": SIZE[0], "height": SIZE[1]} for i in (1, 2)
        ],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 10, 10]} for i in (1, 2)],
        "categories": [{"id": 1, "name": "RBC"}],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(good))
    for name, text in files.items():
        (root / "annotations" / name).write_text(text)
    return root


def grey_mask(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)
    return path


def disc(value: int, background: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[: SIZE[1], : SIZE[0]]
    mask = np.full((SIZE[1], SIZE[0]), background, np.uint8)
    mask[(yy - 24) ** 2 + (xx - 32) ** 2 < 12**2] = value
    return mask


def label_map() -> np.ndarray:
    """A mask of class indices: 0 background, 1 a cell, 2 its nucleus."""
    labels = disc(1)
    labels[20:28, 28:36] = 2
    return labels


def mask_set(
    root: Path, masks: dict[str, np.ndarray] | None = None, files: dict[str, str] | None = None
) -> Path:
    """``images/`` + ``masks/``: ``good_1``, ``good_2`` (a white disc on black) plus the masks given (stem ->
    grey values; an image is written for each) and extra text files (relative path -> text)."""
    for stem in ("good_1", "good_2"):
        write_photo(root / "images" / f"{stem}.jpg")
        grey_mask(root / "masks" / f"{stem}.png", disc(255))
    for stem, values in (masks or {}).items():
        write_photo(root / "images" / f"{stem}.jpg")
        grey_mask(root / "masks" / f"{stem}.png", values)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-1 of every file below ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
