"""Pascal VOC reader: ``Annotations/*.xml`` + ``JPEGImages/`` (+ ``ImageSets/Main/{train,val,test}.txt``).

Used for BCCD. The VOC folder may be the given root or sit up to two levels below it (``bccd/BCCD/``).
Coordinates are read as absolute xyxy pixels; ``<size>`` gives the image size without decoding the image.
The ``<path>`` element is ignored (it holds the labelling machine's absolute path).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from unihema.data.formats._common import (
    ReadContext,
    ReadReport,
    annotated,
    candidate_dirs,
    check_image,
    clean_boxes,
    dataset_name,
    default_disease,
    describe_folder,
    find_image,
    list_images,
)
from unihema.data.formats.base import WrongFormatError, register_reader
from unihema.data.schema import FileImage, ReadResult, Sample, Task
from unihema.data.vocab import detection_index

ANNOTATIONS_DIR = "Annotations"
IMAGES_DIR = "JPEGImages"
SPLIT_LIST_DIR = Path("ImageSets") / "Main"
SPLIT_LISTS = ("train", "val", "test")  # `trainval` is the union of the first two and is not read

KNOWN_ISSUES: dict[str, dict[str, str]] = {
    # Images with a visible WBC but no WBC box (their nucleus masks exist in bccd_nucleus_masks).
    "bccd": {
        "BloodImage_00133": "WBC at the top edge is boxed as Platelets",
        "BloodImage_00135": "a WBC nucleus is masked in bccd_nucleus_masks but no WBC box exists",
        "BloodImage_00171": "WBC present but not boxed",
        "BloodImage_00178": "a WBC nucleus is masked in bccd_nucleus_masks but no WBC box exists",
        "BloodImage_00228": "WBC present but not boxed",
        "BloodImage_00327": "a WBC nucleus is masked in bccd_nucleus_masks but no WBC box exists",
    },
}
"""Known annotation errors per dataset and image id; kept in ``Sample.extra["annotation_issue"]``."""


def find_voc_roots(root: Path) -> list[Path]:
    """Folders at or below ``root`` holding ``Annotations/`` with at least one ``.xml`` file."""
    roots = []
    for folder in candidate_dirs(Path(root)):
        ann = folder / ANNOTATIONS_DIR
        if ann.is_dir() and any(p.suffix.lower() == ".xml" for p in ann.iterdir()):
            roots.append(folder)
    return roots


def read_split_lists(voc_root: Path) -> tuple[dict[str, str], list[str]]:
    """Image id -> split from ``ImageSets/Main/{train,val,test}.txt`` and the ids listed in more than one.

    An id listed in several split lists is put in the last of train, val, test (the most conservative
    against train/test leakage).
    """
    split_of: dict[str, str] = {}
    conflicts: list[str] = []
    for split in SPLIT_LISTS:
        path = voc_root / SPLIT_LIST_DIR / f"{split}.txt"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            image_id = line.split()[0] if line.split() else ""
            if not image_id:
                continue
            if image_id in split_of and split_of[image_id] != split:
                conflicts.append(image_id)
            split_of[image_id] = split
    return split_of, conflicts


class _BadFile(ValueError):
    """An annotation file that cannot be interpreted; the message is the reason."""


def _number(obj: ET.Element, tag: str) -> float:
    text = obj.findtext(tag)
    if text is None or not text.strip():
        raise _BadFile(f"<{tag}> is missing")
    try:
        return float(text)
    except ValueError:
        raise _BadFile(f"<{tag}> is not a number: {text.strip()!r}") from None


def _parse_xml(path: Path, class_map: Mapping[str, str]) -> dict[str, Any]:
    """Filename, size (or None), raw names, xyxy boxes, label indices and difficult flags of a VOC file."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        raise _BadFile(f"malformed XML ({err})") from None
    top = tree.getroot()
    if top.tag != "annotation":
        raise _BadFile(f"root element is <{top.tag}>, expected <annotation>")
    size = None
    size_el = top.find("size")
    if size_el is not None and size_el.findtext("width") and size_el.findtext("height"):
        width, height = int(_number(size_el, "width")), int(_number(size_el, "height"))
        size = (height, width) if width > 0 and height > 0 else None
    names, boxes, labels, difficult = [], [], [], []
    for i, obj in enumerate(top.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise _BadFile(f"object {i} has no <name>")
        try:
            label = detection_index(class_map.get(name, name))
        except KeyError:
            raise _BadFile(f"object {i}: class {name!r} is not in the detection vocabulary") from None
        box_el = obj.find("bndbox")
        if box_el is None:
            raise _BadFile(f"object {i} ({name}) has no <bndbox>")
        try:
            box = [_number(box_el, k) for k in ("xmin", "ymin", "xmax", "ymax")]
        except _BadFile as err:
            raise _BadFile(f"object {i} ({name}): {err}") from None
        names.append(name)
        boxes.append(box)
        labels.append(label)
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return {
        "filename": (top.findtext("filename") or "").strip(),
        "size": size,
        "names": names,
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, dtype=bool),
    }


