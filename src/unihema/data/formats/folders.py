"""Class-folder datasets: the label of an image is the name of the folder it sits in.

Three layouts are recognised (:func:`detect_layout`):

``imagefolder``
    ``<root>[/<wrapper>][/<split>]/<class>/<image>``, the torchvision ``ImageFolder`` layout, optionally
    under one wrapper folder (``PBC_dataset_normal_DIB/``, ``BCCD_cropped/``) and split folders
    (``train/``, ``val/``, ``test/``). Used for PBC and the BCCD WBC crops. Folder names are looked up
    in the single-cell vocabulary (aliases such as ``ig`` -> ``immature granulocyte`` apply).
``sickle_fields``
    ``[Datasets/]Positive/{Labelled,Unlabelled}/<n>.jpg`` and ``Negative/Clear/<n>.jpg`` (the Uganda
    sickle-cell fields): whole fields of view labelled ``sickle-positive field`` / ``sickle-negative
    field``. ``Labelled`` copies carry boxes drawn on the pixels, so only the ``Unlabelled`` copy of each
    field is loaded; a ``Labelled`` copy is recorded as fixed on purpose, and an ``Unlabelled`` copy that
    is byte-identical to its ``Labelled`` one (it carries the drawn boxes too) is skipped.
``paired_masks``
    ``[5-fold/]originais/<round>/<split>/<class>/<stem>.jpg`` with a parallel
    ``segmentadas/<round>/<split>/<class>/<stem>.tif`` mask tree (erythrocytesIDB1 individual cells).
    Images give classification samples; image + mask give segmentation samples. Images and masks are
    paired by class and stem, *not* by split folder (the two trees disagree for some stems; the image's
    split is used and the disagreement is recorded as fixed).

Quirks handled in every layout: hidden files (``.DS_Store`` saved as ``.DS_<n>.jpg``) and non-image files
are skipped with a reason; files that do not open as images are skipped naming the file (with
``verify_images=True`` every image is fully decoded, which also catches truncated files); byte-identical
files within one class are kept once (recorded as fixed), byte-identical files with different labels are
both skipped. PBC file-name prefixes (``MY_``, ``BNE_``...) are kept in ``extra["prefix"]`` with the
sub-type they stand for in ``extra["subtype"]``; ``use_subtypes=True`` makes the sub-type the class.
"""

from __future__ import annotations

import csv
import hashlib
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from unihema.data.formats._readutil import (
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    ReaderWarning,
    check_image,
    describe_folder,
    rel,
)
from unihema.data.formats.base import WrongFormatError, register_reader
from unihema.data.schema import FileImage, FileMask, Fixed, ReadResult, Sample, Skipped, Task
from unihema.data.vocab import CELL_CLASSES, cell_index

# Folders that mark another format's layout; a folder of them is never a class folder.
_ANNOTATION_SUFFIXES = frozenset({".xml", ".txt", ".json", ".yaml"})
_NOT_CLASS_FOLDERS = frozenset(
    {"images", "image", "masks", "mask", "labels", "label", "annotations", "jpegimages", "imagesets",
     "segmentationclass", "groundtruth", "gt"}
)  # fmt: skip

# Wrapper folders of known datasets -> registry name of the dataset.
_KNOWN_WRAPPERS: dict[str, str] = {"PBC_dataset_normal_DIB": "pbc", "BCCD_cropped": "bccd_wbc_crops"}

DATASET_DISEASE: dict[str, str] = {
    "bccd_wbc_crops": "healthy",  # crops of the normal BCCD smears
    "pbc": "healthy",  # PBC comes from individuals without infection, haematological or oncological disease
    "sickle_uganda": "sickle cell disease",
    "erythrocytesidb1": "sickle cell disease",
}
"""Disease context of the datasets read here (``None`` when the source does not say)."""

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

SICKLE_POSITIVE = "sickle-positive field"
SICKLE_NEGATIVE = "sickle-negative field"

# Largest number of individual warnings before they are summarised in one.
_MAX_INDIVIDUAL_WARNINGS = 5


# ------------------------------------------------------------------------------------ shared helpers


