"""Image + mask pair reader for binary segmentation (segmentation_wbc, bccd_nucleus_masks).

Pairs are found (at the root or up to two levels below it) as:

- an image and a PNG mask with the same stem in one folder (``001.bmp`` + ``001.png``), or a mask named
  ``<stem>_mask.png`` / ``<stem>_gt.png``;
- ``images/`` and ``masks/`` folders with the same stems;
- masks only, with the images in another folder given by ``images_root`` (``bccd_nucleus_masks`` masks the
  BCCD images in ``../bccd/BCCD/JPEGImages``, its default). A mask whose image is missing is skipped.

``mapping`` says which grey values are foreground (RGBA masks: see :func:`unihema.data.schema.mask_to_grey`):

- ``"nonzero"``: any value > 0 (binary masks, 1-bit PNGs);
- ``"cell"``: 3-level masks 0 / 128 / 255 (background / cytoplasm / nucleus), foreground = cytoplasm or
  nucleus, i.e. values nearer to 128 or 255 than to 0 (stray editing values snap to the nearest level);
- ``"nucleus"``: the same 3-level masks, foreground = values nearer to 255 than to 128;
- a sequence of ints: exactly those values.

Per-image class labels come from a CSV beside the pair folder whose name contains the folder's name
(``Class Labels of Dataset 1.csv`` for ``Dataset 1/``): columns image id, class; numeric ids match
zero-padded stems (``1`` -> ``001``). They are kept in ``Sample.extra`` and, with ``classification=True``,
also given as single-cell classification samples.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unihema.data.formats._common import (
    IMAGE_EXTENSIONS,
    ReadContext,
    ReadReport,
    candidate_dirs,
    check_image,
    dataset_name,
    default_disease,
    describe_folder,
)
from unihema.data.formats.base import WrongFormatError, register_reader
from unihema.data.formats.voc import read_split_lists
from unihema.data.schema import FileImage, FileMask, ReadResult, Sample, Task, mask_to_grey
from unihema.data.vocab import CELL_CLASSES, cell_index

MASK_EXTENSION = ".png"
MASK_SUFFIXES = ("_mask", "_gt", "_label")
MASK_DIRS = ("masks", "mask", "gt", "ground_truth")
MIN_PAIRED_FRACTION = 0.5  # share of a folder's image files that must form pairs for it to count
THREE_LEVELS = (0, 128, 255)
MAPPING_THRESHOLDS: dict[str, int] = {
    "nonzero": 1,
    "cell": 64,  # midpoint of background 0 and cytoplasm 128
    "nucleus": 192,  # midpoint of cytoplasm 128 and nucleus 255
}
MAPPING_LEVELS: dict[str, tuple[int, ...]] = {"cell": THREE_LEVELS, "nucleus": THREE_LEVELS}


@dataclass(frozen=True)
class KnownMaskLayout:
    """Defaults of a staged mask dataset.

    Attributes:
        mapping: default ``mapping`` option.
        images_root: default ``images_root`` (relative to the dataset root), or None when images sit with masks.
        class_codes: CSV class code -> cell class name, or None when the CSV holds names.
        split_lists_from_images: take the split from VOC ``ImageSets/Main`` lists beside the images folder.
    """

    mapping: str = "nonzero"
    images_root: str | None = None
    class_codes: dict[str, str] = field(default_factory=dict)
    split_lists_from_images: bool = False


KNOWN_LAYOUTS: dict[str, KnownMaskLayout] = {
    "segmentation_wbc": KnownMaskLayout(
        mapping="cell",
        class_codes={
            "1": "neutrophil",
            "2": "lymphocyte",
            "3": "monocyte",
            "4": "eosinophil",
            "5": "basophil",
        },
    ),
    # Same images as BCCD: reuse its train/val/test lists so detection and segmentation splits agree.
    "bccd_nucleus_masks": KnownMaskLayout(
        mapping="nonzero", images_root="../bccd/BCCD/JPEGImages", split_lists_from_images=True
    ),
}


@dataclass(frozen=True)
class MaskPair:
    """A mask and its image; either may be ``None`` when the other has no partner (reported as skipped)."""

    mask: Path | None
    image: Path | None
    group: Path  # folder the mask (or the unpaired image) was found in

    @property
    def stem(self) -> str:
        return (self.mask or self.image).stem  # type: ignore[union-attr]


def _image_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.suffix.lower() != MASK_EXTENSION:
            files.setdefault(p.stem, p)
    return files


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == MASK_EXTENSION)


def _pairs_in_folder(folder: Path) -> list[MaskPair]:
    """Same-folder pairs: ``X.<img>`` + ``X.png`` or ``X.<ext>`` + ``X_mask.png`` (most files must pair)."""
    images = _image_files(folder)
    all_images = {
        p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    }
    pairs = []
    for png in _pngs(folder):
        image = images.get(png.stem)
        if image is None:
            for suffix in MASK_SUFFIXES:
                if png.stem.endswith(suffix):
                    image = all_images.get(png.stem[: -len(suffix)])
                    break
        if image is not None:
            pairs.append(MaskPair(png, image, folder))
    n_files = len(all_images)
    # A folder of images that merely contains a few same-stem PNGs is not a mask dataset.
    if not pairs or 2 * len(pairs) < MIN_PAIRED_FRACTION * n_files:
        return []
    paired = {p.image for p in pairs} | {p.mask for p in pairs}
    unpaired = [MaskPair(None, img, folder) for img in images.values() if img not in paired]
    return sorted(pairs + unpaired, key=lambda p: p.stem)


def find_pairs(root: Path, images_root: Path | None) -> list[MaskPair]:
    """Mask/image pairs at or below ``root`` (see the module docstring for the layouts).

    Masks without an image and images without a mask come back with ``None`` in place of the missing file
    (except images of a separate ``images_root``, which may belong to a larger dataset).
    """
    root = Path(root)
    if images_root is not None:
        if not images_root.is_dir():
            return []
        images = _image_files(images_root)
        pairs = []
        for folder in candidate_dirs(root):
            for png in _pngs(folder):
                pairs.append(MaskPair(png, images.get(png.stem), folder))
        return pairs
    for folder in candidate_dirs(root):
        image_dir = folder / "images"
        mask_dir = next((folder / d for d in MASK_DIRS if (folder / d).is_dir()), None)
        if image_dir.is_dir() and mask_dir is not None:
            images = _image_files(image_dir) | {p.stem: p for p in _pngs(image_dir)}
            masks = {m.stem: m for m in _pngs(mask_dir)}
            found = [
                MaskPair(masks.get(s), images.get(s), mask_dir) for s in sorted(set(images) | set(masks))
            ]
            if any(p.image is not None and p.mask is not None for p in found):
                return found
    pairs = []
    for folder in candidate_dirs(root):
        pairs.extend(_pairs_in_folder(folder))
    return pairs


def _read_class_csv(path: Path) -> tuple[dict[str, str], list[str]]:
    """Normalised image id -> class label, and problems (malformed rows) of a two-column CSV."""
    labels: dict[str, str] = {}
    problems: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:  # newline="" reads CRLF rows cleanly
        rows = list(csv.reader(fh))
    for lineno, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if lineno == 1 and not _normal_id(cells[0]).isdigit():
            continue  # header
        if len(cells) < 2 or not cells[0] or not cells[1]:
            problems.append(f"line {lineno}: expected 'image id,class', got {row}")
            continue
        labels[_normal_id(cells[0])] = cells[1]
    return labels, problems


def _normal_id(image_id: str) -> str:
    """``"001"`` and ``"1"`` are the same image id; non-numeric ids are kept as they are."""
    return str(int(image_id)) if image_id.isdigit() else image_id


def _class_csv_for(group: Path, root: Path) -> Path | None:
    for folder in (group.parent, group, root):
        if folder.is_dir():
            matches = sorted(p for p in folder.glob("*.csv") if group.name.lower() in p.stem.lower())
            if matches:
                return matches[0]
    return None


def _foreground(mapping: str | Sequence[int]) -> dict[str, Any]:
    if isinstance(mapping, str):
        if mapping not in MAPPING_THRESHOLDS:
            raise ValueError(
                f"mapping={mapping!r}: expected one of {sorted(MAPPING_THRESHOLDS)} or a list of values"
            )
        return {"threshold": MAPPING_THRESHOLDS[mapping]}
    values = tuple(int(v) for v in mapping)
    if not values or any(not 0 <= v <= 255 for v in values):
        raise ValueError(f"mapping={mapping!r}: foreground values must be a non-empty list of 0..255")
    return {"foreground": values}


@register_reader
class MaskReader:
    """Image + mask pairs.

    Options of :meth:`read`:
        mapping: which mask values are foreground: ``"nonzero"``, ``"cell"``, ``"nucleus"`` or a list of
            values (default: the dataset's known mapping, ``"cell"`` for ``segmentation_wbc``, else
            ``"nonzero"``).
        images_root: folder of the images when the root holds masks only, relative to the root or absolute
            (default: ``../bccd/BCCD/JPEGImages`` for ``bccd_nucleus_masks``, else None).
        classification: also emit a single-cell classification sample per image with a CSV class label
            (default False).
        disease: disease context of every sample (default: the dataset's known context, else ``None``).
        verify_images: decode every image and mask to catch damaged files, and report mask values that are
            not one of the expected levels (default False: headers only).
        use_split_lists: take the split from VOC split lists beside ``images_root`` when the dataset's
            layout says so (default True).
    """

    name = "masks"
    description = (
        "image + mask pairs for binary segmentation (same-stem PNG masks, images/ + masks/, images_root)"
    )
    priority = 30

    def sniff(self, root: Path) -> bool:
        root = Path(root)
        known = KNOWN_LAYOUTS.get(dataset_name(root, None))
        images_root = root / known.images_root if known and known.images_root else None
        return any(p.image is not None and p.mask is not None for p in find_pairs(root, images_root))

    def read(
        self,
        root: Path,
        dataset: str | None = None,
        *,
        mapping: str | Sequence[int] | None = None,
        images_root: str | Path | None = None,
        classification: bool = False,
        disease: str | None = None,
        verify_images: bool = False,
        use_split_lists: bool = True,
    ) -> ReadResult:
        root = Path(root)
        name = dataset_name(root, dataset)
        known = KNOWN_LAYOUTS.get(name, KnownMaskLayout())
        mapping = mapping if mapping is not None else known.mapping
        foreground = _foreground(mapping)
        if images_root is None and known.images_root is not None:
            images_root = known.images_root
        image_dir = None
        if images_root is not None:
            image_dir = Path(images_root) if Path(images_root).is_absolute() else root / images_root
            image_dir = image_dir.resolve()
            if not image_dir.is_dir():
                raise FileNotFoundError(
                    f"{root}: images_root {image_dir} is not a folder (pass images_root=...)"
                )
        pairs = find_pairs(root, image_dir)
        if not any(p.image is not None and p.mask is not None for p in pairs):
            expected = f"PNG masks whose images are in {image_dir}" if image_dir else "image + PNG mask pairs"
            raise WrongFormatError(f"{root}: expected {expected}, found {describe_folder(root)}")
        record = ReadReport(name, root, warn_at_once=True)
        split_of: dict[str, str] = {}
        if use_split_lists and known.split_lists_from_images and image_dir is not None:
            split_of, _ = read_split_lists(image_dir.parent)
        context = _MaskContext(
            record=record,
            disease=default_disease(name, disease),
            verify=verify_images,
            split_of=split_of,
            mapping=mapping,
            foreground=foreground,
            class_codes=known.class_codes,
            class_labels=_class_labels(record, pairs),
        )
        samples: list[Sample] = []
        cell_classes: set[int] = set()
        for pair in pairs:
            if pair.mask is None:
                assert pair.image is not None
                record.skip(pair.image, f"image has no mask {pair.image.stem}.png")
                continue
            if pair.image is None:
                where_images = record.relative(image_dir if image_dir is not None else pair.group)
                record.skip(pair.mask, f"mask has no image {pair.mask.stem}.* in {where_images}")
                continue
            sample = _pair_sample(context, pair)
            if sample is None:
                continue
            samples.append(sample)
            if classification and "cell_class" in sample.extra:
                cell_classes.add(sample.extra["cell_class"])
                samples.append(
                    Sample(
                        image=sample.image,
                        task=Task.CLASSIFICATION,
                        dataset=name,
                        sample_id=f"{sample.sample_id}#classification",
                        split=sample.split,
                        disease=context.disease,
                        cell_class=sample.extra["cell_class"],
                        image_size=sample.image_size,
                        source_path=sample.source_path,
                        extra={"class_name": sample.extra["class_name"]},
                    )
                )
        return record.finish(self.name, samples, (CELL_CLASSES[i] for i in sorted(cell_classes)))


@dataclass(frozen=True, kw_only=True)
class _MaskContext(ReadContext):
    """The shared read context plus how masks and class labels are read.

    Attributes:
        mapping: the ``mapping`` option (which mask values are foreground), kept in ``Sample.extra``.
        foreground: the :class:`~unihema.data.schema.FileMask` arguments ``mapping`` stands for.
        class_codes: CSV class code -> cell class name (empty when the CSV holds names).
        class_labels: pair folder -> normalised image id -> CSV class label.
    """

    mapping: str | Sequence[int] = "nonzero"
    foreground: Mapping[str, Any] = field(default_factory=dict)
    class_codes: Mapping[str, str] = field(default_factory=dict)
    class_labels: Mapping[Path, Mapping[str, str]] = field(default_factory=dict)


def _class_labels(record: ReadReport, pairs: list[MaskPair]) -> dict[Path, dict[str, str]]:
    """CSV labels per pair folder; CSV rows naming no image are reported as skipped."""
    labels: dict[Path, dict[str, str]] = {}
    for group in sorted({p.group for p in pairs}):
        csv_path = _class_csv_for(group, record.root)
        if csv_path is None:
            continue
        try:
            table, problems = _read_class_csv(csv_path)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            record.skip(csv_path, f"unreadable class CSV ({err})")
            continue
        for problem in problems:
            record.skip(csv_path, problem)
        stems = {_normal_id(p.stem) for p in pairs if p.group == group}
        for image_id in sorted(set(table) - stems):
            record.skip(csv_path, f"class row for image id {image_id}: no such mask in {group.name}")
        labels[group] = table
    return labels


def _pair_sample(context: _MaskContext, pair: MaskPair) -> Sample | None:
    """The segmentation sample of one image + mask pair, or ``None`` (recorded as skipped)."""
    assert pair.image is not None and pair.mask is not None
    record = context.record
    where = record.relative(pair.mask)
    size, problem = check_image(pair.image, context.verify)
    if problem:
        record.skip(pair.image, problem)
        return None
    mask_size, problem = check_image(pair.mask, context.verify)
    if problem:
        record.skip(where, problem.replace("image", "mask", 1))
        return None
    if mask_size != size:
        record.skip(where, f"mask is {mask_size[1]}x{mask_size[0]} but its image is {size[1]}x{size[0]}")
        return None
    extra: dict[str, Any] = {"mask_path": pair.mask, "mapping": context.mapping}
    if pair.group != record.root:
        extra["group"] = record.relative(pair.group)
    if context.verify:
        _check_levels(context, pair.mask, extra)
    label = context.class_labels.get(pair.group, {}).get(_normal_id(pair.mask.stem))
    if label is not None:
        class_name = context.class_codes.get(label, label)
        extra["class_label"] = label
        extra["class_name"] = class_name
        try:
            extra["cell_class"] = cell_index(class_name)
        except KeyError:
            record.fix(where, f"class {label!r} is not in the single-cell vocabulary: kept in extra only")
    image_rel = record.relative(pair.image)
    return Sample(
        image=FileImage(pair.image),
        task=Task.SEGMENTATION,
        dataset=context.dataset,
        sample_id=image_rel if not image_rel.startswith("/") else where,
        split=context.split_of.get(pair.image.stem),
        disease=context.disease,
        mask=FileMask(pair.mask, **context.foreground),
        image_size=size,
        source_path=pair.image,
        extra=extra,
    )


def _check_levels(context: _MaskContext, mask: Path, extra: dict[str, Any]) -> None:
    """Note an empty mask; record RGBA masks and values off the expected levels as fixed."""
    record, where, mapping = context.record, context.record.relative(mask), context.mapping
    with Image.open(mask) as im:
        mode = im.mode
        grey = mask_to_grey(im)
    if mode in ("RGBA", "LA"):
        record.fix(where, f"{mode} mask read as the brightest colour channel where alpha > 0")
    values, counts = np.unique(grey, return_counts=True)
    if values.size == 1 and values[0] == 0:
        extra["empty_mask"] = True
    levels = MAPPING_LEVELS.get(mapping) if isinstance(mapping, str) else None
    if levels is None:
        return
    stray = ~np.isin(values, levels)
    if stray.any():
        listed = ", ".join(str(v) for v in values[stray].tolist())
        record.fix(
            where,
            f"stray mask values {listed} ({int(counts[stray].sum())} px) snapped to the nearest of {levels}",
        )
