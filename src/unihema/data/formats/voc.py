"""Pascal VOC reader: XML files with an ``<annotation>`` root paired with their images by file stem.

Used for BCCD (``Annotations/*.xml`` + ``JPEGImages/`` + ``ImageSets/Main/{train,val,test}.txt``). The files
are found by content, not by folder names (see :mod:`unihema.data.formats._pairing`): any folder at or up
to three levels below the root (a VOC folder two levels down and its annotation folder) whose XML files
have an ``<annotation>`` root is an annotation folder (a folder named ``Annotations/`` always is), and its images are in ``JPEGImages/`` beside it when that exists,
else in the folder whose images share the most stems with the XML files (or with their ``<filename>``
fields), e.g. ``XML Files/`` + ``Images/``. Split lists are read from ``ImageSets/Main/`` beside the
annotation folder; without them the split comes from a folder name (``train/``, ``Test/``) when there is one.

Coordinates are read as absolute xyxy pixels. The image size is read from the image's header (cheap, no
decoding): a ``<size>`` that disagrees with it is not trusted, the image's own size is used and the
difference recorded as fixed (warned), so boxes are clipped against the real image, the same in
``unihema data check``, training and evaluation. The ``<path>`` element is ignored (it holds the
labelling machine's absolute path). A ``<filename>`` that names no file is resolved by the XML file's stem
(recorded as fixed). Split-list lines are whole image ids (ids may hold spaces); ids that name no
annotation file are recorded as fixed. Byte-identical images are loaded once
when annotated alike and skipped when not (see :func:`~unihema.data.formats._common.drop_identical_images`).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from unihema.data.formats._common import (
    MAX_SEARCH_DEPTH,
    ReadContext,
    ReadReport,
    annotated,
    check_image,
    clean_boxes,
    dataset_name,
    default_disease,
    describe_folder,
    describe_search,
    drop_identical_images,
    find_image,
    list_images,
    split_from_path,
)
from unihema.data.formats._pairing import SNIFF_FILES, FolderIndex, FolderPairing
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


FILENAME_SAMPLE = 20
"""XML files whose ``<filename>`` is read to pair the folders when the file stems do not pair."""
ROOT_TAG = "annotation"


def root_tag(path: Path) -> str | None:
    """The root element's tag of an XML file, reading only up to it (``None`` when unreadable)."""
    try:
        for _, element in ET.iterparse(path, events=("start",)):
            return element.tag
    except (ET.ParseError, OSError):
        return None
    return None


def _filename_stems(xml_files: list[Path]) -> set[str]:
    stems = set()
    for path in xml_files[:FILENAME_SAMPLE]:
        try:
            name = (ET.parse(path).getroot().findtext("filename") or "").strip()
        except (ET.ParseError, OSError):
            continue
        if name:
            stems.add(Path(name).stem)
    return stems


@dataclass(frozen=True)
class VocSet:
    """One folder of VOC XML files and the folder of their images.

    Attributes:
        pairing: the annotation folder, the image folder and how many XML files have an image.
        base: the folder whose ``ImageSets/Main/`` holds the split lists (the annotation folder's parent).
    """

    pairing: FolderPairing
    base: Path

    @property
    def annotations(self) -> Path:
        return self.pairing.annotations

    @property
    def images(self) -> Path:
        return self.pairing.images


def find_voc_sets(root: Path) -> list[VocSet]:
    """The VOC annotation folders at or below ``root`` with their image folders (module docstring)."""
    # One level deeper than other readers: a VOC folder two levels down keeps its XML files one further.
    index = FolderIndex(Path(root), MAX_SEARCH_DEPTH + 1)
    sets = []
    for folder in index.dirs:
        xml_files = index.files(folder, (".xml",))
        if not xml_files:
            continue
        named = folder.name == ANNOTATIONS_DIR
        if not named and not any(root_tag(p) == ROOT_TAG for p in xml_files[:SNIFF_FILES]):
            continue
        stems = {p.stem for p in xml_files}
        conventional = folder.parent / IMAGES_DIR
        if conventional.is_dir():
            paired = len(stems & set(index.images(conventional)))
            pairing: FolderPairing | None = FolderPairing(folder, conventional, len(stems), paired)
        else:
            pairing = index.image_folder_for(folder, stems)
            if pairing is None:
                by_filename = index.image_folder_for(folder, _filename_stems(xml_files))
                if by_filename is not None:
                    pairing = FolderPairing(folder, by_filename.images, len(stems), by_filename.paired)
        if pairing is None and named:  # the VOC folder names: the XML files are reported one by one
            pairing = FolderPairing(folder, conventional, len(stems), 0)
        if pairing is not None:
            sets.append(VocSet(pairing, folder.parent))
    return sets


def find_voc_roots(root: Path) -> list[Path]:
    """Folders holding the annotation folders of :func:`find_voc_sets` (their split lists' base)."""
    return [voc_set.base for voc_set in find_voc_sets(root)]


def split_list_paths(voc_root: Path) -> dict[str, Path]:
    """Split -> its list file ``ImageSets/Main/<split>.txt`` under ``voc_root``, for the lists present."""
    paths = {split: voc_root / SPLIT_LIST_DIR / f"{split}.txt" for split in SPLIT_LISTS}
    return {split: path for split, path in paths.items() if path.is_file()}


