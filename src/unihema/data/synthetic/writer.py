"""The corpus writer: :func:`write_corpus` saves a :class:`~unihema.data.synthetic.corpus.SyntheticCorpus`
to disk as PNG field images and masks, standard COCO detection files (with the white cells' FoV and
WBCAtt attributes), a manifest of every sample of every task (crops as windows of the field images) and
a ``synthetic.json`` summary, so the COCO reader, ``unihema data check`` and
:class:`~unihema.data.manifest.ManifestDataset` read the corpus back like any other dataset."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from unihema.atomic import atomic_save_image, atomic_write_bytes
from unihema.data.manifest import write_manifest
from unihema.data.schema import SPLITS, FileImage, FileMask, Sample, Task
from unihema.data.synthetic.field import FieldOfView, SyntheticCell
from unihema.data.synthetic.labels import DATASET_NAME, DETECTION_LABELS, WBC_TYPES
from unihema.data.synthetic.priors import fov_attributes_for
from unihema.data.vocab import CELL_ATTRIBUTE_NAMES, FOV_ATTRIBUTE_NAMES

if TYPE_CHECKING:
    from unihema.data.synthetic.corpus import SyntheticCorpus


def write_corpus(corpus: SyntheticCorpus, out_dir: str | os.PathLike[str]) -> Path:
    """Save ``corpus`` to ``out_dir`` and return the path of its ``synthetic.json`` summary.

    Layout (every file is written atomically; files of an earlier, larger corpus in the same folder
    are not removed)::

        out_dir/
          <split>/field_00000.png             field images (split = train, val, test)
          masks/<split>/field_00000.png       segmentation masks, 0 = background, 255 = foreground
          annotations/instances_<split>.json  COCO boxes (xywh) with "area" = mask pixels; white
                                              cells also carry "attributes" (the 6 FoV attributes,
                                              by value name) and "cell_attributes" (the 11 WBCAtt)
          manifest.jsonl                      every sample of every task (unihema.data.manifest);
                                              crops are windows of the field images
          synthetic.json                      the config and the image / box count of each split

    The COCO files follow the standard layout (``images``, ``annotations``, ``categories`` with ids
    1..K in :data:`DETECTION_LABELS` order; images in the folder named after the file's
    ``instances_<split>`` stem), so the COCO reader and ``unihema data check`` load the boxes, and
    :class:`~unihema.data.manifest.ManifestDataset` loads every task.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    categories = [
        {"id": k + 1, "name": name, "supercategory": _supercategory(name)}
        for k, name in enumerate(DETECTION_LABELS)
    ]
    category_id = {name: k + 1 for k, name in enumerate(DETECTION_LABELS)}
    counts: dict[str, dict[str, int]] = {}
    file_samples: list[Sample] = []
    for split in SPLITS:
        images, annotations = [], []
        for index in corpus.indices(split):
            fov = corpus.field(index)
            name = f"field_{index:05d}.png"
            image_path = root / split / name
            mask_path = root / "masks" / split / name
            atomic_save_image(Image.fromarray(fov.image), image_path)
            atomic_save_image(Image.fromarray(fov.mask.astype(np.uint8) * 255), mask_path)
            image_id = index + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": name,
                    "height": corpus.config.height,
                    "width": corpus.config.width,
                }
            )
            for cell in fov.cells:
                annotations.append(_coco_annotation(cell, len(annotations) + 1, image_id, category_id))
            file_samples.extend(_file_samples(corpus, index, fov, image_path, mask_path))
        coco = {
            "info": {"description": "UniHema synthetic blood-smear corpus", "version": "1"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        atomic_write_bytes(
            root / "annotations" / f"instances_{split}.json",
            json.dumps(coco, separators=(",", ":")).encode(),
        )
        counts[split] = {"n_images": len(images), "n_boxes": len(annotations)}
    write_manifest(file_samples, root / "manifest.jsonl", relative_paths=True)
    index_path = root / "synthetic.json"
    summary = {"dataset": DATASET_NAME, "config": corpus.config.to_dict(), "splits": counts}
    atomic_write_bytes(index_path, json.dumps(summary, indent=2).encode())
    return index_path


def _file_samples(
    corpus: SyntheticCorpus, index: int, fov: FieldOfView, image_path: Path, mask_path: Path
) -> list[Sample]:
    """Every task's samples of one field, re-pointed at the written files."""
    out: list[Sample] = []
    for task in Task:
        for sample in corpus.field_samples(task, index, fov):
            crop = sample.extra.get("crop")
            sample.image = FileImage(image_path, tuple(crop) if crop is not None else None)
            if sample.mask is not None:
                sample.mask = FileMask(mask_path, foreground=(255,))
            sample.source_path = image_path
            out.append(sample)
    return out


def _supercategory(label: str) -> str:
    if label in WBC_TYPES:
        return "white cell"
    if label == "platelet":
        return "platelet"
    return "red cell"


def _coco_annotation(cell: SyntheticCell, ann_id: int, image_id: int, category_id: Mapping[str, int]) -> dict:
    x0, y0, x1, y1 = (float(v) for v in cell.box)
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id[cell.label],
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": float(cell.mask.sum()),
        "iscrowd": 0,
    }
    if cell.spec is not None:
        fov = fov_attributes_for(cell.spec)
        ann["attributes"] = {name: fov[name] for name in FOV_ATTRIBUTE_NAMES}
        ann["cell_attributes"] = {name: cell.spec.attributes[name] for name in CELL_ATTRIBUTE_NAMES}
    if cell.parasites:
        ann["parasites"] = cell.parasites
    if cell.truncated:
        ann["truncated"] = True
    return ann
