"""YOLO txt reader: one ``class cx cy w h`` line per box, normalised to [0, 1].

Layouts found (at the root or up to two levels below it):

- ``data.yaml`` with ``train``/``val``/``test`` image folders and ``names``; the label folder is the image
  folder with its last ``images`` component replaced by ``labels``. Paths are resolved against the yaml's
  folder; Roboflow exports write ``../train/images`` for a folder that sits *beside* the yaml, so a path
  that does not exist is retried without its leading ``../``.
- without a yaml: ``images/<split>/`` + ``labels/<split>/``, ``<split>/images/`` + ``<split>/labels/``, or a
  flat ``images/`` + ``labels/``. Class names then come from ``classes.txt`` (or the ``names=`` option).
- with any other folder names: every folder whose text files hold ``class cx cy w h`` lines (numbers, the
  coordinates normalised) is a label folder, paired by stem with the folder whose images match the most of
  its files (the label folder itself included: darknet keeps both together); see
  :mod:`unihema.data.formats._pairing`. The split comes from a folder name (``train``, ``Valid Labels``) or
  the yaml key whose folder holds the images; class names from ``classes.txt`` / ``obj.names`` in or beside
  the label folder.

``classes.txt`` files inside a label folder are class-name lists, not label files: they are ignored
(recorded as fixed), and their names are checked against ``data.yaml`` through the vocabulary aliases
(``Platelets`` / ``Platelet`` / ``PC`` all mean ``platelet``).
Image sizes come from the image headers (needed to turn normalised boxes into pixels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

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
    drop_identical_images,
    folder_name,
    list_images,
    relative,
    split_from_path,
    yaml_error_text,
)
from unihema.data.formats._pairing import SNIFF_FILES, FolderIndex, first_lines
from unihema.data.formats.base import WrongFormatError, register_reader
from unihema.data.schema import FileImage, ReadResult, Sample, Task
from unihema.data.vocab import DETECTION_CLASSES, detection_index

YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
CLASSES_FILE = "classes.txt"
CLASS_NAME_FILES = (CLASSES_FILE, "obj.names")  # darknet writes obj.names
MAX_NORMALISED = 2.0  # a coordinate above this is not a normalised YOLO value (pixel boxes, points)
FIELDS_PER_LINE = 5  # class cx cy w h
YAML_SPLIT_KEYS = ("train", "val", "test")

# Roboflow file names: <original stem>_<ext>.rf.<hash>
ROBOFLOW_NAME = re.compile(r"^(?P<original>.+)_(?:jpe?g|png|bmp|tiff?)\.rf\.[0-9a-fA-F]+$")
# Slide id and species code in FIOCRUZ thick-smear names: L30PV_1, L2683_PF5, L4806pf10, L5049F_1 (no code).
SLIDE_SPECIES = re.compile(r"^(?P<slide>L\d+)[_-]?(?P<code>P[FV])?", re.IGNORECASE)
SPECIES_CODES = {"PF": "p. falciparum", "PV": "p. vivax"}
SPECIES_FROM_NAME_DATASETS = frozenset({"fiocruz_malaria_thick"})


@dataclass(frozen=True)
class YoloSplit:
    """One image folder and its label folder; ``split`` is ``None`` for a flat layout."""

    split: str | None
    images: Path
    labels: Path


def _find_yaml(root: Path) -> Path | None:
    for folder in candidate_dirs(root):
        for name in YAML_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def _labels_dir(images: Path) -> Path:
    parts = list(images.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images


def _resolve_yaml_path(yaml_dir: Path, value: str) -> Path | None:
    path = Path(value)
    candidates = [path] if path.is_absolute() else [yaml_dir / path]
    stripped = value
    while stripped.startswith("../"):
        stripped = stripped[3:]
        candidates.append(yaml_dir / stripped)
    return next((c.resolve() for c in candidates if c.is_dir()), None)


def _splits_from_yaml(yaml_path: Path, config: dict[str, Any]) -> list[YoloSplit]:
    splits = []
    for key in YAML_SPLIT_KEYS:
        values = config.get(key)
        for value in [values] if isinstance(values, str) else (values or []):
            images = _resolve_yaml_path(yaml_path.parent, str(value))
            if images is not None:
                splits.append(YoloSplit(key, images, _labels_dir(images)))
    return splits


def _splits_from_folders(root: Path) -> list[YoloSplit]:
    for folder in candidate_dirs(root):
        found = []
        if (folder / "images").is_dir() and (folder / "labels").is_dir():
            for sub in sorted((folder / "images").iterdir()):
                if sub.is_dir() and canonical_split(sub.name):
                    found.append(YoloSplit(canonical_split(sub.name), sub, folder / "labels" / sub.name))
            if not found:
                found.append(YoloSplit(None, folder / "images", folder / "labels"))
        else:
            for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
                if canonical_split(sub.name) and (sub / "images").is_dir() and (sub / "labels").is_dir():
                    found.append(YoloSplit(canonical_split(sub.name), sub / "images", sub / "labels"))
        if found:
            return found
    return []


def looks_like_yolo_line(line: str) -> bool:
    """``class cx cy w h``: an integer class id and four normalised numbers."""
    fields = line.split()
    if len(fields) != FIELDS_PER_LINE or not fields[0].isdigit():
        return False
    try:
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return False
    return all(0.0 <= v <= MAX_NORMALISED for v in values)


def _label_files(index: FolderIndex, folder: Path) -> list[Path]:
    return [p for p in index.files(folder, (".txt",)) if p.name != CLASSES_FILE]


def looks_like_label_folder(index: FolderIndex, folder: Path) -> bool:
    """True when the first non-empty label files of ``folder`` start with ``class cx cy w h`` lines."""
    checked = 0
    for path in _label_files(index, folder):
        lines = first_lines(path, 1)
        if not lines:
            continue  # an empty label file: an image without objects
        if not looks_like_yolo_line(lines[0]):
            return False
        checked += 1
        if checked >= SNIFF_FILES:
            break
    return checked > 0


def _splits_by_pairing(root: Path, yaml_splits: dict[Path, str]) -> list[YoloSplit]:
    """Label folders recognised by content, each paired by stem with its image folder."""
    index = FolderIndex(root)
    splits = []
    for folder in index.dirs:
        if not looks_like_label_folder(index, folder):
            continue
        pairing = index.image_folder_for(folder, {p.stem for p in _label_files(index, folder)})
        if pairing is None:
            continue
        images = pairing.images
        split = (
            yaml_splits.get(images.resolve())
            or split_from_path(images, root)
            or split_from_path(folder, root)
        )
        splits.append(YoloSplit(split, images, folder))
    return splits


_YAML_IGNORED = "ignored; folders and class names found without it"


def load_yaml_config(path: Path) -> tuple[dict[str, Any], str | None]:
    """The mapping of a ``data.yaml`` and ``None``, or what of it can be used and what cannot, in words."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return {}, f"not a readable YAML file ({yaml_error_text(err)}): {_YAML_IGNORED}"
    if not isinstance(loaded, dict):
        found = type(loaded).__name__
        return {}, f"expected a mapping with train/val/test and names, got {found}: {_YAML_IGNORED}"
    names = loaded.get("names")
    if names is not None and _yaml_names(loaded) is None:
        return loaded, (
            f"`names` must be a list or a mapping id -> name, got {names!r}: class names taken from "
            f"{' or '.join(CLASS_NAME_FILES)} or the names= option"
        )
    return loaded, None


