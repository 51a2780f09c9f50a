"""Helpers shared by every reader: the skip/fix record, the read context, option errors, split names,
folder and image scanning, byte-identical files, box clean-up.

Every reader collects what it skipped or fixed in one :class:`ReadReport` (each item named relative to
the dataset root, with the reason) and hands its helpers one :class:`ReadContext`. A reader that refuses
the value of one of its options raises :class:`OptionError`, so that the caller can say where the value
came from (a dataset descriptor file, ``--option`` on the command line).

Policy for boxes (the same in every reader):

- a box partly outside the image is clipped to the image (recorded as :class:`~unihema.data.schema.Fixed`);
- a box with zero area, before or after clipping (including a box wholly outside the image), is dropped
  (``Fixed``): it cannot supervise anything visible;
- a box with inverted or non-finite coordinates is ambiguous: the whole annotation file is skipped
  (:class:`~unihema.data.schema.Skipped`), because dropping one box would teach that object as background.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from unihema.data.schema import (
    IMAGE_ERRORS,
    Fixed,
    ReadResult,
    Sample,
    Skipped,
    Task,
    image_error_reason,
    printable_name,
)
from unihema.data.vocab import CELL_CLASSES, DETECTION_CLASSES

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

SPLIT_NAMES: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
"""Folder / file-name spellings of a split -> the canonical split name used in :class:`Sample`."""

DATASET_DISEASE: dict[str, str] = {
    # Normal peripheral blood smears (no disease is named by these sources).
    "bccd": "healthy",
    "txl_pbc": "healthy",
    "segmentation_wbc": "healthy",
    "bccd_nucleus_masks": "healthy",
    "bccd_wbc_crops": "healthy",  # crops of the normal BCCD smears
    "pbc": "healthy",  # PBC comes from individuals without infection, haematological or oncological disease
    # Thick-smear malaria parasite detection.
    "fiocruz_malaria_thick": "malaria",
    "sickle_uganda": "sickle cell disease",
    "erythrocytesidb1": "sickle cell disease",
}
"""Default disease context of the staged datasets (absent: the source does not say); readers take a
``disease=`` option to override it."""

ROUNDING_TOLERANCE_PX = 0.5
"""A box edge at most this far outside the image is rounding of normalised coordinates: clipped silently."""

MAX_SEARCH_DEPTH = 2
"""How many folder levels below the given root a reader looks for its layout (``bccd/BCCD/Annotations``)."""

MAX_INDIVIDUAL_WARNINGS = 5
"""Largest number of individual skip warnings :meth:`ReadReport.emit_warnings` gives before summarising."""


class ReaderWarning(UserWarning):
    """Warning emitted for every item a reader skipped (and for fixes that change what a file means)."""


class OptionError(ValueError):
    """A reader option has a value the reader cannot use.

    Attributes:
        option: the option's name (``"colour_map"``); the message says what is wrong with its value.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


# ------------------------------------------------------------------------------ names and splits


def dataset_name(root: Path, dataset: str | None) -> str:
    """The registry name of a dataset: ``dataset`` when given, else the root folder's name in lower case."""
    return dataset if dataset else printable_name(Path(root).resolve().name.lower())


def default_disease(dataset: str, disease: str | None) -> str | None:
    return disease if disease is not None else DATASET_DISEASE.get(dataset)


def canonical_split(name: str) -> str | None:
    """``"valid"`` -> ``"val"``; ``None`` for a name that is not a split."""
    return SPLIT_NAMES.get(name.strip().lower())


def split_from_name(name: str) -> str | None:
    """Split named by a file name such as ``instances_val2017.json`` or ``test.json`` (letters-only tokens)."""
    found = {canonical_split(tok) for tok in re.split(r"[^a-z]+", name.lower()) if canonical_split(tok)}
    return found.pop() if len(found) == 1 else None


