"""What the predictor returns for one image: :class:`Prediction`, with its cells (:class:`Cell`).

Every coordinate is in pixels of the original image, origin at its top-left corner, x to the right and
y downwards; boxes are ``[x_min, y_min, x_max, y_max]``. The exports (COCO, GeoJSON, CSV rows) and their
fields are documented in ``docs/outputs/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unihema.atomic import atomic_save_image, atomic_write_text
from unihema.data.vocab import DETECTION_CLASSES
from unihema.inference import export
from unihema.inference.plotting import draw_detections, draw_mask

RESULT_FORMAT_VERSION = 1


@dataclass
class Cell:
    """One detected cell.

    Attributes:
        box: ``(x_min, y_min, x_max, y_max)`` in original-image pixels.
        label: index into ``DETECTION_CLASSES``.
        score: the detector's confidence for ``label`` in [0, 1].
        attributes: FoV morphology attribute name -> value (empty unless FoV morphology was run).
        attribute_scores: attribute name -> probability of the chosen value.
    """

    box: tuple[float, float, float, float]
    label: int
    score: float
    attributes: dict[str, str] = field(default_factory=dict)
    attribute_scores: dict[str, float] = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        return DETECTION_CLASSES[self.label] if 0 <= self.label < len(DETECTION_CLASSES) else str(self.label)

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "class": self.class_name,
            "class_id": self.label,
            "score": round(float(self.score), 4),
            "attributes": dict(self.attributes),
            "attribute_scores": {k: round(float(v), 4) for k, v in self.attribute_scores.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        return cls(
            box=tuple(float(v) for v in data["box"]),
            label=int(data["class_id"]),
            score=float(data["score"]),
            attributes=dict(data.get("attributes", {})),
            attribute_scores={k: float(v) for k, v in data.get("attribute_scores", {}).items()},
        )


@dataclass
class Prediction:
    """The analysis of one image.

    Attributes:
        source: the image's path (or ``"<array>"`` for in-memory input).
        image_size: ``(height, width)`` of the original image in pixels.
        tasks: the tasks that were run.
        cells: detected cells, highest score first (detection / FoV morphology).
        mask: ``(height, width)`` bool foreground mask at the original size (segmentation), or ``None``.
        cell_class_probabilities: single-cell classification of the whole image as one cell crop:
            class name -> probability (all ``CELL_CLASSES``, summing to 1), or ``None``.
        cell_attributes: cell morphology of the crop: attribute -> (value, probability), or ``None``.
        question: the question asked (VQA), or ``None``; ``answer`` the generated answer.
        disease: the disease context given to the text prompt, or ``None``.
        timings: stage -> milliseconds (``preprocess``, ``model``, ``postprocess``, ``total``).
        image: the original RGB pixels (H, W, 3) uint8, kept for :meth:`plot`; not serialised.
        warnings: notes about this result (an untrained model, an image split into tiles, ...).
    """

    source: str
    image_size: tuple[int, int]
    tasks: tuple[str, ...]
    cells: list[Cell] = field(default_factory=list)
    mask: np.ndarray | None = None
    cell_class_probabilities: dict[str, float] | None = None
    cell_attributes: dict[str, tuple[str, float]] | None = None
    question: str | None = None
    answer: str | None = None
    disease: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.cells)

    @property
    def cell_class(self) -> str | None:
        """The most probable single-cell class, or ``None`` when classification was not run."""
        if not self.cell_class_probabilities:
            return None
        return max(self.cell_class_probabilities, key=self.cell_class_probabilities.__getitem__)

    def boxes(self) -> np.ndarray:
        """(N, 4) float ``xyxy`` boxes of the cells."""
        return np.asarray([c.box for c in self.cells], dtype=np.float32).reshape(-1, 4)

    def counts(self) -> dict[str, int]:
        """Cells per class name."""
        out: dict[str, int] = {}
        for cell in self.cells:
            out[cell.class_name] = out.get(cell.class_name, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self, **options: Any) -> Any:
        """The clinical summary of this image (:func:`unihema.inference.clinical.summarize`)."""
        from unihema.inference.clinical import summarize

        return summarize([self], **options)

    # ---------------------------------------------------------------------------- exports
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result (the mask as its foreground fraction; :meth:`save` writes the mask PNG)."""
        return {
            "format_version": RESULT_FORMAT_VERSION,
            "source": self.source,
            "image_size": {"height": self.image_size[0], "width": self.image_size[1]},
            "tasks": list(self.tasks),
            "cells": [c.to_dict() for c in self.cells],
            "counts": self.counts(),
            "mask_foreground_fraction": None if self.mask is None else round(float(self.mask.mean()), 6),
            "cell_class_probabilities": self.cell_class_probabilities,
            "cell_class": self.cell_class,
            "cell_attributes": None
            if self.cell_attributes is None
            else {k: {"value": v, "probability": round(p, 4)} for k, (v, p) in self.cell_attributes.items()},
            "question": self.question,
            "answer": self.answer,
            "disease": self.disease,
            "timings_ms": {k: round(v, 2) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        """A prediction read back from :meth:`to_dict` (without its pixels and mask)."""
        if data.get("format_version") != RESULT_FORMAT_VERSION:
            raise ValueError(f"unsupported result format_version {data.get('format_version')!r}")
        attributes = data.get("cell_attributes")
        return cls(
            source=data["source"],
            image_size=(int(data["image_size"]["height"]), int(data["image_size"]["width"])),
            tasks=tuple(data["tasks"]),
            cells=[Cell.from_dict(c) for c in data["cells"]],
            cell_class_probabilities=data.get("cell_class_probabilities"),
            cell_attributes=None
            if attributes is None
            else {k: (v["value"], float(v["probability"])) for k, v in attributes.items()},
            question=data.get("question"),
            answer=data.get("answer"),
            disease=data.get("disease"),
            timings=dict(data.get("timings_ms", {})),
            warnings=list(data.get("warnings", [])),
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_coco(self, image_id: int = 1, file_name: str | None = None) -> dict[str, Any]:
        """COCO detection results for this image (``images``, ``annotations``, ``categories``)."""
        return export.to_coco([self], [file_name or Path(self.source).name], first_image_id=image_id)

    def to_geojson(self) -> dict[str, Any]:
        """A GeoJSON FeatureCollection that QuPath imports as detections (``docs/outputs/geojson.md``)."""
        return export.to_geojson(self)

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per cell (``docs/outputs/csv.md``), for CSV files and data frames."""
        return export.cell_rows(self)

    def to_dataframe(self) -> Any:
        """The cells as a pandas DataFrame (pandas is optional: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError("to_dataframe needs pandas: pip install pandas") from error
        return pd.DataFrame(self.to_rows(), columns=export.CELL_COLUMNS)

    def plot(self, min_score: float = 0.0) -> Image.Image:
        """The image with the mask blended in and the cells' boxes, class names and scores drawn."""
        if self.image is None:
            raise ValueError(f"{self.source}: the prediction holds no image to draw on")
        picture = Image.fromarray(self.image)
        if self.mask is not None:
            picture = draw_mask(picture, self.mask)
            scale = picture.width // self.image.shape[1]
        else:
            scale = 1
        kept = [c for c in self.cells if c.score >= min_score]
        boxes = np.asarray([c.box for c in kept], dtype=np.float32).reshape(-1, 4)
        if scale > 1:  # draw_mask upscaled the picture: draw the boxes in its frame
            return draw_detections(
                picture, boxes * scale, [c.label for c in kept], [c.score for c in kept], 0
            )
        return draw_detections(picture, boxes, [c.label for c in kept], [c.score for c in kept])

    def save(self, directory: str | os.PathLike[str], stem: str | None = None) -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>.overlay.png``, ``<stem>.mask.png`` (with a mask) and
        ``<stem>.geojson`` (with cells) atomically into ``directory``; returns the paths by kind."""
        directory = Path(directory)
        stem = stem or Path(self.source).stem or "image"
        paths: dict[str, Path] = {}
        if self.mask is not None:
            mask = Image.fromarray(self.mask.astype(np.uint8) * 255)
            paths["mask"] = atomic_save_image(mask, directory / f"{stem}.mask.png")
        if "detection" in self.tasks or "fov_morphology" in self.tasks:
            paths["geojson"] = atomic_write_text(directory / f"{stem}.geojson", json.dumps(self.to_geojson()))
        if self.image is not None:
            paths["overlay"] = atomic_save_image(self.plot(), directory / f"{stem}.overlay.png")
        # The JSON last: its presence marks the image's outputs as complete (re-runs skip it).
        paths["json"] = atomic_write_text(directory / f"{stem}.json", self.to_json() + "\n")
        return paths
