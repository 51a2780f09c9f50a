"""COCO json reader: ``images``, ``annotations`` (``bbox`` = x, y, w, h pixels) and ``categories``.

Annotation files are looked for at the root, in ``annotations/`` and in split folders (Roboflow writes
``<split>/_annotations.coco.json`` beside the images), up to two levels below the root. The split comes from
the file name (``instances_val2017.json``, ``test.json``) or its folder (``valid/``).
Image files are resolved, in order, against: the ``images_root`` option, the json's folder, ``images/``
beside it, the json's parent folder and ``images/`` there, and ``<parent>/<json stem>`` (COCO's
``annotations/instances_val2017.json`` + ``val2017/``); failing those, by file name in any folder at or up
to two levels below the dataset root (when exactly one folder holds a file of that name).

Per annotation, optional field-of-view attributes (the 6 LeukemiaAttri attributes) are read from an
``attributes`` dict or from top-level keys of the same names; values may be value names or indices. An
image with at least one attribute value is a ``fov_morphology`` sample, else a ``detection`` sample.

Quirk policy: see :mod:`unihema.data.formats._common` for boxes. An annotation whose category is unknown
(not in ``categories``, or not in the vocabulary) makes its image skipped: dropping the box alone would
teach that object as background. Crowd regions (``iscrowd=1``) are not boxes; they are left out of the
targets and kept in ``Sample.extra["crowd_boxes"]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unihema.data.formats._common import (
    ReadContext,
    ReadReport,
    annotated,
    candidate_dirs,
    canonical_split,
    check_image,
    clean_boxes,
    dataset_name,
    default_disease,
    describe_folder,
    describe_search,
    relative,
    split_from_name,
)
from unihema.data.formats._pairing import FolderIndex
from unihema.data.formats.base import WrongFormatError, register_reader
from unihema.data.schema import UNKNOWN, FileImage, ReadResult, Sample, Task
from unihema.data.vocab import FOV_ATTRIBUTES, detection_index, normalize_label

SNIFF_BYTES = 1 << 20  # sniff reads at most the first MiB of a json file
COCO_KEYS = ('"images"', '"annotations"', '"categories"')
ATTRIBUTE_ALIASES = {"nuclear_chromatio": "nuclear_chromatin"}  # misspelling seen in upstream loaders


def _json_candidates(root: Path) -> list[Path]:
    found = []
    for folder in candidate_dirs(root):
        found.extend(sorted(p for p in folder.glob("*.json") if p.is_file()))
    return found


def _looks_like_coco(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head.lstrip().startswith("{") and sum(key in head for key in COCO_KEYS) >= 2


def find_coco_files(root: Path) -> list[Path]:
    """Json files at or below ``root`` that look like COCO annotation files (cheap text check)."""
    return [p for p in _json_candidates(Path(root)) if _looks_like_coco(p)]


def _split_of(path: Path) -> str | None:
    return split_from_name(path.stem) or canonical_split(path.parent.name)


def _image_dirs(json_path: Path, images_root: Path | None) -> list[Path]:
    here, parent = json_path.parent, json_path.parent.parent
    stem = json_path.stem.removeprefix("instances_")
    dirs = [images_root] if images_root is not None else []
    return dirs + [here, here / "images", parent, parent / "images", parent / stem, parent / "images" / stem]


def _attribute_values(ann: dict[str, Any]) -> tuple[list[int], list[str]]:
    """Value index per FOV attribute (``UNKNOWN`` where absent) and messages for values that were not read."""
    source = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
    merged = {
        ATTRIBUTE_ALIASES.get(normalize_label(k).replace(" ", "_"), normalize_label(k).replace(" ", "_")): v
        for k, v in {**ann, **source}.items()
    }
    values, problems = [], []
    for attribute, names in FOV_ATTRIBUTES:
        value = merged.get(attribute)
        if value is None:
            values.append(UNKNOWN)
        elif _is_number(value) and value == int(value):
            if 0 <= int(value) < len(names):
                values.append(int(value))
            else:
                values.append(UNKNOWN)
                problems.append(f"{attribute}={value} is not one of 0..{len(names) - 1}")
        elif isinstance(value, str) and value.strip().lower() in names:
            values.append(names.index(value.strip().lower()))
        else:
            values.append(UNKNOWN)
            problems.append(f"{attribute}={value!r} is not one of {names}")
    return values, problems


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value: Any) -> bool:
    """An image, category or annotation id: a number or a text (not a list, a mapping, null or a bool)."""
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _is_size(value: Any) -> bool:
    """A usable image side: a finite positive number."""
    return _is_number(value) and value >= 1


def _polygon_box(segmentation: Any) -> list[float] | None:
    """xywh box around COCO polygon(s), or None when there is no polygon of finite numbers."""
    if not isinstance(segmentation, list) or not segmentation:
        return None
    points = [v for poly in segmentation if isinstance(poly, list) for v in poly]
    if len(points) < 4 or not all(_is_number(v) for v in points):
        return None
    xs, ys = points[0::2], points[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


@register_reader
class CocoReader:
    """COCO detection json.

    Options of :meth:`read`:
        disease: disease context of every sample (default: the dataset's known context, else ``None``).
        verify_images: decode every image to catch truncated files and check the json's size (default False:
            only checks that the image file exists).
        images_root: folder tried first for ``file_name`` (default None: see the module docstring).
        class_map: category name -> vocabulary name, applied before alias lookup (default none).
    """

    name = "coco"
    description = "COCO json boxes (images / annotations with bbox x,y,w,h / categories, optional attributes)"
    expects = "a .json file with images, annotations and categories"
    priority = 15

    def explain(self, root: Path, options: Mapping[str, Any] | None = None) -> str | None:
        """Which json files make ``root`` a COCO set, or ``None`` when it has none."""
        files = find_coco_files(Path(root))
        names = ", ".join(f"'{relative(p, root)}'" for p in files[:4]) + (", ..." if len(files) > 4 else "")
        return (
            f"{len(files)} json files with COCO images/annotations/categories keys ({names})"
            if files
            else None
        )

    def sniff(self, root: Path) -> bool:
        return bool(find_coco_files(Path(root)))

    def read(
        self,
        root: Path,
        dataset: str | None = None,
        *,
        disease: str | None = None,
        verify_images: bool = False,
        images_root: str | Path | None = None,
        class_map: dict[str, str] | None = None,
    ) -> ReadResult:
        root = Path(root)
        files = find_coco_files(root)
        if not files:
            raise WrongFormatError(
                f"{root}: expected a COCO json (with images, annotations and categories); looked in "
                f"{describe_search(root)}, found {describe_folder(root)}"
            )
        name = dataset_name(root, dataset)
        extra_root = Path(images_root) if images_root is not None else None
        if extra_root is not None and not extra_root.is_absolute():
            extra_root = root / extra_root
        record = ReadReport(name, root, warn_at_once=True)
        context = _CocoContext(
            record=record,
            disease=default_disease(name, disease),
            verify=verify_images,
            class_map=class_map or {},
            images_root=extra_root,
            index=FolderIndex(root),
        )
        samples: list[Sample] = []
        seen: set[int] = set()
        for path in files:
            seen |= _read_file(context, path, samples)
        return record.finish(self.name, samples, annotated(seen))


@dataclass(frozen=True, kw_only=True)
class _CocoContext(ReadContext):
    """The shared read context plus the ``images_root`` option.

    Attributes:
        images_root: folder tried first for each ``file_name`` (absolute), or ``None``.
        index: the folders searched for a ``file_name`` found in none of the usual places.
    """

    images_root: Path | None = None
    index: FolderIndex | None = None
    _by_name: dict[str, list[Path]] = field(default_factory=dict, repr=False)

    def find_elsewhere(self, file_name: str) -> Path | None:
        """The one file named like ``file_name``'s last part (``/`` or ``\\`` separated) in the searched
        folders, else ``None``."""
        if self.index is None:
            return None
        if not self._by_name:  # listed once per read, on the first image not found in the usual places
            for folder in self.index.dirs:
                for path in self.index.files(folder):
                    self._by_name.setdefault(path.name, []).append(path)
        found = self._by_name.get(file_name.replace("\\", "/").rsplit("/", 1)[-1], [])
        return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class _CocoFile:
    """One parsed annotation file, as its images need it.

    Attributes:
        where: the file, relative to the dataset root (starts every skipped or fixed item of its images).
        categories: category id -> vocabulary index, or the reason the category is unusable.
        annotations: image id -> its annotations.
        image_dirs: folders an image ``file_name`` is looked for in, in order.
        split: split named by the file name or its folder, or ``None``.
    """

    where: str
    categories: dict[Any, int | str]
    annotations: dict[Any, list[dict[str, Any]]]
    image_dirs: list[Path]
    split: str | None


def _read_file(context: _CocoContext, path: Path, samples: list[Sample]) -> set[int]:
    """Append the samples of one annotation file; return the vocabulary indices of its categories."""
    record = context.record
    where = record.relative(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        record.skip(where, f"unreadable json ({err})")
        return set()
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        record.skip(where, "not a COCO annotation file: no `images` list")
        return set()
    categories: dict[Any, int | str] = {}
    declared = data.get("categories")
    for cat in declared if isinstance(declared, list) else []:
        if not isinstance(cat, dict) or not _is_id(cat.get("id")):
            record.skip(where, f"category {cat!r} is not an object with a number or text `id`: not read")
            continue
        cat_name = str(cat.get("name", ""))
        try:
            categories[cat["id"]] = detection_index(context.class_map.get(cat_name, cat_name))
        except KeyError:
            categories[cat["id"]] = f"category {cat_name!r} is not in the detection vocabulary"
    by_image = _annotations_by_image(record, where, data)
    if by_image is None:
        return set()
    coco_file = _CocoFile(
        where, categories, by_image, _image_dirs(path, context.images_root), _split_of(path)
    )
    for position, info in enumerate(data["images"]):
        if not isinstance(info, dict) or not _is_id(info.get("id")):
            record.skip(f"{where}: images[{position}]", "not an object with a number or text `id`")
            continue
        sample = _read_image(context, coco_file, info)
        if sample is not None:
            samples.append(sample)
    # Every declared category is annotated (an image without its boxes has none of it).
    return {value for value in categories.values() if isinstance(value, int)}


def _annotations_by_image(
    record: ReadReport, where: str, data: dict[str, Any]
) -> dict[Any, list[dict[str, Any]]] | None:
    """Image id -> its annotations, or ``None`` when the file is skipped (recorded): a file without an
    ``annotations`` list, or whose annotations name no image, would give object-free images silently.
    Annotations that name no image of the file are recorded as skipped."""
    annotations = data.get("annotations")
    n_images = len(data["images"])
    if not isinstance(annotations, list):
        found = (
            "no `annotations` list"
            if annotations is None
            else f"`annotations` is a {type(annotations).__name__}"
        )
        record.skip(where, f"{found}: its {n_images} images would read as holding no objects; not read")
        return None
    if not annotations and n_images:
        record.fix(
            where, f"`annotations` is empty: its {n_images} images are read as holding no objects", warn=True
        )
    ids = {info.get("id") for info in data["images"] if isinstance(info, dict) and _is_id(info.get("id"))}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    orphans: list[Any] = []
    for ann in annotations:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not _is_id(image_id) or image_id not in ids:
            orphans.append(ann.get("id") if isinstance(ann, dict) else ann)
            continue
        by_image.setdefault(image_id, []).append(ann)
    if orphans and not by_image:
        record.skip(
            where, f"none of its {len(annotations)} annotations names an image by `image_id`; not read"
        )
        return None
    for ann_id in orphans:
        record.skip(
            f"{where}: annotation {ann_id}",
            "its `image_id` is missing or names no image of the file: its box belongs to no image",
            group="annotations naming no image",
        )
    return by_image


def _read_image(context: _CocoContext, coco_file: _CocoFile, info: dict[str, Any]) -> Sample | None:
    """The sample of one ``images`` entry, or ``None`` (recorded as skipped)."""
    record = context.record
    file_name = str(info.get("file_name", ""))
    item = f"{coco_file.where}: image {info.get('id')} ({file_name})"
    if not file_name:
        record.skip(item, "image entry has no file_name")
        return None
    image = next((d / file_name for d in coco_file.image_dirs if (d / file_name).is_file()), None)
    if image is None:
        image = context.find_elsewhere(file_name)
    if image is None:
        record.skip(item, f"image file {file_name} not found")
        return None
    size: tuple[int, int] | None = None
    if _is_size(info.get("width")) and _is_size(info.get("height")):
        size = (int(info["height"]), int(info["width"]))
    if context.verify or size is None:
        real, problem = check_image(image, context.verify)
        if problem:
            record.skip(item, problem)
            return None
        if size is not None and real != size:
            record.skip(item, f"json size {size[1]}x{size[0]} differs from the image {real[1]}x{real[0]}")
            return None
        size = real
    boxes, labels, attrs, crowd = [], [], [], []
    for ann in coco_file.annotations.get(info.get("id"), []):
        category_id = ann.get("category_id")
        category = (
            coco_file.categories.get(category_id, f"category id {category_id} is not defined")
            if _is_id(category_id)
            else f"category_id {category_id!r} is not a number or a text id"
        )
        if isinstance(category, str):
            record.skip(item, f"annotation {ann.get('id')}: {category}")
            return None
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            bbox = _polygon_box(ann.get("segmentation"))
            if bbox is None:
                record.skip(item, f"annotation {ann.get('id')} has neither a 4-number bbox nor a polygon")
                return None
            record.fix(item, f"annotation {ann.get('id')}: box taken around its polygon (no bbox)")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            record.skip(item, f"annotation {ann.get('id')}: bbox {bbox} is not 4 numbers")
            return None
        if ann.get("iscrowd"):
            crowd.append([x, y, x + w, y + h])
            continue
        values, problems = _attribute_values(ann)
        for problem in problems:
            record.fix(item, f"annotation {ann.get('id')}: {problem}: read as unknown")
        boxes.append([x, y, x + w, y + h])
        labels.append(category)
        attrs.append(values)
    checked = clean_boxes(np.asarray(boxes).reshape(-1, 4), np.asarray(labels, dtype=np.int64), size)
    if checked.error:
        record.skip(item, checked.error)
        return None
    for what in checked.fixes:
        record.fix(item, what)
    attributes = np.asarray(attrs, dtype=np.int64).reshape(-1, len(FOV_ATTRIBUTES))[checked.keep]
    extra: dict[str, Any] = {"image_id": info.get("id")}
    if crowd:
        record.fix(item, f"{len(crowd)} crowd region(s) left out of the box targets")
        extra["crowd_boxes"] = np.asarray(crowd, dtype=np.float32)
    has_attributes = bool((attributes != UNKNOWN).any())
    return Sample(
        image=FileImage(image),
        task=Task.FOV_MORPHOLOGY if has_attributes else Task.DETECTION,
        dataset=context.dataset,
        sample_id=record.relative(image),
        split=coco_file.split,
        disease=context.disease,
        boxes=checked.boxes,
        box_labels=checked.labels,
        box_attributes=attributes,
        image_size=size,
        source_path=image,
        extra=extra,
    )