def read_split_lists(voc_root: Path) -> tuple[dict[str, str], list[str]]:
    """Image id -> split from ``ImageSets/Main/{train,val,test}.txt`` and the ids listed in more than one.

    Each line is one image id (surrounding blanks stripped): ids may hold spaces (``my cell 01``).
    An id listed in several split lists is put in the last of train, val, test (the most conservative
    against train/test leakage).
    """
    split_of: dict[str, str] = {}
    conflicts: list[str] = []
    for split, path in split_list_paths(voc_root).items():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            image_id = line.strip()
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
        width, height = _number(size_el, "width"), _number(size_el, "height")
        # A side that is not a finite positive number says nothing: the image's own size is used.
        usable = all(math.isfinite(side) and side >= 1 for side in (width, height))
        size = (int(height), int(width)) if usable else None
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
        verify_images: decode every image to catch truncated files (default False: only its header is
            read, for its size).
        class_map: dataset class name -> vocabulary name, applied before alias lookup (default none).
        use_split_lists: take ``split`` from ``ImageSets/Main/{train,val,test}.txt`` (default True).
    """

    name = "voc"
    description = "Pascal VOC XML boxes (<annotation> XML files paired by stem with images, any folders)"
    expects = "XML files with an <annotation> root and images of the same stems, in any one or two folders"
    priority = 10

    def explain(self, root: Path, options: Mapping[str, Any] | None = None) -> str | None:
        """Which files make ``root`` a VOC set, or ``None`` when it is not one."""
        sets = find_voc_sets(Path(root))
        return "; ".join(s.pairing.describe("XML files with <annotation> roots", root) for s in sets) or None

    def sniff(self, root: Path) -> bool:
        return self.explain(root) is not None

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
        voc_sets = find_voc_sets(root)
        if not voc_sets:
            raise WrongFormatError(
                f"{root}: expected a Pascal VOC folder ({self.expects}); looked in {describe_search(root)}, "
                f"found {describe_folder(root)}"
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
        for voc_set in voc_sets:
            split_of: dict[str, str] = {}
            if use_split_lists:
                split_of, conflicts = read_split_lists(voc_set.base)
                for image_id in conflicts:
                    record.fix(
                        voc_set.base / SPLIT_LIST_DIR,
                        f"{image_id} is in several split lists: put in {split_of[image_id]}",
                    )
            voc_context = replace(
                context, split_of=split_of, folder_split=split_from_path(voc_set.annotations, root)
            )
            image_dir, xml_dir = voc_set.images, voc_set.annotations
            used_images: set[Path] = set()
            xml_files = sorted(p for p in xml_dir.iterdir() if p.is_file() and p.suffix.lower() == ".xml")
            _note_unknown_ids(record, voc_set.base, split_of, {p.stem for p in xml_files})
            for xml_path in xml_files:
                sample = _read_annotation(voc_context, xml_path, image_dir)
                if sample is None:
                    continue
                used_images.add(sample.source_path)
                samples.append(sample)
            if image_dir.is_dir():
                for image in list_images(image_dir):
                    if image not in used_images and not (xml_dir / f"{image.stem}.xml").exists():
                        record.skip(image, f"image has no annotation file in {xml_dir.name}/")
        samples = drop_identical_images(samples, record)
        seen_labels = {int(label) for sample in samples for label in sample.box_labels}
        return record.finish(self.name, samples, annotated(seen_labels))


def _note_unknown_ids(
    record: ReadReport, voc_root: Path, split_of: Mapping[str, str], stems: set[str]
) -> None:
    """Record, per split list, the ids that name no annotation file (their lines are not used)."""
    unknown: dict[str, list[str]] = {}
    for image_id, split in split_of.items():
        if image_id not in stems:
            unknown.setdefault(split, []).append(image_id)
    for split, path in split_list_paths(voc_root).items():
        ids = unknown.get(split)
        if ids:
            shown = ", ".join(repr(i) for i in ids[:3]) + (", ..." if len(ids) > 3 else "")
            record.fix(path, f"{len(ids)} id(s) name no annotation file ({shown}): not used", warn=True)


@dataclass(frozen=True, kw_only=True)
class _VocContext(ReadContext):
    """The shared read context plus the known annotation issues of the dataset.

    Attributes:
        issues: image id -> known annotation error (see :data:`KNOWN_ISSUES`).
        folder_split: the split a folder name gives the annotation folder (used for ids not in split lists).
    """

    issues: Mapping[str, str] = field(default_factory=dict)
    folder_split: str | None = None


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
    declared = parsed["size"]
    size, problem = check_image(image, context.verify)
    if problem:
        record.skip(image, problem)
        return None
    if declared is not None and declared != size:
        record.fix(
            where,
            f"<size> {declared[1]}x{declared[0]} differs from the image {size[1]}x{size[0]}: used the image's size",
            warn=True,
        )
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
        split=context.split_of.get(xml_path.stem, context.folder_split),
        disease=context.disease,
        boxes=checked.boxes,
        box_labels=checked.labels,
        image_size=size,
        source_path=image,
        extra=extra,
    )
