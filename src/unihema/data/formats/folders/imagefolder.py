"""The ``imagefolder`` layout: ``<root>[/<wrapper>][/<split>]/<class>/<image>``.

The torchvision ``ImageFolder`` layout, optionally under one wrapper folder (``PBC_dataset_normal_DIB/``,
``BCCD_cropped/``) and split folders (``train/``, ``val/``, ``test/``). Used for PBC and the BCCD WBC
crops. Folder names are looked up in the single-cell vocabulary (aliases such as ``ig`` -> ``immature
granulocyte`` apply). PBC file-name prefixes (``MY_``, ``BNE_``...) are kept in ``extra["prefix"]`` with the
sub-type they stand for in ``extra["subtype"]``. For the BCCD crops, the folder labels are compared with the
raw Kaggle ``labels.csv`` beside them.
"""

from __future__ import annotations

import csv
import re
import warnings
from typing import Any

from unihema.data.formats._common import ReaderWarning, visible_dirs
from unihema.data.formats.base import WrongFormatError
from unihema.data.formats.folders.layout import (
    FolderContext,
    ImageEntry,
    drop_identical,
    resolve_class,
    scan_images,
)
from unihema.data.schema import FileImage, Sample, Task
from unihema.data.vocab import cell_index

PBC_PREFIX_SUBTYPES: dict[str, str | None] = {
    "BA": "basophil", "EO": "eosinophil", "ERB": "erythroblast", "LY": "lymphocyte", "MO": "monocyte",
    "PLATELET": "platelet",
    # immature granulocytes: myelocyte, metamyelocyte, promyelocyte; plain IG gives no sub-type
    "MY": "myelocyte", "MMY": "metamyelocyte", "PMY": "promyelocyte", "IG": None,
    # neutrophils: band / segmented (the usual reading of BNE / SNE); plain NEUTROPHIL gives no sub-type
    "BNE": "band neutrophil", "SNE": "segmented neutrophil", "NEUTROPHIL": None,
}  # fmt: skip
"""PBC file-name prefix -> the cell class it names (``None``: no finer class than the folder)."""

_PREFIX_RE = re.compile(r"^([A-Z]+)_\d+$")
_BCCD_CROP_RE = re.compile(r"^BloodImage_(\d+)_\d+$")


def prefix_info(stem: str) -> dict[str, Any]:
    """``{"prefix": "MY", "subtype": "myelocyte"}`` for a PBC-style ``<PREFIX>_<digits>`` stem, else ``{}``."""
    match = _PREFIX_RE.match(stem)
    if match is None or match.group(1) not in PBC_PREFIX_SUBTYPES:
        return {}
    prefix = match.group(1)
    return {"prefix": prefix, "subtype": PBC_PREFIX_SUBTYPES[prefix]}


def read_imagefolder(context: FolderContext) -> list[Sample]:
    """One classification sample per image of the class folders (under the split folders, if any)."""
    record, layout = context.record, context.layout
    split_dirs = [(layout.base / d, s) for d, s in layout.splits.items()] or [(layout.base, None)]
    entries: list[ImageEntry] = []
    for split_dir, split in split_dirs:
        for class_dir in visible_dirs(split_dir):
            label = resolve_class(class_dir.name, context.class_map)
            if label is None:
                record.skip(
                    class_dir,
                    f"class folder {class_dir.name!r} is not a single-cell vocabulary class or alias "
                    "(pass class_map= or add an alias to unihema.data.vocab)",
                )
                continue
            for path, size in scan_images(context, class_dir):
                entries.append(ImageEntry(path, label, class_dir.name, split, size))
    if not entries:
        raise WrongFormatError(
            f"{layout.base}: class folders found, but none holds a loadable image of a known class"
        )
    entries = drop_identical(entries, record)
    _cross_check_bccd_labels(context, entries)

    samples: list[Sample] = []
    for entry in entries:
        extra: dict[str, Any] = {"folder": entry.folder_label, **prefix_info(entry.path.stem)}
        label = entry.label
        if context.use_subtypes and extra.get("subtype"):
            label = extra["subtype"]
        samples.append(
            Sample(
                image=FileImage(entry.path),
                task=Task.CLASSIFICATION,
                dataset=context.dataset,
                sample_id=record.relative(entry.path),
                split=entry.split,
                disease=context.disease,
                cell_class=cell_index(label),
                image_size=entry.size,
                source_path=entry.path,
                extra=extra,
            )
        )
    return samples


def _cross_check_bccd_labels(context: FolderContext, entries: list[ImageEntry]) -> None:
    """Compare folder labels with the raw Kaggle ``labels.csv`` next to ``BCCD_cropped/``.

    ``labels.csv`` has a leading unnamed column, CRLF line ends, empty and multi-label categories; the
    folders are the cleaned single labels, so they win. A crop whose folder label is not among the
    csv's categories for its source image is recorded as fixed (folder label kept) and warned about.
    """
    record = context.record
    csv_path = next(
        (p for p in (context.layout.base.parent / "labels.csv", record.root / "labels.csv") if p.is_file()),
        None,
    )
    if csv_path is None:
        return
    categories: dict[int, list[str]] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip().lower() for c in rows[0][1:3]] != ["image", "category"]:
        record.skip(csv_path, "labels.csv without the ',Image,Category' header; not cross-checked")
        return
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 3 or not row[1].strip().isdigit():
            record.skip(f"{record.relative(csv_path)}:{line}", f"malformed labels.csv row {row!r}")
            continue
        categories[int(row[1])] = [c.strip().lower() for c in row[2].split(",") if c.strip()]
    disagreements = 0
    for entry in entries:
        match = _BCCD_CROP_RE.match(entry.path.stem)
        if match is None:
            continue
        listed = categories.get(int(match.group(1)))
        if not listed:  # no row or empty category: nothing to compare
            continue
        if entry.folder_label.lower() not in listed:
            disagreements += 1
            record.fix(
                entry.path,
                f"labels.csv lists {listed} for image {int(match.group(1))}; the folder label "
                f"{entry.folder_label!r} is used",
            )
    if disagreements:
        warnings.warn(
            f"{record.dataset}: {disagreements} crops disagree with {csv_path.name}; folder labels kept "
            "(see ReadResult.fixed)",
            ReaderWarning,
            stacklevel=4,  # the caller of the reader's ``read``
        )