def file_digest(path: Path) -> str:
    """SHA-1 of a file's bytes (used only to find byte-identical copies)."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identical_groups(paths: Iterable[Path]) -> list[list[Path]]:
    """Groups (2 or more) of byte-identical files; only files of equal size are hashed."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path in paths:
        by_size[path.stat().st_size].append(path)
    groups: list[list[Path]] = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_digest: dict[str, list[Path]] = defaultdict(list)
        for path in same_size:
            by_digest[file_digest(path)].append(path)
        groups.extend(sorted(g) for g in by_digest.values() if len(g) > 1)
    return sorted(groups)


@dataclass
class ReadReport:
    """Collects what a reader skipped or fixed, and turns it into a few readable warnings.

    ``skip(..., group=...)`` items of one group are announced by a single warning with their count (for
    known, expected gaps such as a partially staged image folder); other skipped items get one warning
    each, up to a handful, then one summary.
    """

    dataset: str
    skipped: list[Skipped] = field(default_factory=list)
    fixed: list[Fixed] = field(default_factory=list)
    _groups: dict[str, list[Skipped]] = field(default_factory=dict)
    _loose: list[Skipped] = field(default_factory=list)

    def skip(self, path: str, reason: str, *, group: str | None = None, warn: bool = True) -> None:
        item = Skipped(path, reason)
        self.skipped.append(item)
        if group is not None:
            self._groups.setdefault(group, []).append(item)
        elif warn:
            self._loose.append(item)

    def fix(self, path: str, what: str) -> None:
        self.fixed.append(Fixed(path, what))

    def emit_warnings(self) -> None:
        for group, items in self._groups.items():
            warnings.warn(
                f"{self.dataset}: skipped {len(items)} {group} (first: {items[0].path}); "
                "see ReadResult.skipped for every item",
                ReaderWarning,
                stacklevel=3,
            )
        for item in self._loose[:_MAX_INDIVIDUAL_WARNINGS]:
            warnings.warn(f"{self.dataset}: skipped {item.path}: {item.reason}", ReaderWarning, stacklevel=3)
        rest = len(self._loose) - _MAX_INDIVIDUAL_WARNINGS
        if rest > 0:
            warnings.warn(
                f"{self.dataset}: skipped {rest} more items; see ReadResult.skipped for every item",
                ReaderWarning,
                stacklevel=3,
            )


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (the absolute path when it is not under ``root``)."""
    return rel(path, root)


def parse_tasks(
    tasks: str | Task | Sequence[str | Task], allowed: Sequence[Task], reader: str
) -> tuple[Task, ...]:
    """Validate a ``tasks=`` option: a task or a sequence of tasks among ``allowed``."""
    items = [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
    out: list[Task] = []
    for item in items:
        try:
            task = Task(item)
        except ValueError:
            raise ValueError(
                f"{reader}: unknown task {item!r}; expected one of {[t.value for t in allowed]}"
            ) from None
        if task not in allowed:
            raise ValueError(
                f"{reader}: task {task.value!r} not available; expected one of {[t.value for t in allowed]}"
            )
        if task not in out:
            out.append(task)
    if not out:
        raise ValueError(f"{reader}: tasks must name at least one of {[t.value for t in allowed]}")
    return tuple(out)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


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


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in ("Thumbs.db", "desktop.ini")


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


def _class_folder_base(folder: Path, class_map: Mapping[str, str]) -> tuple[Path, dict[str, str]] | None:
    """``(base, splits)`` when ``folder`` holds class folders (possibly under split folders)."""
    subdirs = _visible_dirs(folder)
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
    subdirs = _visible_dirs(folder)
    if any(d.name.lower() in _NOT_CLASS_FOLDERS for d in subdirs):
        return []
    if any(_mostly_annotations(d) for d in subdirs):  # images paired with annotation files: not classes
        return []
    with_images = [d for d in subdirs if _has_images(d)]
    named = sum(_resolve_class(d.name, class_map) is not None for d in with_images)
    return with_images if len(with_images) >= 2 and 2 * named >= len(with_images) else []


def _find_child(folder: Path, name: str) -> Path | None:
    candidate = folder / name
    return candidate if candidate.is_dir() else None


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
    subdirs = _visible_dirs(root)
    candidates = [d for d in subdirs if d.name in _KNOWN_WRAPPERS] or (subdirs if len(subdirs) == 1 else [])
    for wrapper in candidates:
        found = _class_folder_base(wrapper, class_map)
        if found is not None:
            return Layout("imagefolder", found[0], _KNOWN_WRAPPERS.get(wrapper.name, root.name), found[1])
    return None


# ------------------------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class _Entry:
    path: Path
    label: str  # vocabulary name
    folder_label: str
    split: str | None
    size: tuple[int, int]


@register_reader
class ClassFolderReader:
    """Reads the class-folder layouts described in the module docstring.

    Options of :meth:`read`:
        verify_images (bool, default False): decode every image (and mask) instead of reading headers.
        class_map (mapping, optional): folder name -> vocabulary class name, for folders whose names
            are not vocabulary names or aliases.
        use_subtypes (bool, default False): for PBC-style ``<PREFIX>_<id>`` names, use the sub-type the
            prefix names (``MY`` -> myelocyte, ``BNE`` -> band neutrophil) as the class when it has one.
        tasks (task or list, ``paired_masks`` layout only, default both): ``"classification"`` and/or
            ``"segmentation"``.
        fold (str, ``paired_masks`` only): which ``round_<k>`` folder to read (default: the first).
        disease (str, optional): overrides the disease context of :data:`DATASET_DISEASE`.
    """

    name: ClassVar[str] = "folders"
    description: ClassVar[str] = (
        "class folders: <class>/<image> (optionally under split folders), sickle positive/negative "
        "fields, or erythrocytesIDB images with a parallel mask tree"
    )
    priority: ClassVar[int] = 90  # generic: tried after every specific format

    def sniff(self, root: Path) -> bool:
        try:
            return detect_layout(Path(root)) is not None
        except OSError:
            return False

    def read(self, root: Path, dataset: str | None = None, **options: Any) -> ReadResult:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a directory")
        layout = detect_layout(root, options.get("class_map"))
        if layout is None:
            raise WrongFormatError(
                f"{root}: expected class folders (<class>/<image>, at least two with images), sickle "
                f"Positive/Negative fields or originais/segmentadas trees, found {describe_folder(root)}"
            )
        known = {"verify_images", "class_map", "use_subtypes", "tasks", "fold", "disease"}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"folders reader: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        name = dataset or layout.dataset
        report = ReadReport(name)
        disease = options.get("disease", DATASET_DISEASE.get(name))
        verify = bool(options.get("verify_images", False))
        if layout.kind == "paired_masks":
            tasks = parse_tasks(
                options.get("tasks", (Task.CLASSIFICATION, Task.SEGMENTATION)),
                (Task.CLASSIFICATION, Task.SEGMENTATION),
                "folders",
            )
            samples = _read_paired_masks(
                root, layout, name, report, verify, tasks, options.get("fold"), disease
            )
        elif layout.kind == "sickle_fields":
            samples = _read_sickle_fields(root, layout, name, report, verify, disease)
        else:
            samples = _read_imagefolder(
                root, layout, name, report, verify, options.get("class_map") or {},
                bool(options.get("use_subtypes", False)), disease,
            )  # fmt: skip
        report.emit_warnings()
        classes = sorted({CELL_CLASSES[s.cell_class] for s in samples if s.cell_class is not None})
        return ReadResult(name, self.name, samples, report.skipped, report.fixed, tuple(classes))


def _resolve_class(folder: str, class_map: Mapping[str, str]) -> str | None:
    try:
        return CELL_CLASSES[cell_index(class_map.get(folder, folder))]
    except KeyError:
        return None


def _scan_images(
    folder: Path, root: Path, report: ReadReport, verify: bool
) -> list[tuple[Path, tuple[int, int]]]:
    """The readable images directly in ``folder``; everything else is skipped with a reason."""
    found: list[tuple[Path, tuple[int, int]]] = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            continue
        rel = relative(path, root)
        if _is_hidden(path):
            report.skip(rel, "hidden or system file (e.g. a macOS .DS_Store), not an image", warn=False)
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            report.skip(rel, f"not an image file (suffix {path.suffix or 'none'!r})")
            continue
        size, reason = check_image(path, verify)
        if size is None:
            report.skip(rel, reason or "unreadable image")
            continue
        found.append((path, size))
    return found


def _drop_identical(entries: list[_Entry], root: Path, report: ReadReport) -> list[_Entry]:
    """Keep one of each group of byte-identical files with one label; skip groups with several labels."""
    by_path = {e.path: e for e in entries}
    drop: set[Path] = set()
    for group in identical_groups(by_path):
        labels = {by_path[p].label for p in group}
        keep = group[0]
        if len(labels) == 1:
            for path in group[1:]:
                drop.add(path)
                report.fix(relative(path, root), f"byte-identical to {relative(keep, root)}; loaded once")
        else:
            for path in group:
                drop.add(path)
                others = ", ".join(relative(p, root) for p in group if p != path)
                report.skip(
                    relative(path, root),
                    f"byte-identical to {others} but labelled differently ({sorted(labels)})",
                )
    return [e for e in entries if e.path not in drop]


def prefix_info(stem: str) -> dict[str, Any]:
    """``{"prefix": "MY", "subtype": "myelocyte"}`` for a PBC-style ``<PREFIX>_<digits>`` stem, else ``{}``."""
    match = _PREFIX_RE.match(stem)
    if match is None or match.group(1) not in PBC_PREFIX_SUBTYPES:
        return {}
    prefix = match.group(1)
    return {"prefix": prefix, "subtype": PBC_PREFIX_SUBTYPES[prefix]}


def _read_imagefolder(
    root: Path,
    layout: Layout,
    dataset: str,
    report: ReadReport,
    verify: bool,
    class_map: Mapping[str, str],
    use_subtypes: bool,
    disease: str | None,
) -> list[Sample]:
    split_dirs = [(layout.base / d, s) for d, s in layout.splits.items()] or [(layout.base, None)]
    entries: list[_Entry] = []
    for split_dir, split in split_dirs:
        for class_dir in _visible_dirs(split_dir):
            label = _resolve_class(class_dir.name, class_map)
            if label is None:
                report.skip(
                    relative(class_dir, root),
                    f"class folder {class_dir.name!r} is not a single-cell vocabulary class or alias "
                    "(pass class_map= or add an alias to unihema.data.vocab)",
                )
                continue
            for path, size in _scan_images(class_dir, root, report, verify):
                entries.append(_Entry(path, label, class_dir.name, split, size))
    if not entries:
        raise WrongFormatError(
            f"{layout.base}: class folders found, but none holds a loadable image of a known class"
        )
    entries = _drop_identical(entries, root, report)
    _cross_check_bccd_labels(root, layout, entries, report)

    samples: list[Sample] = []
    for entry in entries:
        extra: dict[str, Any] = {"folder": entry.folder_label, **prefix_info(entry.path.stem)}
        label = entry.label
        if use_subtypes and extra.get("subtype"):
            label = extra["subtype"]
        samples.append(
            Sample(
                image=FileImage(entry.path),
                task=Task.CLASSIFICATION,
                dataset=dataset,
                sample_id=relative(entry.path, root),
                split=entry.split,
                disease=disease,
                cell_class=cell_index(label),
                image_size=entry.size,
                source_path=entry.path,
                extra=extra,
            )
        )
    return samples


def _cross_check_bccd_labels(root: Path, layout: Layout, entries: list[_Entry], report: ReadReport) -> None:
    """Compare folder labels with the raw Kaggle ``labels.csv`` next to ``BCCD_cropped/``.

    ``labels.csv`` has a leading unnamed column, CRLF line ends, empty and multi-label categories; the
    folders are the cleaned single labels, so they win. A crop whose folder label is not among the
    csv's categories for its source image is recorded as fixed (folder label kept) and warned about.
    """
    csv_path = next(
        (p for p in (layout.base.parent / "labels.csv", root / "labels.csv") if p.is_file()), None
    )
    if csv_path is None:
        return
    categories: dict[int, list[str]] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip().lower() for c in rows[0][1:3]] != ["image", "category"]:
        report.skip(
            relative(csv_path, root), "labels.csv without the ',Image,Category' header; not cross-checked"
        )
        return
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 3 or not row[1].strip().isdigit():
            report.skip(f"{relative(csv_path, root)}:{line}", f"malformed labels.csv row {row!r}")
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
            report.fix(
                relative(entry.path, root),
                f"labels.csv lists {listed} for image {int(match.group(1))}; the folder label "
                f"{entry.folder_label!r} is used",
            )
    if disagreements:
        warnings.warn(
            f"{report.dataset}: {disagreements} crops disagree with {csv_path.name}; folder labels kept "
            "(see ReadResult.fixed)",
            ReaderWarning,
            stacklevel=4,
        )


def _read_sickle_fields(
    root: Path, layout: Layout, dataset: str, report: ReadReport, verify: bool, disease: str | None
) -> list[Sample]:
    base = layout.base
    unlabelled_dir, labelled_dir = base / "Positive" / "Unlabelled", base / "Positive" / "Labelled"
    positives = _scan_images(unlabelled_dir, root, report, verify)
    labelled = {p.name: p for p in sorted(labelled_dir.iterdir())} if labelled_dir.is_dir() else {}
    clean_names = {p.name for p, _ in positives}

    entries: list[_Entry] = []
    for path, size in positives:
        boxed = labelled.get(path.name)
        if (
            boxed is not None
            and boxed.stat().st_size == path.stat().st_size
            and file_digest(boxed) == file_digest(path)
        ):
            report.skip(
                relative(path, root),
                f"byte-identical to {relative(boxed, root)}: this 'Unlabelled' copy carries the drawn boxes too",
            )
            continue
        entries.append(_Entry(path, SICKLE_POSITIVE, "Positive/Unlabelled", None, size))
    for name, path in labelled.items():
        rel = relative(path, root)
        if _is_hidden(path) or path.suffix.lower() not in IMAGE_EXTENSIONS:
            report.skip(rel, "not an image file", warn=not _is_hidden(path))
        elif name in clean_names:
            report.fix(
                rel,
                f"boxes are drawn on the pixels; the clean copy Positive/Unlabelled/{name} is used instead",
            )
        else:
            report.skip(rel, "boxes are drawn on the pixels and there is no clean Positive/Unlabelled copy")

    negative_dir = base / "Negative"
    for sub in _visible_dirs(negative_dir):
        if sub.name.lower() != "clear":
            report.skip(
                relative(sub, root), "negative fields not marked 'Clear' (poor quality) are not loaded"
            )
            continue
        entries.extend(
            _Entry(p, SICKLE_NEGATIVE, "Negative/Clear", None, s)
            for p, s in _scan_images(sub, root, report, verify)
        )
    if not entries:
        raise WrongFormatError(f"{base}: sickle field folders found, but no loadable image in them")
    entries = _drop_identical(entries, root, report)
    return [
        Sample(
            image=FileImage(e.path),
            task=Task.CLASSIFICATION,
            dataset=dataset,
            sample_id=relative(e.path, root),
            disease=disease,
            cell_class=cell_index(e.label),
            image_size=e.size,
            source_path=e.path,
            extra={"folder": e.folder_label},
        )
        for e in entries
    ]


def _round_dir(tree: Path, fold: str | None) -> Path:
    if fold is not None:
        chosen = tree / fold
        if not chosen.is_dir():
            rounds = [d.name for d in _visible_dirs(tree)]
            raise ValueError(f"folders reader: fold {fold!r} not found under {tree} (found {rounds})")
        return chosen
    rounds = [d for d in _visible_dirs(tree) if d.name.lower().startswith(("round", "fold"))]
    return rounds[0] if rounds else tree


def _split_class_files(tree: Path) -> Iterable[tuple[str | None, Path]]:
    """``(split, class_dir)`` for ``<split>/<class>/`` (or ``<class>/`` without split folders)."""
    for sub in _visible_dirs(tree):
        if sub.name.lower() in SPLIT_NAMES:
            for class_dir in _visible_dirs(sub):
                yield SPLIT_NAMES[sub.name.lower()], class_dir
        else:
            yield None, sub


def _read_paired_masks(
    root: Path,
    layout: Layout,
    dataset: str,
    report: ReadReport,
    verify: bool,
    tasks: tuple[Task, ...],
    fold: str | None,
    disease: str | None,
) -> list[Sample]:
    image_tree = _round_dir(layout.base / "originais", fold)
    mask_tree = layout.base / "segmentadas" / image_tree.relative_to(layout.base / "originais")
    if not mask_tree.is_dir():
        raise ValueError(f"folders reader: mask folder {mask_tree} for {image_tree} is missing")

    # Masks indexed by (class folder, stem): the trees' split folders disagree for some stems.
    masks: dict[tuple[str, str], list[tuple[str | None, Path]]] = defaultdict(list)
    for split, class_dir in _split_class_files(mask_tree):
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and not _is_hidden(path) and path.suffix.lower() in IMAGE_EXTENSIONS:
                masks[(class_dir.name, path.stem)].append((split, path))
            elif path.is_file():
                report.skip(relative(path, root), "not a mask image", warn=not _is_hidden(path))

    entries: list[_Entry] = []
    for split, class_dir in _split_class_files(image_tree):
        label = _resolve_class(class_dir.name, {})
        if label is None:
            report.skip(
                relative(class_dir, root),
                f"class folder {class_dir.name!r} is not a vocabulary class or alias",
            )
            continue
        entries.extend(
            _Entry(p, label, class_dir.name, split, s)
            for p, s in _scan_images(class_dir, root, report, verify)
        )
    if not entries:
        raise WrongFormatError(f"{image_tree}: no loadable image in the class folders")
    entries = _drop_identical(entries, root, report)

    samples: list[Sample] = []
    used_masks: list[Path] = []
    for entry in entries:
        rel = relative(entry.path, root)
        common: dict[str, Any] = dict(
            image=FileImage(entry.path), dataset=dataset, split=entry.split, disease=disease,
            image_size=entry.size, source_path=entry.path,
        )  # fmt: skip
        if Task.CLASSIFICATION in tasks:
            samples.append(
                Sample(task=Task.CLASSIFICATION, sample_id=rel, cell_class=cell_index(entry.label),
                       extra={"folder": entry.folder_label}, **common)
            )  # fmt: skip
        candidates = masks.pop((entry.folder_label, entry.path.stem), [])
        if not candidates:
            report.skip(
                f"{rel}#mask",
                f"no mask {entry.folder_label}/{entry.path.stem}.* under {relative(mask_tree, root)}; "
                "no segmentation sample for this image",
            )
            continue
        same_split = [c for c in candidates if c[0] == entry.split]
        if len(candidates) > 1 and len(same_split) != 1:
            names = ", ".join(relative(p, root) for _, p in candidates)
            report.skip(f"{rel}#mask", f"several masks for {entry.folder_label}/{entry.path.stem}: {names}")
            continue
        mask_split, mask_path = same_split[0] if same_split else candidates[0]
        mask_rel = relative(mask_path, root)
        if mask_split != entry.split:
            report.fix(
                mask_rel,
                f"mask is under the {mask_split!r} split folder but its image {rel} under {entry.split!r}; "
                "paired by class and stem, the image's split is used",
            )
        mask_size, reason = check_image(mask_path, verify)
        if mask_size is None:
            report.skip(mask_rel, reason or "unreadable mask")
            continue
        if mask_size != entry.size:
            report.skip(mask_rel, f"mask size {mask_size} differs from image size {entry.size} of {rel}")
            continue
        used_masks.append(mask_path)
        if Task.SEGMENTATION in tasks:
            samples.append(
                Sample(task=Task.SEGMENTATION, sample_id=f"{rel}#mask",
                       mask=FileMask(mask_path, threshold=128),
                       extra={"folder": entry.folder_label, "mask_path": mask_rel}, **common)
            )  # fmt: skip
    for (class_name, stem), leftovers in sorted(masks.items()):
        for _, path in leftovers:
            report.skip(
                relative(path, root),
                f"mask without an image {class_name}/{stem}.* under {relative(image_tree, root)}",
            )
    for group in identical_groups(used_masks):
        for path in group[1:]:
            report.fix(
                relative(path, root),
                f"kept: byte-identical to mask {relative(group[0], root)} although the images differ",
            )
    return samples
