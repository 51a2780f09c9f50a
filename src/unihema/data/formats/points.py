"""Point annotations (one ``x y class`` line per cell) turned into single-cell crops: Chula RBC-12.

Layout::

    <root>/Dataset/<id>.jpg      smear images (640x480 for Chula RBC-12)
    <root>/Label/<id>.txt        one line per cell: ``x y class`` (integer pixels, class id)

Other folder names work too: any folder (at the root or up to two levels below it) whose text files start
with ``x y class`` lines is a label folder, paired by stem with the folder whose images match the most of
them (see :mod:`unihema.data.formats._pairing`).

Every point becomes a ``classification`` sample whose image is a ``crop_size`` square crop of the smear
centred on the point (:class:`~unihema.data.schema.FileImage` with ``crop=``; nothing is decoded at read
time). The points themselves are kept for point-supervised detection: ``extra["point"]`` (x, y in the
smear), ``extra["point_in_crop"]`` and ``extra["image_points"]``, an ``(N, 3)`` int array of every loaded
point of the smear (x, y, class id), shared by all crops of that smear.

Crop size: Chula RBC-12 was imaged at 1000x; over the staged labels the median distance from a cell's
point to its nearest neighbour is 43 px (quartiles 37-54 px), so a red cell is about 40 px across. The
default :data:`DEFAULT_CROP_SIZE` of 64 px holds a whole cell (macrocytes included) with a margin of
context.

Border policy: a point closer than ``crop_size / 2`` to the border keeps a full-size crop that is
*shifted* inside the image (the cell is then off-centre; ``point_in_crop`` says where), so every crop of a
dataset has the same size. A point outside the image is skipped.

Other quirks: an image without a label file and an empty label file give no samples (skipped with a
reason); a malformed line or an unknown class id is skipped naming ``<label file>:<line>``, the rest of
the file loads; a point repeated with the same class is loaded once (fixed), with different classes both
are skipped. Class 10 ``uncategorised`` is not a morphology class: its points are left out on purpose
(recorded as fixed) unless ``include_uncategorised=True``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from unihema.data.formats._common import (
    IMAGE_EXTENSIONS,
    OptionError,
    ReadContext,
    ReadReport,
    cell_class_names,
    check_image,
    check_options,
    describe_folder,
    describe_search,
)
from unihema.data.formats._pairing import SNIFF_FILES, FolderIndex, FolderPairing
from unihema.data.formats.base import WrongFormatError, register_reader
from unihema.data.schema import FileImage, ReadResult, Sample, Task
from unihema.data.vocab import cell_index

CHULA_CLASSES: dict[int, str] = {
    0: "normal rbc", 1: "macrocyte", 2: "microcyte", 3: "spherocyte", 4: "target cell", 5: "stomatocyte",
    6: "ovalocyte", 7: "teardrop cell", 8: "burr cell", 9: "schistocyte", 10: "uncategorised rbc",
    11: "hypochromic rbc", 12: "elliptocyte",
}  # fmt: skip
"""Chula RBC-12 class ids (README: 0 Normal cell ... 12 Elliptocyte) -> vocabulary names."""

_UNCATEGORISED = cell_index("uncategorised rbc")
DEFAULT_CROP_SIZE = 64
"""Crop side in pixels (see the module docstring for the measurement behind it)."""

IMAGE_DIR_NAMES: tuple[str, ...] = ("Dataset", "dataset", "images", "Images")
LABEL_DIR_NAMES: tuple[str, ...] = ("Label", "label", "labels", "Labels")

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_LINE_RE = re.compile(rf"^\s*({_NUMBER})\s+({_NUMBER})\s+(\d+)\s*$")
_NO_LABEL_GROUP = "images without a label file"
_OPTIONS = ("crop_size", "include_uncategorised", "class_names", "verify_images", "disease")


def _find_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _looks_like_points(label_dir: Path) -> bool:
    """True when the first non-empty line of the first few label files is ``x y class``."""
    checked = 0
    for path in sorted(label_dir.glob("*.txt")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            line = next((ln for ln in handle if ln.strip()), None)
        if line is None:
            continue
        if not _LINE_RE.match(line):
            return False
        checked += 1
        if checked >= SNIFF_FILES:
            break
    return checked > 0


def find_point_folders(root: Path) -> FolderPairing | None:
    """The label folder and its image folder: ``Dataset/`` + ``Label/`` (and the other names of
    :data:`IMAGE_DIR_NAMES` / :data:`LABEL_DIR_NAMES`) first, else by content and pairing."""
    root = Path(root)
    index = FolderIndex(root)
    image_dir, label_dir = _find_dir(root, IMAGE_DIR_NAMES), _find_dir(root, LABEL_DIR_NAMES)
    if image_dir is not None and label_dir is not None and _looks_like_points(label_dir):
        stems = {p.stem for p in index.files(label_dir, (".txt",))}
        return FolderPairing(label_dir, image_dir, len(stems), len(stems & set(index.images(image_dir))))
    for folder in index.dirs:
        if index.files(folder, (".txt",)) and _looks_like_points(folder):
            pairing = index.image_folder_for(folder, {p.stem for p in index.files(folder, (".txt",))})
            if pairing is not None:
                return pairing
    return None


@register_reader
class PointReader:
    """Reads point-annotated smears into single-cell crops (see the module docstring).

    Options of :meth:`read`:
        crop_size (int, default 64): side of the square crop around each point, in pixels.
        include_uncategorised (bool, default False): also load class 10 ``uncategorised`` points.
        class_names (mapping int -> str, default :data:`CHULA_CLASSES`): class id -> vocabulary name.
        verify_images (bool, default False): decode every image instead of reading its header.
        disease (str, optional): disease context (Chula RBC-12 gives none per image).
    """

    name: ClassVar[str] = "points"
    description: ClassVar[str] = (
        "point annotations ('x y class' text files paired by stem with images) cropped to single cells"
    )
    expects: ClassVar[str] = (
        "text files of 'x y class' lines and images of the same stems, in one folder or two"
    )
    priority: ClassVar[int] = 40
    option_names: ClassVar[tuple[str, ...]] = _OPTIONS

    def explain(self, root: Path, options: Mapping[str, Any] | None = None) -> str | None:
        """Which folders make ``root`` a point-annotated set, or ``None`` when it is not one."""
        pairing = find_point_folders(Path(root))
        return None if pairing is None else pairing.describe("label files of 'x y class' lines", Path(root))

    def sniff(self, root: Path) -> bool:
        return find_point_folders(Path(root)) is not None

    def read(self, root: Path, dataset: str | None = None, **options: Any) -> ReadResult:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a directory")
        check_options(options, _OPTIONS, "points")
        pairing = find_point_folders(root)
        if pairing is None:
            raise WrongFormatError(
                f"{root}: expected point annotations ({self.expects}, e.g. Dataset/ + Label/); looked in "
                f"{describe_search(root)}, found {describe_folder(root)}"
            )
        image_dir, label_dir = pairing.images, pairing.annotations
        crop_size = options.get("crop_size", DEFAULT_CROP_SIZE)
        if not isinstance(crop_size, int) or isinstance(crop_size, bool) or crop_size < 1:
            raise OptionError(
                "crop_size", f"points reader: crop_size must be a positive integer, got {crop_size!r}"
            )
        class_names: Mapping[int, str] = options.get("class_names") or CHULA_CLASSES
        class_index = {cid: cell_index(name) for cid, name in class_names.items()}
        name = dataset or ("chula_rbc12" if class_names is CHULA_CLASSES else root.name)
        record = ReadReport(name, root)
        context = _PointContext(
            record=record,
            disease=options.get("disease"),
            verify=bool(options.get("verify_images", False)),
            class_index=class_index,
            include_uncategorised=bool(options.get("include_uncategorised", False)),
            crop_size=crop_size,
        )

        images = {
            p.stem: p
            for p in sorted(image_dir.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        }
        labels = {p.stem: p for p in sorted(label_dir.glob("*.txt")) if not p.name.startswith(".")}
        for stem in sorted(set(labels) - set(images), key=_natural):
            record.skip(labels[stem], f"no image {stem}.* in {image_dir.name}/")
        for stem in sorted(set(images) - set(labels), key=_natural):
            record.skip(images[stem], f"no label file {label_dir.name}/{stem}.txt", group=_NO_LABEL_GROUP)

        samples: list[Sample] = []
        for stem in sorted(set(images) & set(labels), key=_natural):
            samples.extend(_read_image_points(context, images[stem], labels[stem]))
        return record.finish(self.name, samples, cell_class_names(samples))


@dataclass(frozen=True, kw_only=True)
class _PointContext(ReadContext):
    """The shared read context plus how points become crops.

    Attributes:
        class_index: point class id -> cell vocabulary index.
        include_uncategorised: also load points of the ``uncategorised`` class.
        crop_size: side of the square crop around each point, in pixels.
    """

    class_index: Mapping[int, int] = field(default_factory=dict)
    include_uncategorised: bool = False
    crop_size: int = DEFAULT_CROP_SIZE


def _natural(stem: str) -> tuple[int, str]:
    """Numeric ids in numeric order (``2`` before ``10``), other names after them."""
    return (int(stem), "") if stem.isdigit() else (1 << 62, stem)


def crop_window(x: float, y: float, size: tuple[int, int], crop_size: int) -> tuple[int, int, int, int]:
    """xyxy crop of side ``crop_size`` centred on (x, y), shifted to lie inside an image of ``size``
    = (h, w); a side longer than the image is reduced to the image."""
    height, width = size

    def span(centre: float, extent: int) -> tuple[int, int]:
        side = min(crop_size, extent)
        start = int(round(centre - side / 2))
        start = min(max(start, 0), extent - side)
        return start, start + side

    x0, x1 = span(x, width)
    y0, y1 = span(y, height)
    return x0, y0, x1, y1


def _read_image_points(context: _PointContext, image_path: Path, label_path: Path) -> list[Sample]:
    """One crop sample per loaded point of one smear (problems recorded per line)."""
    record = context.record
    image_rel, label_rel = record.relative(image_path), record.relative(label_path)
    size, reason = check_image(image_path, context.verify)
    if size is None:
        record.skip(image_rel, reason or "unreadable image")
        return []
    height, width = size
    try:
        text = label_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        record.skip(label_rel, f"unreadable label file ({type(exc).__name__}: {exc})")
        return []
    if not text.strip():
        record.skip(label_rel, "empty label file: no annotated cell in this image")
        return []

    points: list[tuple[float, float, int, int]] = []  # x, y, class id, line
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label_rel}:{line_no}"
        match = _LINE_RE.match(line)
        if match is None:
            record.skip(where, f"malformed line {line.strip()!r} (expected 'x y class')")
            continue
        x, y, cid = float(match.group(1)), float(match.group(2)), int(match.group(3))
        if cid not in context.class_index:
            record.skip(where, f"unknown class id {cid} (known: {sorted(context.class_index)})")
            continue
        if not (0 <= x < width and 0 <= y < height):
            record.skip(where, f"point ({x:g}, {y:g}) lies outside the {width}x{height} image")
            continue
        if context.class_index[cid] == _UNCATEGORISED and not context.include_uncategorised:
            record.fix(
                where,
                f"class {cid} 'uncategorised' left out on purpose (include_uncategorised=True keeps it)",
            )
            continue
        points.append((x, y, cid, line_no))

    # Repeated points: one cell annotated twice.
    by_xy: dict[tuple[float, float], list[tuple[float, float, int, int]]] = {}
    for point in points:
        by_xy.setdefault(point[:2], []).append(point)
    kept: list[tuple[float, float, int, int]] = []
    for (x, y), same in by_xy.items():
        if len({p[2] for p in same}) == 1:
            kept.append(same[0])
            for p in same[1:]:
                record.fix(
                    f"{label_rel}:{p[3]}",
                    f"repeats the point ({x:g}, {y:g}) of line {same[0][3]}; loaded once",
                )
        else:
            for p in same:
                record.skip(
                    f"{label_rel}:{p[3]}",
                    f"point ({x:g}, {y:g}) is given different classes {sorted({q[2] for q in same})}",
                )
    kept.sort(key=lambda p: p[3])

    image_points = np.asarray([[round(x), round(y), cid] for x, y, cid, _ in kept], dtype=np.int64).reshape(
        -1, 3
    )
    samples: list[Sample] = []
    for x, y, cid, line_no in kept:
        x0, y0, x1, y1 = crop_window(x, y, size, context.crop_size)
        samples.append(
            Sample(
                image=FileImage(image_path, crop=(x0, y0, x1, y1)),
                task=Task.CLASSIFICATION,
                dataset=context.dataset,
                sample_id=f"{image_rel}#L{line_no}",
                disease=context.disease,
                cell_class=context.class_index[cid],
                image_size=(y1 - y0, x1 - x0),
                source_path=image_path,
                extra={
                    "point": (x, y),
                    "point_in_crop": (x - x0, y - y0),
                    "class_id": cid,
                    "label_file": label_rel,
                    "line": line_no,
                    "image_points": image_points,
                    "image_size": size,
                    # Crops of one smear share a split, so no smear is in training and evaluation at once.
                    "split_group": image_rel,
                },
            )
        )
    return samples