@register_reader
class VocReader:
    """Pascal VOC XML boxes.

    Options of :meth:`read`:
        disease: disease context of every sample (default: the dataset's known context, e.g. ``"healthy"``
            for ``bccd``, else ``None``).
        verify_images: decode every image to catch truncated files and check the XML size (default False:
            only checks that the image file exists).
        class_map: dataset class name -> vocabulary name, applied before alias lookup (default none).
        use_split_lists: take ``split`` from ``ImageSets/Main/{train,val,test}.txt`` (default True).
    """

    name = "voc"
    description = "Pascal VOC XML boxes (Annotations/*.xml + JPEGImages/, ImageSets/Main split lists)"
    priority = 10

    def sniff(self, root: Path) -> bool:
        return bool(find_voc_roots(Path(root)))

    def read(
        self,
        root: Path,
        dataset: str | None = None,
        *,
        disease: str | None = None,
        verify_images: bool = False,
        class_map: dict[str, str] | None = None,
        use_split_lists: bool = True,
    ) -> ReadResult:
        root = Path(root)
        voc_roots = find_voc_roots(root)
        if not voc_roots:
            raise WrongFormatError(
                f"{root}: expected a Pascal VOC folder with Annotations/*.xml, found {describe_folder(root)}"
            )
        name = dataset_name(root, dataset)
        record = ReadReport(name, root, warn_at_once=True)
        context = _VocContext(
            record=record,
            disease=default_disease(name, disease),
            verify=verify_images,
            class_map=class_map or {},
            issues=KNOWN_ISSUES.get(name, {}),
        )
        samples: list[Sample] = []
        seen_labels: set[int] = set()
        for voc_root in voc_roots:
            split_of: dict[str, str] = {}
            if use_split_lists:
                split_of, conflicts = read_split_lists(voc_root)
                for image_id in conflicts:
                    record.fix(
                        voc_root / SPLIT_LIST_DIR,
                        f"{image_id} is in several split lists: put in {split_of[image_id]}",
                    )
            voc_context = replace(context, split_of=split_of)
            image_dir = voc_root / IMAGES_DIR
            used_images: set[Path] = set()
            for xml_path in sorted((voc_root / ANNOTATIONS_DIR).glob("*.xml")):
                sample = _read_annotation(voc_context, xml_path, image_dir)
                if sample is None:
                    continue
                used_images.add(sample.source_path)
                seen_labels.update(sample.box_labels.tolist())
                samples.append(sample)
            if image_dir.is_dir():
                for image in list_images(image_dir):
                    if (
                        image not in used_images
                        and not (voc_root / ANNOTATIONS_DIR / f"{image.stem}.xml").exists()
                    ):
                        record.skip(image, "image has no annotation file in Annotations/")
        return record.finish(self.name, samples, annotated(seen_labels))


@dataclass(frozen=True, kw_only=True)
class _VocContext(ReadContext):
    """The shared read context plus the known annotation issues of the dataset.

    Attributes:
        issues: image id -> known annotation error (see :data:`KNOWN_ISSUES`).
    """

    issues: Mapping[str, str] = field(default_factory=dict)


def _read_annotation(context: _VocContext, xml_path: Path, image_dir: Path) -> Sample | None:
    """The detection sample of one annotation file, or ``None`` (recorded as skipped)."""
    record = context.record
    where = record.relative(xml_path)
    try:
        parsed = _parse_xml(xml_path, context.class_map)
    except _BadFile as err:
        record.skip(where, str(err))
        return None
    image = find_image(image_dir, xml_path.stem, parsed["filename"] or None)
    if image is None:
        record.skip(
            where, f"image {parsed['filename'] or xml_path.stem} not found in {record.relative(image_dir)}"
        )
        return None
    if parsed["filename"] and image.name != parsed["filename"]:
        record.fix(where, f"<filename> says {parsed['filename']}, used {image.name} (same stem)")
    size = parsed["size"]
    if context.verify or size is None:
        real_size, problem = check_image(image, context.verify)
        if problem:
            record.skip(image, problem)
            return None
        if size is not None and real_size != size:
            record.skip(
                where, f"<size> {size[1]}x{size[0]} differs from the image {real_size[1]}x{real_size[0]}"
            )
            return None
        size = real_size
    checked = clean_boxes(parsed["boxes"], parsed["labels"], size, parsed["names"])
    if checked.error:
        record.skip(where, checked.error)
        return None
    for what in checked.fixes:
        record.fix(where, what)
    extra: dict[str, Any] = {"class_names": [n for n, k in zip(parsed["names"], checked.keep) if k]}
    if parsed["difficult"][checked.keep].any():
        extra["difficult"] = parsed["difficult"][checked.keep]
    if xml_path.stem in context.issues:
        extra["annotation_issue"] = context.issues[xml_path.stem]
    return Sample(
        image=FileImage(image),
        task=Task.DETECTION,
        dataset=context.dataset,
        sample_id=record.relative(image),
        split=context.split_of.get(xml_path.stem),
        disease=context.disease,
        boxes=checked.boxes,
        box_labels=checked.labels,
        image_size=size,
        source_path=image,
        extra=extra,
    )
