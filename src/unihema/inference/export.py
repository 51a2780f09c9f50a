"""Exports of predictions to the formats users open them in (fields documented in ``docs/outputs/``).

- COCO detection JSON (``images``, ``annotations`` with ``bbox`` ``[x, y, width, height]`` and ``score``,
  ``categories`` = ``DETECTION_CLASSES`` with ids from 1): pycocotools, FiftyOne, CVAT;
- GeoJSON FeatureCollection of detections as QuPath imports them: each cell a ``Feature`` with a closed
  rectangle ``Polygon`` in image pixels and ``properties`` ``objectType: "detection"``,
  ``classification`` ``{name, color}`` and ``measurements`` (score, box size, attribute probabilities);
- flat rows (one per cell, :data:`CELL_COLUMNS`) for CSV files and pandas.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unihema.atomic import atomic_write_text
from unihema.data.vocab import DETECTION_CLASSES, FOV_ATTRIBUTE_NAMES
from unihema.inference.plotting import class_colour

if TYPE_CHECKING:
    from unihema.inference.results import Prediction

CELL_COLUMNS: tuple[str, ...] = (
    "image", "cell_id", "class", "class_id", "score", "x_min", "y_min", "x_max", "y_max",
    "width", "height", "area_px",
    *(f"attr_{name}" for name in FOV_ATTRIBUTE_NAMES),
    *(f"attr_{name}_prob" for name in FOV_ATTRIBUTE_NAMES),
)  # fmt: skip
"""Columns of the per-cell CSV (``cells.csv``) and of :meth:`Prediction.to_dataframe`."""

# A fixed namespace makes feature ids stable across runs: the same image and cell give the same id.
_FEATURE_NAMESPACE = uuid.UUID("6f1c1e0a-51a7-4c55-9a55-2f0b8c7d9e10")


def cell_rows(prediction: Prediction, image: str | None = None) -> list[dict[str, Any]]:
    """One flat dict per cell with the keys of :data:`CELL_COLUMNS` (missing attributes empty)."""
    name = image if image is not None else Path(prediction.source).name
    rows = []
    for index, cell in enumerate(prediction.cells):
        x0, y0, x1, y1 = (round(float(v), 2) for v in cell.box)
        row: dict[str, Any] = {
            "image": name, "cell_id": index, "class": cell.class_name, "class_id": cell.label,
            "score": round(float(cell.score), 4), "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1,
            "width": round(x1 - x0, 2), "height": round(y1 - y0, 2), "area_px": round(cell.area, 1),
        }  # fmt: skip
        for attribute in FOV_ATTRIBUTE_NAMES:
            row[f"attr_{attribute}"] = cell.attributes.get(attribute, "")
            probability = cell.attribute_scores.get(attribute)
            row[f"attr_{attribute}_prob"] = "" if probability is None else round(float(probability), 4)
        rows.append(row)
    return rows


def rows_to_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> Path:
    """``rows`` as a CSV file with a header, written atomically."""
    return atomic_write_text(path, rows_to_csv(rows, columns))


def coco_categories() -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": name, "supercategory": "cell"} for i, name in enumerate(DETECTION_CLASSES)]


def to_coco(
    predictions: Sequence[Prediction], file_names: Sequence[str], first_image_id: int = 1
) -> dict[str, Any]:
    """COCO results of several images: category ids are ``DETECTION_CLASSES`` indices + 1."""
    images, annotations = [], []
    for offset, (prediction, file_name) in enumerate(zip(predictions, file_names, strict=True)):
        image_id = first_image_id + offset
        height, width = prediction.image_size
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for cell in prediction.cells:
            x0, y0, x1, y1 = (float(v) for v in cell.box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cell.label + 1,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round(cell.area, 2), "score": round(float(cell.score), 4), "iscrowd": 0,
                "attributes": dict(cell.attributes),
            })  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": coco_categories()}


def to_geojson(prediction: Prediction) -> dict[str, Any]:
    """The cells of one image as a QuPath-importable FeatureCollection (pixel coordinates)."""
    features = []
    for index, cell in enumerate(prediction.cells):
        x0, y0, x1, y1 = (round(float(v), 2) for v in cell.box)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        measurements: dict[str, float] = {
            "score": round(float(cell.score), 4),
            "width_px": round(x1 - x0, 2),
            "height_px": round(y1 - y0, 2),
        }
        for attribute, probability in cell.attribute_scores.items():
            measurements[f"{attribute} probability"] = round(float(probability), 4)
        properties: dict[str, Any] = {
            "objectType": "detection",
            "classification": {"name": cell.class_name, "color": list(class_colour(cell.label))},
            "measurements": measurements,
            "isLocked": False,
        }
        if cell.attributes:
            properties["metadata"] = {f"attribute {k}": str(v) for k, v in cell.attributes.items()}
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(_FEATURE_NAMESPACE, f"{prediction.source}#{index}")),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": properties,
        })  # fmt: skip
    return {"type": "FeatureCollection", "features": features}