def find_yolo_layout(root: Path) -> tuple[Path | None, dict[str, Any], list[YoloSplit]]:
    """The yaml (or None), its parsed content and the image/label folder pairs that hold ``.txt`` labels
    (by the folder names of the module docstring first, else by content and pairing)."""
    root = Path(root)
    yaml_path = _find_yaml(root)
    config: dict[str, Any] = {}
    splits: list[YoloSplit] = []
    if yaml_path is not None:
        config = load_yaml_config(yaml_path)[0]
        splits = _splits_from_yaml(yaml_path, config)
    yaml_splits = {s.images: s.split for s in splits if s.split}
    if not splits:
        splits = _splits_from_folders(root)
    splits = [s for s in splits if s.labels.is_dir() and any(s.labels.glob("*.txt"))]
    if not splits:
        splits = _splits_by_pairing(root, yaml_splits)
    return yaml_path, config, splits


def _yaml_names(config: dict[str, Any]) -> list[str] | None:
    """The ``names`` of a yaml by class id, or ``None`` when absent or not a list / id-keyed mapping."""
    names = config.get("names")
    if isinstance(names, dict):
        try:
            return [str(names[k]) for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            return None
    if isinstance(names, list):
        return [str(n) for n in names]
    return None


def _read_names_file(path: Path) -> list[str]:
    return [
        ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()
    ]


def species_from_name(stem: str) -> tuple[str | None, str | None]:
    """``(slide id, species)`` encoded in a FIOCRUZ thick-smear file name (either may be ``None``).

    ``L2683_PF5`` -> ``("L2683PF", "p. falciparum")``; ``L5049F_1`` -> ``("L5049", None)``.
    """
    match = SLIDE_SPECIES.match(stem)
    if match is None:
        return None, None
    code = match.group("code")
    slide = match.group("slide").upper() + (code.upper() if code else "")
    return slide, SPECIES_CODES[code.upper()] if code else None


@register_reader
class YoloReader:
    """YOLO txt boxes.

    Options of :meth:`read`:
        disease: disease context of every sample (default: the dataset's known context, else ``None``).
        verify_images: decode every image to catch truncated files (default False: header only).
        names: class names by id, overriding ``data.yaml`` / ``classes.txt`` (default None).
        class_map: dataset class name -> vocabulary name, applied before alias lookup (default none).
        species_from_name: compare the species code of the file name (``PF``/``PV``) with the box labels and
            record disagreements; the box labels are always kept (default: on for ``fiocruz_malaria_thick``).
    """

    name = "yolo"
    description = (
        "YOLO txt boxes ('class cx cy w h' files paired by stem with images; data.yaml, classes.txt)"
    )
    expects = (
        "text files of 'class cx cy w h' lines (normalised) and images of the same stems in any folders, "
        "or a data.yaml naming the image folders"
    )
    priority = 20

    def explain(self, root: Path, options: Mapping[str, Any] | None = None) -> str | None:
        """Which folders make ``root`` a YOLO set, or ``None`` when it is not one."""
        root = Path(root)
        yaml_path, _, splits = find_yolo_layout(root)
        if not splits:
            return None
        pairs = []
        for split in splits:
            labels = [p for p in split.labels.glob("*.txt") if p.name != CLASSES_FILE]
            images = {p.stem for p in list_images(split.images)}
            pairs.append(
                f"{len(labels)} label files in {folder_name(split.labels, root)} paired by stem with "
                f"{len(images & {p.stem for p in labels})} images in {folder_name(split.images, root)}"
                + (f" ({split.split})" if split.split else "")
            )
        lead = f"'{relative(yaml_path, root)}' names the folders; " if yaml_path else ""
        return lead + "; ".join(pairs)

    def sniff(self, root: Path) -> bool:
        return bool(find_yolo_layout(Path(root))[2])

    def read(
        self,
        root: Path,
        dataset: str | None = None,
        *,
        disease: str | None = None,
        verify_images: bool = False,
        names: list[str] | None = None,
        class_map: dict[str, str] | None = None,
        species_from_name: bool | None = None,
    ) -> ReadResult:
        root = Path(root)
        yaml_path, config, splits = find_yolo_layout(root)
        if not splits:
            raise WrongFormatError(
                f"{root}: expected YOLO image and label folders ({self.expects}); looked in "
                f"{describe_search(root)}, found {describe_folder(root)}"
            )
        name = dataset_name(root, dataset)
        record = ReadReport(name, root, warn_at_once=True)
        problem = load_yaml_config(yaml_path)[1] if yaml_path is not None else None
        if problem:
            record.fix(yaml_path, problem, warn=True)
        try:
            class_ids = _class_ids(record, yaml_path, config, splits, names, class_map or {})
        except ValueError as err:
            if problem:  # the yaml's names could not be read: say why
                raise ValueError(f"{err}; {yaml_path}: {problem}") from None
            raise
        context = _YoloContext(
            record=record,
            disease=default_disease(name, disease),
            verify=verify_images,
            class_map=class_map or {},
            class_ids=tuple(class_ids),
            check_species=(
                species_from_name if species_from_name is not None else name in SPECIES_FROM_NAME_DATASETS
            ),
        )
        samples: list[Sample] = []
        for split in splits:
            samples.extend(_read_split(context, split))
        samples = drop_identical_images(samples, record)
        return record.finish(self.name, samples, annotated(class_ids))


@dataclass(frozen=True, kw_only=True)
class _YoloContext(ReadContext):
    """The shared read context plus what the YOLO label files are read with.

    Attributes:
        class_ids: vocabulary index of every YOLO class id.
        check_species: compare the species code of each file name with its box labels.
    """

    class_ids: tuple[int, ...] = ()
    check_species: bool = False


def _class_ids(
    record: ReadReport,
    yaml_path: Path | None,
    config: dict[str, Any],
    splits: list[YoloSplit],
    names: list[str] | None,
    class_map: Mapping[str, str],
) -> list[int]:
    """Vocabulary index of every YOLO class id, after checking every class-name list agrees."""
    lists: list[tuple[str, list[str]]] = []
    if names is not None:
        lists.append(("names= option", list(names)))
    if yaml_path is not None and _yaml_names(config) is not None:
        lists.append((record.relative(yaml_path), _yaml_names(config) or []))
    class_files = {
        folder / file for s in splits for folder in (s.labels, s.labels.parent) for file in CLASS_NAME_FILES
    }
    for path in sorted(p for p in class_files if p.is_file()):
        lists.append((record.relative(path), _read_names_file(path)))
    if not lists:
        raise ValueError(
            f"{record.root}: YOLO labels found but no class names (no data.yaml `names`, no "
            f"{' or '.join(CLASS_NAME_FILES)} in or beside the label folders); pass names=[...]"
        )
    source, chosen = lists[0]

    def to_ids(where: str, class_names: list[str]) -> list[int]:
        try:
            return [detection_index(class_map.get(n, n)) for n in class_names]
        except KeyError as err:
            raise ValueError(f"{where}: {err.args[0]}") from None

    ids = to_ids(source, chosen)
    for where, other in lists[1:]:
        other_ids = to_ids(where, other)
        if other_ids != ids:
            raise ValueError(f"{where} names classes {other} but {source} names {chosen}: they disagree")
        for mine, theirs, idx in zip(chosen, other, ids):
            if mine != theirs:
                record.fix(
                    where,
                    f"class {theirs!r} is spelled {mine!r} in {source}: both read as {DETECTION_CLASSES[idx]!r}",
                )
    return ids


def _read_split(context: _YoloContext, split: YoloSplit) -> list[Sample]:
    """The detection samples of one image folder and its label folder."""
    record = context.record
    images = {p.stem: p for p in list_images(split.images)}
    labels = {p.stem: p for p in sorted(split.labels.glob("*.txt"))}
    if CLASSES_FILE[:-4] in labels and CLASSES_FILE[:-4] not in images:
        record.fix(labels.pop(CLASSES_FILE[:-4]), "class-name list, not a label file: ignored")
    for stem in sorted(set(labels) - set(images)):
        record.skip(labels[stem], f"label file has no image in {record.relative(split.images)}")
    samples: list[Sample] = []
    for stem, image in images.items():
        where = record.relative(image)
        size, problem = check_image(image, context.verify)
        if problem:
            record.skip(where, problem)
            continue
        label_path = labels.get(stem)
        if label_path is None:
            record.fix(where, "no label file: read as an image without objects (YOLO convention)")
            parsed: tuple[np.ndarray, np.ndarray] | str = (np.zeros((0, 4)), np.zeros((0,), np.int64))
        else:
            parsed = _parse_label_file(label_path, size, context.class_ids)
        label_where = record.relative(label_path) if label_path else where
        if isinstance(parsed, str):
            record.skip(label_where, parsed)
            continue
        if label_path is not None and not len(parsed[1]):
            record.fix(label_where, "empty label file: read as an image without objects (YOLO convention)")
        checked = clean_boxes(parsed[0], parsed[1], size)
        if checked.error:
            record.skip(label_where, checked.error)
            continue
        for what in checked.fixes:
            record.fix(label_where, what)
        extra: dict[str, Any] = {}
        roboflow = ROBOFLOW_NAME.match(stem)
        original = roboflow.group("original") if roboflow else stem
        if roboflow:
            extra["original_name"] = original
        if context.check_species:
            _species_note(record, original, checked.labels, label_where, extra)
        samples.append(
            Sample(
                image=FileImage(image),
                task=Task.DETECTION,
                dataset=context.dataset,
                sample_id=where,
                split=split.split,
                disease=context.disease,
                boxes=checked.boxes,
                box_labels=checked.labels,
                image_size=size,
                source_path=image,
                extra=extra,
            )
        )
    return samples


def _species_note(
    record: ReadReport, original: str, labels: np.ndarray, where: str, extra: dict[str, Any]
) -> None:
    """Record the slide id (Roboflow split per image, not per slide) and name/label species conflicts."""
    slide, species = species_from_name(original)
    if slide:
        extra["slide"] = slide
    extra["name_species"] = species
    boxed = sorted({DETECTION_CLASSES[i] for i in labels.tolist()})
    if species is not None and boxed and boxed != [species]:
        extra["species_disagreement"] = True
        record.fix(
            where, f"file name says {species} but the boxes are {', '.join(boxed)}: kept the box labels"
        )


def _parse_label_file(
    path: Path, size: tuple[int, int], class_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray] | str:
    """Pixel xyxy boxes and vocabulary labels, or the reason the file cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return f"unreadable label file ({err})"
    height, width = size
    boxes, labels = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != FIELDS_PER_LINE:
            return f"line {lineno}: expected {FIELDS_PER_LINE} fields 'class cx cy w h', got {len(fields)}: {line.strip()!r}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            return f"line {lineno}: not a number in {line.strip()!r}"
        cls = values[0]
        if not math.isfinite(cls) or cls != int(cls) or not 0 <= int(cls) < len(class_ids):
            return f"line {lineno}: class id {fields[0]} is not one of 0..{len(class_ids) - 1}"
        if not all(math.isfinite(v) for v in values[1:]):
            return f"line {lineno}: a coordinate is not a finite number in {line.strip()!r}"
        cx, cy, w, h = values[1:]
        if w < 0 or h < 0:
            return f"line {lineno}: negative width or height in {line.strip()!r}"
        boxes.append(
            [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        )
        labels.append(class_ids[int(cls)])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64)
