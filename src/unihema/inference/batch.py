"""Predict over an archive of images: per-image files, per-run tables, per-slide reports.

Layout of the output folder (fields in ``docs/outputs/``)::

    OUT/images/<key>.json           the Prediction (written last: it marks the image complete)
    OUT/images/<key>.overlay.png    boxes and mask drawn on the image
    OUT/images/<key>.mask.png       the binary mask (0 / 255), original size
    OUT/images/<key>.geojson        the cells for QuPath
    OUT/cells.csv                   every cell of the run, one row each
    OUT/summary.csv                 the clinical summary per image and per slide
    OUT/slides/<slide>.html         one report per slide (a folder of fields)
    OUT/run.json                    what was processed, skipped and failed

``<key>`` is the image's path relative to the folder given (prefixed by that folder's name), or its file
name for images given one by one; a slide is the folder that holds the image. A re-run skips images whose
JSON exists, so an interrupted archive continues where it stopped. Under ``torchrun`` each rank analyses
a disjoint share of the images (rank ``r`` of ``n`` takes images ``r, r + n, ...``) and rank 0 writes the
run tables and reports from every rank's files (a shared file system is assumed).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unihema.atomic import atomic_write_text
from unihema.data.schema import printable_name
from unihema.inference.export import CELL_COLUMNS, cell_rows, write_csv
from unihema.inference.image_processor import ImageInputError
from unihema.inference.results import Prediction

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
RESULTS_DIR = "images"
ROOT_SLIDE = "."


@dataclass(frozen=True)
class ImageJob:
    """One image to analyse: its file and the output key (relative path without suffix)."""

    path: Path
    key: str

    @property
    def slide(self) -> str:
        parent = str(Path(self.key).parent)
        return ROOT_SLIDE if parent in ("", ".") else parent


@dataclass
class RunRecord:
    """What one run did (written as ``run.json``)."""

    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "processed": len(self.processed), "skipped_complete": len(self.skipped),
            "failed": len(self.failed), "failures": self.failed,
        }  # fmt: skip


def collect_images(inputs: Sequence[str | Path]) -> list[ImageJob]:
    """Image files of ``inputs`` (files, or folders searched recursively), sorted, with unique keys."""
    jobs: list[ImageJob] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            base = path.resolve().name or "images"
            jobs += [
                ImageJob(f, printable_name(Path(base) / f.relative_to(path).with_suffix(""))) for f in files
            ]
        elif path.is_file():
            jobs.append(ImageJob(path, printable_name(path.stem)))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    seen: dict[str, int] = {}
    unique = []
    for job in jobs:
        count = seen.get(job.key, 0)
        seen[job.key] = count + 1
        unique.append(job if count == 0 else ImageJob(job.path, f"{job.key}_{count + 1}"))
    return unique


def result_path(out_dir: Path, job: ImageJob) -> Path:
    return out_dir / RESULTS_DIR / f"{job.key}.json"


def _load(path: Path) -> Prediction:
    return Prediction.from_dict(json.loads(path.read_text(encoding="utf-8")))


def run_archive(
    predict_one: Callable[[Path], Prediction],
    jobs: Sequence[ImageJob],
    out_dir: Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> RunRecord:
    """Analyse this rank's share of ``jobs`` with ``predict_one`` and save each result; returns the record.

    A bad image (:class:`ImageInputError`, or any error the analysis raises for it) is logged by name and
    skipped; the rest go on.
    """
    from tqdm import tqdm

    record = RunRecord()
    mine = list(jobs)[rank::world_size]
    bar = tqdm(mine, desc=f"predict (rank {rank})" if world_size > 1 else "predict", unit="image",
               disable=not progress, file=sys.stderr)  # fmt: skip
    for job in bar:
        target = result_path(out_dir, job)
        if target.is_file() and not overwrite:
            record.skipped.append(job.key)
            continue
        try:
            prediction = predict_one(job.path)
        except (ImageInputError, ValueError, OSError, RuntimeError) as error:
            record.failed[str(job.path)] = str(error)
            log(f"unihema predict: skipped {job.path}: {error}")
            continue
        prediction.save(target.parent, stem=Path(job.key).name)
        record.processed.append(job.key)
    return record


def write_run_tables(
    jobs: Sequence[ImageJob],
    out_dir: Path,
    record: RunRecord,
    summary_options: dict[str, Any] | None = None,
    slide_reports: bool = True,
) -> dict[str, Path]:
    """``cells.csv``, ``summary.csv``, the slide reports and ``run.json`` from every saved result."""
    from unihema.inference.clinical import summarize, write_slide_report

    options = summary_options or {}
    rows: list[dict[str, Any]] = []
    by_slide: dict[str, list[tuple[ImageJob, Prediction]]] = defaultdict(list)
    for job in jobs:
        path = result_path(out_dir, job)
        if not path.is_file():
            continue  # failed, or another rank's share that failed
        prediction = _load(path)
        rows += cell_rows(prediction, image=job.key)
        by_slide[job.slide].append((job, prediction))
    written = {"cells": write_csv(out_dir / "cells.csv", rows, CELL_COLUMNS)}
    summary_rows: list[dict[str, Any]] = []
    for slide, items in sorted(by_slide.items()):
        for job, prediction in items:
            summary_rows += _summary_rows("image", job.key, summarize([prediction], **options))
        slide_summary = summarize([p for _, p in items], **options)
        summary_rows += _summary_rows("slide", slide, slide_summary)
        if slide_reports:
            images = [_with_pixels(out_dir, job, p) for job, p in items]
            name = "root" if slide == ROOT_SLIDE else slide.replace("/", "__")
            write_slide_report(
                images, slide_summary, out_dir / "slides", title=f"Slide {slide}", file_name=f"{name}.html",
                draw_overlays=False,
            )  # fmt: skip
    columns = list(dict.fromkeys(k for row in summary_rows for k in row))
    written["summary"] = write_csv(out_dir / "summary.csv", summary_rows, columns)
    written["run"] = atomic_write_text(out_dir / "run.json", json.dumps(record.to_dict(), indent=2) + "\n")
    return written


def _summary_rows(level: str, name: str, summary: Any) -> list[dict[str, Any]]:
    return [{"level": level, "name": name, **row} for row in summary.to_rows()]


def _with_pixels(out_dir: Path, job: ImageJob, prediction: Prediction) -> Prediction:
    """The prediction with its overlay picture as the image to show (the original is not re-read)."""
    import numpy as np
    from PIL import Image

    overlay = out_dir / RESULTS_DIR / f"{job.key}.overlay.png"
    if overlay.is_file():
        with Image.open(overlay) as picture:
            prediction.image = np.asarray(picture.convert("RGB"))
    return prediction
