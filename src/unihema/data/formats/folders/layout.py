"""Which class-folder layout a folder holds (:func:`detect_layout`), and what the layout readers share:
the read context, the scan of one image folder and the byte-identical file check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from unihema.data.formats._common import (
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    ReadContext,
    ReadReport,
    check_image,
    identical_groups,
    is_hidden,
    visible_dirs,
)
from unihema.data.schema import Task
from unihema.data.vocab import CELL_CLASSES, cell_index

# Folders that mark another format's layout; a folder of them is never a class folder.
_ANNOTATION_SUFFIXES = frozenset({".xml", ".txt", ".json", ".yaml"})
_NOT_CLASS_FOLDERS = frozenset(
    {"images", "image", "masks", "mask", "labels", "label", "annotations", "jpegimages", "imagesets",
     "segmentationclass", "groundtruth", "gt"}
)  # fmt: skip

# Wrapper folders of known datasets -> registry name of the dataset.
_KNOWN_WRAPPERS: dict[str, str] = {"PBC_dataset_normal_DIB": "pbc", "BCCD_cropped": "bccd_wbc_crops"}


# ------------------------------------------------------------------------------------ layout detection


@dataclass(frozen=True)
class Layout:
    """Where a class-folder dataset keeps its images.

    Attributes:
        kind: ``"imagefolder"``, ``"sickle_fields"`` or ``"paired_masks"``.
        base: the folder holding the class (or split, or Positive/Negative, or originais) folders.
        dataset: registry name inferred from the layout (the root's name when unknown).
        splits: for ``imagefolder``, split folder name -> split (empty when there are no split folders).
    """

    kind: str
    base: Path
    dataset: str
    splits: Mapping[str, str] = field(default_factory=dict)


def _first_files(folder: Path, limit: int = 20) -> list[Path]:
    """A few files of ``folder`` (enough to see whether annotation files sit next to the images)."""
    out: list[Path] = []
    for path in folder.iterdir():
        if path.is_file():
            out.append(path)
            if len(out) >= limit:
                break
    return out


def _mostly_annotations(folder: Path) -> bool:
    """True when at least half of the first files of ``folder`` are annotation files (.xml, .txt ...)."""
    files = _first_files(folder)
    return bool(files) and 2 * sum(p.suffix.lower() in _ANNOTATION_SUFFIXES for p in files) >= len(files)


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") for p in folder.iterdir())


def resolve_class(folder: str, class_map: Mapping[str, str]) -> str | None:
    """The single-cell vocabulary class a folder name stands for (``class_map`` renames first), or ``None``."""
    try:
        return CELL_CLASSES[cell_index(class_map.get(folder, folder))]
    except KeyError:
        return None


def _class_folder_base(folder: Path, class_map: Mapping[str, str]) -> tuple[Path, dict[str, str]] | None:
    """``(base, splits)`` when ``folder`` holds class folders (possibly under split folders)."""
    subdirs = visible_dirs(folder)
    if not subdirs:
        return None
    if all(d.name.lower() in SPLIT_NAMES for d in subdirs):
        if all(_class_folders(d, class_map) for d in subdirs):
            return folder, {d.name: SPLIT_NAMES[d.name.lower()] for d in subdirs}
        return None
    if _class_folders(folder, class_map):
        return folder, {}
    return None


def _class_folders(folder: Path, class_map: Mapping[str, str]) -> list[Path]:
    """The subfolders of ``folder`` that hold images, when there are at least two, none is the
    ``images/``, ``masks/`` ... folder of another format and at least half are named after a class
    (vocabulary name, alias or ``class_map`` key): ``Dataset 1/``, ``Dataset 2/`` are not classes."""
    subdirs = visible_dirs(folder)
    if any(d.name.lower() in _NOT_CLASS_FOLDERS for d in subdirs):
        return []
    if any(_mostly_annotations(d) for d in subdirs):  # images paired with annotation files: not classes
        return []
    with_images = [d for d in subdirs if _has_images(d)]
    named = sum(resolve_class(d.name, class_map) is not None for d in with_images)
    return with_images if len(with_images) >= 2 and 2 * named >= len(with_images) else []


def detect_layout(root: Path, class_map: Mapping[str, str] | None = None) -> Layout | None:
    """The class-folder layout of ``root``, or ``None`` when it is not one (cheap: directory listings).

    ``class_map`` (folder name -> vocabulary class) lets folders with other names count as classes.
    """
    class_map = class_map or {}
    root = Path(root)
    if not root.is_dir():
        return None
    # erythrocytesIDB: originais/ + segmentadas/ (optionally under 5-fold/)
    for base in (root, root / "5-fold"):
        if (base / "originais").is_dir() and (base / "segmentadas").is_dir():
            return Layout("paired_masks", base, "erythrocytesidb1")
    # Uganda sickle fields: Positive/{Labelled,Unlabelled} + Negative/
    for base in (root, root / "Datasets"):
        positive = base / "Positive"
        if (positive / "Unlabelled").is_dir() and (base / "Negative").is_dir():
            return Layout("sickle_fields", base, "sickle_uganda")
    found = _class_folder_base(root, class_map)
    if found is not None:
        return Layout("imagefolder", found[0], root.name, found[1])
    subdirs = visible_dirs(root)
    candidates = [d for d in subdirs if d.name in _KNOWN_WRAPPERS] or (subdirs if len(subdirs) == 1 else [])
    for wrapper in candidates:
        found = _class_folder_base(wrapper, class_map)
        if found is not None:
            return Layout("imagefolder", found[0], _KNOWN_WRAPPERS.get(wrapper.name, root.name), found[1])
    return None


# ------------------------------------------------------------------------------------ shared by the layouts


@dataclass(frozen=True, kw_only=True)
class FolderContext(ReadContext):
    """The shared read context plus the layout and the class-folder reader's options.

    Attributes:
        layout: the layout found by :func:`detect_layout`.
        use_subtypes: use the sub-type a PBC file-name prefix names as the class (``imagefolder``).
        tasks: which samples to build (``paired_masks``: classification and/or segmentation).
        fold: which ``round_<k>`` folder to read (``paired_masks``; ``None``: the first).
    """

    layout: Layout
    use_subtypes: bool = False
    tasks: tuple[Task, ...] = (Task.CLASSIFICATION, Task.SEGMENTATION)
    fold: str | None = None


@dataclass(frozen=True)
class ImageEntry:
    """One readable image of a class folder.

    Attributes:
        path: the image file.
        label: its vocabulary class name.
        folder_label: the folder name it was labelled by (``extra["folder"]``).
        split: the split its folders name, or ``None``.
        size: ``(height, width)``.
    """

    path: Path
    label: str
    folder_label: str
    split: str | None
    size: tuple[int, int]


def scan_images(context: ReadContext, folder: Path) -> list[tuple[Path, tuple[int, int]]]:
    """The readable images directly in ``folder`` with their sizes; everything else is skipped with a reason."""
    record = context.record
    found: list[tuple[Path, tuple[int, int]]] = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            continue
        if is_hidden(path):
            record.skip(path, "hidden or system file (e.g. a macOS .DS_Store), not an image", warn=False)
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            record.skip(path, f"not an image file (suffix {path.suffix or 'none'!r})")
            continue
        size, reason = check_image(path, context.verify)
        if size is None:
            record.skip(path, reason or "unreadable image")
            continue
        found.append((path, size))
    return found


def drop_identical(entries: list[ImageEntry], record: ReadReport) -> list[ImageEntry]:
    """Keep one of each group of byte-identical files with one label; skip groups with several labels."""
    by_path = {e.path: e for e in entries}
    drop: set[Path] = set()
    for group in identical_groups(by_path):
        labels = {by_path[p].label for p in group}
        keep = group[0]
        if len(labels) == 1:
            for path in group[1:]:
                drop.add(path)
                record.fix(path, f"byte-identical to {record.relative(keep)}; loaded once")
        else:
            for path in group:
                drop.add(path)
                others = ", ".join(record.relative(p) for p in group if p != path)
                record.skip(path, f"byte-identical to {others} but labelled differently ({sorted(labels)})")
    return [e for e in entries if e.path not in drop]