def split_from_path(path: Path, root: Path) -> str | None:
    """Split named by a folder between ``root`` and ``path`` (``train/images``, ``Test Labels``), deepest
    first; ``None`` when no folder names one."""
    try:
        parts = Path(path).resolve().relative_to(Path(root).resolve()).parts
    except ValueError:
        return None
    return next((split for part in reversed(parts) if (split := split_from_name(part))), None)


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (posix), or the absolute path when it lies outside ``root``; a file
    name that is not UTF-8 shows its bytes as escapes (:func:`~unihema.data.schema.printable_name`)."""
    try:
        name = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        name = Path(path).resolve().as_posix()
    return printable_name(name)


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
            raise OptionError(
                "tasks", f"{reader}: unknown task {item!r}; expected one of {[t.value for t in allowed]}"
            ) from None
        if task not in allowed:
            raise OptionError(
                "tasks",
                f"{reader}: task {task.value!r} not available; expected one of {[t.value for t in allowed]}",
            )
        if task not in out:
            out.append(task)
    if not out:
        raise OptionError("tasks", f"{reader}: tasks must name at least one of {[t.value for t in allowed]}")
    return tuple(out)


def yaml_error_text(err: Exception) -> str:
    """A YAML parse error in one line: the problem and where (``expected ',' or ']' at line 2, column 6``)."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{err.problem or err.context}{where}"
    return " ".join(str(err).split())


def check_options(options: Mapping[str, object], known: Iterable[str], reader: str) -> None:
    """Raise ``TypeError`` naming the options of ``options`` that ``reader`` does not know."""
    unknown = set(options) - set(known)
    if unknown:
        raise TypeError(f"{reader} reader: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")


def cell_class_names(samples: Iterable[Sample]) -> list[str]:
    """The cell vocabulary names the samples are labelled with, sorted by name."""
    return sorted({CELL_CLASSES[s.cell_class] for s in samples if s.cell_class is not None})


# ------------------------------------------------------------------------------ skip/fix record


@dataclass
class ReadReport:
    """What one read skipped or fixed: each item named relative to the dataset root, with the reason.

    ``skip`` and ``fix`` take the item as a :class:`~pathlib.Path` (named relative to ``root``) or as a
    ready-made string (``"<csv>:<line>"``, ``"<file>#mask"``...), used as it is.

    Warnings: with ``warn_at_once`` every skipped item is warned about when it is skipped. Otherwise
    :meth:`emit_warnings` (called by :meth:`finish`) announces the items of one ``group`` by a single
    warning with their count (for known, expected gaps such as a partially staged image folder), and the
    other skipped items one warning each, up to :data:`MAX_INDIVIDUAL_WARNINGS`, then one summary.
    Fixed items are silent unless :meth:`fix` is told to warn (a repair that changes what a file means,
    such as mask colours read as background); those are announced at :meth:`finish` in the same way.

    Attributes:
        dataset: registry name of the dataset (starts every warning).
        root: the dataset root the items are named relative to.
        warn_at_once: warn about each skipped item at once instead of summarising at the end.
        skipped: every item not loaded, in the order skipped.
        fixed: every quirk repaired on purpose, in the order fixed.
    """

    dataset: str
    root: Path
    warn_at_once: bool = False
    skipped: list[Skipped] = field(default_factory=list)
    fixed: list[Fixed] = field(default_factory=list)
    _groups: dict[str, list[Skipped]] = field(default_factory=dict, repr=False)
    _loose: list[Skipped] = field(default_factory=list, repr=False)
    _fix_groups: dict[str, list[Fixed]] = field(default_factory=dict, repr=False)
    _noted: list[Fixed] = field(default_factory=list, repr=False)

    def relative(self, path: Path) -> str:
        """``path`` relative to :attr:`root` (see :func:`relative`)."""
        return relative(path, self.root)

    def _name(self, item: Path | str) -> str:
        return item if isinstance(item, str) else self.relative(item)

    def skip(self, item: Path | str, reason: str, *, group: str | None = None, warn: bool = True) -> None:
        """Record a skipped item; ``warn=False`` keeps it out of the warnings (hidden system files)."""
        skipped = Skipped(self._name(item), reason)
        self.skipped.append(skipped)
        if group is not None:
            self._groups.setdefault(group, []).append(skipped)
        elif warn and self.warn_at_once:
            # stacklevel 3: the reader function that called the helper which skipped the item.
            warnings.warn(self._message(skipped), ReaderWarning, stacklevel=3)
        elif warn:
            self._loose.append(skipped)

    def fix(self, item: Path | str, what: str, *, warn: bool = False, group: str | None = None) -> None:
        """Record a repaired item; ``warn`` announces it, ``group`` announces all of one group by one warning."""
        fixed = Fixed(self._name(item), what)
        self.fixed.append(fixed)
        if group is not None:
            self._fix_groups.setdefault(group, []).append(fixed)
        elif warn:
            self._noted.append(fixed)

    def _message(self, item: Skipped) -> str:
        return f"{self.dataset}: skipped {item.path}: {item.reason}"

    def emit_warnings(self, stacklevel: int = 3) -> None:
        """Warn about the collected groups and skipped items (``stacklevel`` 3: the caller's caller)."""
        for group, items in self._groups.items():
            warnings.warn(
                f"{self.dataset}: skipped {len(items)} {group} (first: {items[0].path}); "
                "see ReadResult.skipped for every item",
                ReaderWarning,
                stacklevel=stacklevel,
            )
        self._warn_each([self._message(item) for item in self._loose], "skipped", stacklevel + 1)
        for group, fixes in self._fix_groups.items():
            warnings.warn(
                f"{self.dataset}: {len(fixes)} {group} (first: {fixes[0].path}: {fixes[0].what}); "
                "see ReadResult.fixed for every item",
                ReaderWarning,
                stacklevel=stacklevel,
            )
        self._warn_each([f"{self.dataset}: {f.path}: {f.what}" for f in self._noted], "fixed", stacklevel + 1)

    def _warn_each(self, messages: list[str], kind: str, stacklevel: int) -> None:
        """One warning per message up to :data:`MAX_INDIVIDUAL_WARNINGS`, then one summary."""
        for message in messages[:MAX_INDIVIDUAL_WARNINGS]:
            warnings.warn(message, ReaderWarning, stacklevel=stacklevel)
        rest = len(messages) - MAX_INDIVIDUAL_WARNINGS
        if rest > 0:
            warnings.warn(
                f"{self.dataset}: {kind} {rest} more items; see ReadResult.{kind} for every item",
                ReaderWarning,
                stacklevel=stacklevel,
            )

    def finish(self, format: str, samples: list[Sample], annotated_classes: Iterable[str]) -> ReadResult:
        """Emit the collected warnings and return the reader's :class:`ReadResult`."""
        self.emit_warnings(stacklevel=4)  # the caller of the reader's ``read``
        return ReadResult(self.dataset, format, samples, self.skipped, self.fixed, tuple(annotated_classes))


@dataclass(frozen=True, kw_only=True)
class ReadContext:
    """What the helpers of one ``read`` call share (readers with more options extend it).

    Attributes:
        record: collects the skipped and fixed items; it also holds the dataset name and root.
        disease: disease context given to every sample.
        verify: decode every image (the ``verify_images`` option) instead of parsing its header only.
        class_map: dataset class name -> vocabulary class name, applied before alias lookup.
        split_of: image id (file stem) -> split, from split lists; empty when the layout has none.
    """

    record: ReadReport
    disease: str | None = None
    verify: bool = False
    class_map: Mapping[str, str] = field(default_factory=dict)
    split_of: Mapping[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.record.root

    @property
    def dataset(self) -> str:
        return self.record.dataset


# ------------------------------------------------------------------------------ folders and files


def visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder``, sorted, hidden folders excluded."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_hidden(path: Path) -> bool:
    """Hidden or operating-system files (``.DS_Store``, ``Thumbs.db``...), never data."""
    return path.name.startswith(".") or path.name in ("Thumbs.db", "desktop.ini")


def candidate_dirs(root: Path, max_depth: int = MAX_SEARCH_DEPTH) -> list[Path]:
    """``root`` and its sub-folders down to ``max_depth`` levels, sorted, hidden folders excluded."""
    found = [root]
    frontier = [root]
    for _ in range(max_depth):
        nxt: list[Path] = []
        for folder in frontier:
            try:
                nxt.extend(visible_dirs(folder))
            except OSError:
                continue
        found.extend(nxt)
        frontier = nxt
    return found


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files of a folder (by extension), sorted by name."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def check_image(path: Path, verify: bool) -> tuple[tuple[int, int] | None, str | None]:
    """Size ``(h, w)`` and ``None``, or ``None`` and the reason the image is unreadable.

    Without ``verify`` only the header is parsed (cheap). With ``verify`` the pixels are decoded too,
    which is the only reliable way to catch truncated files (``Image.verify`` skips JPEG data).
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            if verify:
                im.load()
    except IMAGE_ERRORS as err:  # missing, empty, damaged or decompression-bomb-sized files
        return None, image_error_reason(err)
    if width <= 0 or height <= 0:
        return None, f"image has an empty size {width}x{height}"
    return (height, width), None


def find_image(folder: Path, stem: str, preferred: str | None = None) -> Path | None:
    """``folder/preferred`` when it exists, else ``folder/<stem><ext>`` for any image extension."""
    if preferred:
        path = folder / preferred
        if path.is_file():
            return path
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


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


def describe_folder(root: Path) -> str:
    """A short listing of a folder for wrong-format errors."""
    if not root.is_dir():
        return "no such directory"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    return f"{len(entries)} entries ({shown})" if entries else "an empty folder"


def folder_name(folder: Path, root: Path) -> str:
    """``'Images/'``: a folder as messages name it, relative to ``root`` (``'./'`` for the root itself)."""
    name = relative(folder, root)
    return "'./'" if name == "." else f"'{name}/'"


def describe_search(root: Path, max_depth: int = MAX_SEARCH_DEPTH) -> str:
    """Which folders a reader looked in (for wrong-format errors): the root and its sub-folders."""
    if not Path(root).is_dir():
        return f"{root} (no such directory)"
    below = [folder_name(d, root) for d in candidate_dirs(Path(root), max_depth)[1:]]
    if not below:
        return f"{root} (no sub-folders)"
    shown = ", ".join(below[:8]) + (", ..." if len(below) > 8 else "")
    return f"{root} and its {len(below)} sub-folders down to {max_depth} levels ({shown})"


def drop_identical_images(samples: list[Sample], record: ReadReport) -> list[Sample]:
    """Byte-identical images of one dataset: kept once when annotated alike (recorded as fixed), all
    skipped when annotated differently (which annotation is right is unknown). Compares boxes and labels."""
    by_path = {s.source_path: s for s in samples if s.source_path is not None}
    drop: set[Path] = set()
    for group in identical_groups(by_path):
        first = by_path[group[0]]
        alike = all(
            np.array_equal(by_path[p].boxes, first.boxes)
            and np.array_equal(by_path[p].box_labels, first.box_labels)
            for p in group[1:]
        )
        for path in group if not alike else group[1:]:
            drop.add(path)
            others = ", ".join(record.relative(p) for p in group if p != path)
            if alike:
                record.fix(path, f"byte-identical to {others} with the same boxes; loaded once", warn=True)
            else:
                record.skip(path, f"byte-identical to {others} but annotated differently")
    return [s for s in samples if s.source_path not in drop]


# ------------------------------------------------------------------------------ boxes


@dataclass(frozen=True)
class BoxCheck:
    """Result of :func:`clean_boxes`: the kept boxes and labels, what was fixed, or why the file is bad."""

    boxes: np.ndarray
    labels: np.ndarray
    keep: np.ndarray
    fixes: tuple[str, ...]
    error: str | None


def clean_boxes(
    boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int], names: Sequence[str] | None = None
) -> BoxCheck:
    """Apply the box policy of this module to xyxy pixel ``boxes`` of an image of ``size`` = (h, w).

    ``names`` (one per box, for messages) defaults to the vocabulary names of ``labels``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if names is None:
        names = [DETECTION_CLASSES[i] for i in labels]
    height, width = size
    if not np.isfinite(boxes).all():
        bad = int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])
        return _bad(f"box {bad} ({names[bad]}) has a non-finite coordinate {_fmt(boxes[bad])}")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        bad = int(np.flatnonzero(inverted)[0])
        return _bad(f"box {bad} ({names[bad]}) has max < min: {_fmt(boxes[bad])}")
    fixes: list[str] = []
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    # Decided on the float32 coordinates the samples keep: a sliver narrower than their precision is empty.
    stored = clipped.astype(np.float32)
    keep = (stored[:, 2] > stored[:, 0]) & (stored[:, 3] > stored[:, 1])
    for i in np.flatnonzero(~keep):
        inside = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]) > 0
        where = "lies outside the image" if inside else "has zero area"
        fixes.append(f"dropped {names[i]} box {_fmt(boxes[i])}: it {where} ({width}x{height})")
    moved = keep & (np.abs(clipped - boxes) > ROUNDING_TOLERANCE_PX).any(axis=1)
    for i in np.flatnonzero(moved):
        fixes.append(f"clipped {names[i]} box {_fmt(boxes[i])} to the image ({width}x{height})")
    return BoxCheck(stored[keep], labels[keep], keep, tuple(fixes), None)


def _bad(error: str) -> BoxCheck:
    return BoxCheck(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0,), bool), (), error)


def _fmt(box: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def annotated(indices: Iterable[int]) -> tuple[str, ...]:
    """Vocabulary names of ``indices``, ordered by vocabulary index."""
    return tuple(DETECTION_CLASSES[i] for i in sorted(set(indices)))
