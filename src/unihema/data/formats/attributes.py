"""Per-cell attribute CSVs joined to images: WBCAtt (11 morphology attributes of PBC white cells).

Layout::

    <root>/submission/pbc_attr_v1_{train,val,test}.csv     (or the CSVs directly in <root>)
    <root>/submission/re-annotation/pbc_attr_reannotations.csv
    <images_root>/PBC_dataset_normal_DIB/<class>/<img_name>  (the ``path`` column, relative to images_root)

Header: ``img_name,label,<the 11 attributes of CELL_ATTRIBUTES>,path``. The split is taken from the CSV's
file name. Each row becomes a ``cell_morphology`` sample carrying both the 11 attribute indices and the
WBC class; optional ``vqa`` / ``mlm`` samples are built from the same row with
:func:`unihema.data.text.text_samples`.

``images_root`` defaults to the sibling folder ``../pbc`` of ``root``. A row whose image is missing there
is skipped (the image set may be staged only partly): every such row is listed in
``ReadResult.skipped`` but announced by a single warning with the count. Malformed rows (wrong number of
columns, empty path, unknown class, repeated ``img_name``) are skipped naming ``<csv>:<line>``; an
unknown attribute value leaves that attribute unannotated (``UNKNOWN``) and is reported the same way;
attribute values differing only in case or spacing are normalised (recorded as fixed).

:func:`read_reannotations` and :func:`annotator_agreement` expose the re-annotation file (1000 cells
labelled again by other annotators) for inter-annotator agreement.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from unihema.data.formats._common import (
    ReadReport,
    candidate_dirs,
    cell_class_names,
    check_image,
    check_options,
    describe_folder,
    describe_search,
    parse_tasks,
    relative,
    split_from_name,
)
from unihema.data.formats.base import WrongFormatError, register_reader
from unihema.data.formats.folders.imagefolder import prefix_info
from unihema.data.schema import UNKNOWN, FileImage, ReadResult, Sample, Task
from unihema.data.text import text_samples
from unihema.data.vocab import CELL_ATTRIBUTE_NAMES, CELL_ATTRIBUTES, cell_index

ID_COLUMN, LABEL_COLUMN, PATH_COLUMN = "img_name", "label", "path"
REQUIRED_COLUMNS: tuple[str, ...] = (ID_COLUMN, LABEL_COLUMN, PATH_COLUMN)
"""Columns every attribute CSV must have (the attribute columns may be partly absent)."""

DEFAULT_IMAGES_ROOT = Path("..") / "pbc"
"""Where the images are looked for, relative to the reader's root, when ``images_root`` is not given."""

REANNOTATION_GLOB = "*reannotation*.csv"
DEFAULT_DISEASE = "healthy"  # PBC images come from healthy donors

_ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = dict(CELL_ATTRIBUTES)
_OPTIONS = ("images_root", "splits", "tasks", "verify_images", "disease", "text_seed")
_MISSING_GROUP = "rows whose image is not under images_root (image set staged only in part)"


@dataclass(frozen=True)
class AttributeRow:
    """One parsed CSV row.

    Attributes:
        source: ``<csv path relative to the root>:<line number>``.
        img_name: the image file name (unique id in WBCAtt).
        label: the class column as written (``"Eosinophil"``).
        path: image path relative to the images root.
        attributes: attribute name -> normalised value, only for valid values.
    """

    source: str
    img_name: str
    label: str
    path: str
    attributes: dict[str, str] = field(default_factory=dict)

    def attribute_indices(self) -> np.ndarray:
        """``(11,)`` int64 value indices in :data:`CELL_ATTRIBUTES` order, ``UNKNOWN`` where absent."""
        return np.asarray(
            [
                _ATTRIBUTE_VALUES[n].index(self.attributes[n]) if n in self.attributes else UNKNOWN
                for n in CELL_ATTRIBUTE_NAMES
            ],
            dtype=np.int64,
        )


def _header_ok(header: Sequence[str]) -> bool:
    names = {h.strip() for h in header}
    return set(REQUIRED_COLUMNS) <= names and bool(names & set(CELL_ATTRIBUTE_NAMES))


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def find_attribute_csvs(root: Path) -> list[Path]:
    """Attribute CSVs (not re-annotations), found by their header at or up to two levels below ``root``
    (WBCAtt keeps them in ``submission/``), sorted by name per folder."""
    found: list[Path] = []
    for folder in candidate_dirs(Path(root)) if Path(root).is_dir() else []:
        for path in sorted(folder.glob("*.csv")):
            if not path.match(REANNOTATION_GLOB) and _header_ok(_csv_header(path)):
                found.append(path)
    return found


def read_attribute_csv(path: Path, report: ReadReport) -> list[AttributeRow]:
    """Parse one attribute CSV; problems go to ``report`` as ``<csv>:<line>`` items (see module doc), the
    CSV named relative to the report's root."""
    name = report.relative(Path(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        report.skip(name, f"unreadable CSV ({type(exc).__name__}: {exc})")
        return []
    if not rows or not _header_ok(rows[0]):
        report.skip(
            name,
            f"not an attribute CSV: the header must contain {', '.join(REQUIRED_COLUMNS)} and attribute columns",
        )
        return []
    header = [h.strip() for h in rows[0]]
    column = {h: i for i, h in enumerate(header)}
    missing_attributes = [a for a in CELL_ATTRIBUTE_NAMES if a not in column]
    if missing_attributes:
        report.fix(name, f"no column for {', '.join(missing_attributes)}: left unannotated")
    parsed: list[AttributeRow] = []
    for line, row in enumerate(rows[1:], start=2):
        where = f"{name}:{line}"
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            report.skip(where, f"expected {len(header)} columns, found {len(row)}")
            continue
        img_name, label, rel_path = (row[column[c]].strip() for c in REQUIRED_COLUMNS)
        if not img_name or not rel_path:
            report.skip(where, f"empty {ID_COLUMN!r} or {PATH_COLUMN!r}")
            continue
        attributes: dict[str, str] = {}
        for attribute in CELL_ATTRIBUTE_NAMES:
            if attribute not in column:
                continue
            raw = row[column[attribute]]
            value = " ".join(raw.strip().lower().split())
            if value in _ATTRIBUTE_VALUES[attribute]:
                attributes[attribute] = value
                if value != raw:
                    report.fix(where, f"{attribute} value {raw!r} normalised to {value!r}")
            else:
                report.skip(
                    f"{where}:{attribute}",
                    f"unknown {attribute} value {raw!r} (expected one of {_ATTRIBUTE_VALUES[attribute]}); "
                    "left unannotated",
                )
        parsed.append(AttributeRow(where, img_name, label, rel_path, attributes))
    return parsed


def _default_images_root(root: Path) -> Path:
    return (root / DEFAULT_IMAGES_ROOT).resolve()


@register_reader
class AttributeCsvReader:
    """Reads WBCAtt-style attribute CSVs and joins them to their images.

    Options of :meth:`read`:
        images_root (path, default ``<root>/../pbc``): folder the ``path`` column is relative to; a relative
            path is taken relative to ``root``.
        splits (list of str, optional): read only these splits (``"train"``, ``"val"``, ``"test"``).
        tasks (task or list, default ``"cell_morphology"``): any of ``"cell_morphology"``,
            ``"classification"``, ``"vqa"``, ``"mlm"``; text samples come from
            :func:`unihema.data.text.text_samples` (seeded by ``text_seed``, default 0).
        verify_images (bool, default False): decode every image instead of reading its header.
        disease (str, default ``"healthy"``).
    """

    name: ClassVar[str] = "attributes"
    description: ClassVar[str] = (
        "per-cell attribute CSVs (WBCAtt: img_name,label,<11 attributes>,path) joined to images"
    )
    expects: ClassVar[str] = (
        f"CSV files with the columns {', '.join(REQUIRED_COLUMNS)} and cell attribute columns (WBCAtt)"
    )
    priority: ClassVar[int] = 20  # a CSV with this header is unambiguous
    option_names: ClassVar[tuple[str, ...]] = _OPTIONS

    def explain(self, root: Path, options: Mapping[str, Any] | None = None) -> str | None:
        """Which CSVs make ``root`` an attribute set, or ``None`` when it has none."""
        csvs = find_attribute_csvs(Path(root))
        names = ", ".join(f"'{relative(p, root)}'" for p in csvs)
        return (
            f"{len(csvs)} CSV files with {', '.join(REQUIRED_COLUMNS)} and attribute columns ({names})"
            if csvs
            else None
        )

    def sniff(self, root: Path) -> bool:
        root = Path(root)
        return root.is_dir() and bool(find_attribute_csvs(root))

    def read(self, root: Path, dataset: str | None = None, **options: Any) -> ReadResult:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a directory")
        check_options(options, _OPTIONS, "attributes")
        csvs = find_attribute_csvs(root)
        if not csvs:
            raise WrongFormatError(
                f"{root}: expected attribute CSVs with columns {', '.join(REQUIRED_COLUMNS)} and cell attributes; "
                f"looked in {describe_search(root)}, found {describe_folder(root)}"
            )
        name = dataset or "wbcatt"
        # A relative images_root is relative to the dataset root, as for every reader's path options.
        images_root = (
            root / options["images_root"] if options.get("images_root") else _default_images_root(root)
        )
        if not images_root.is_dir():
            raise FileNotFoundError(
                f"attributes reader: images_root {images_root} does not exist (pass images_root=)"
            )
        tasks = parse_tasks(
            options.get("tasks", Task.CELL_MORPHOLOGY),
            (Task.CELL_MORPHOLOGY, Task.CLASSIFICATION, Task.VQA, Task.MLM),
            "attributes",
        )
        wanted_splits = options.get("splits")
        verify = bool(options.get("verify_images", False))
        disease = options.get("disease", DEFAULT_DISEASE)
        text_seed = options.get("text_seed", 0)
        report = ReadReport(name, root)

        samples: list[Sample] = []
        seen: dict[str, str] = {}
        for csv_path in csvs:
            split = split_from_name(csv_path.stem)
            if wanted_splits is not None and split not in wanted_splits:
                continue
            for row in read_attribute_csv(csv_path, report):
                if row.img_name in seen:
                    report.skip(row.source, f"{row.img_name} already annotated at {seen[row.img_name]}")
                    continue
                seen[row.img_name] = row.source
                try:
                    label = cell_index(row.label)
                except KeyError:
                    report.skip(row.source, f"unknown class {row.label!r} in column {LABEL_COLUMN!r}")
                    continue
                image_path = images_root / row.path
                if not image_path.is_file():
                    report.skip(
                        row.path, f"image not found under {images_root} ({row.source})", group=_MISSING_GROUP
                    )
                    continue
                size, reason = check_image(image_path, verify)
                if size is None:
                    report.skip(row.path, f"{reason} ({row.source})")
                    continue
                base = Sample(
                    image=FileImage(image_path),
                    task=Task.CELL_MORPHOLOGY,
                    dataset=name,
                    sample_id=row.path,
                    split=split,
                    disease=disease,
                    cell_class=label,
                    cell_attributes=row.attribute_indices(),
                    image_size=size,
                    source_path=image_path,
                    extra={
                        "img_name": row.img_name,
                        "label": row.label,
                        "row": row.source,
                        **prefix_info(Path(row.img_name).stem),
                    },
                )
                samples.extend(_expand(base, tasks, text_seed))
        return report.finish(self.name, samples, cell_class_names(samples))


def _expand(base: Sample, tasks: tuple[Task, ...], text_seed: int | str) -> list[Sample]:
    out: list[Sample] = []
    if Task.CELL_MORPHOLOGY in tasks:
        out.append(base)
    if Task.CLASSIFICATION in tasks:
        out.append(
            Sample(
                image=base.image, task=Task.CLASSIFICATION, dataset=base.dataset,
                sample_id=f"{base.sample_id}#class", split=base.split, disease=base.disease,
                cell_class=base.cell_class, image_size=base.image_size, source_path=base.source_path,
                extra=dict(base.extra),
            )
        )  # fmt: skip
    if Task.VQA in tasks or Task.MLM in tasks:
        out.extend(s for s in text_samples(base, seed=text_seed) if s.task in tasks)
    return out


# ------------------------------------------------------------------------------------ re-annotations


def find_reannotation_csv(root: Path) -> Path:
    """The re-annotation CSV under ``root`` (searched recursively); ``FileNotFoundError`` if absent."""
    found = sorted(Path(root).rglob(REANNOTATION_GLOB))
    if not found:
        raise FileNotFoundError(f"{root}: no re-annotation CSV ({REANNOTATION_GLOB}) found")
    return found[0]


def read_reannotations(root: Path) -> dict[str, AttributeRow]:
    """The re-annotation rows keyed by ``img_name`` (problems are warned about as in :meth:`read`)."""
    root = Path(root)
    report = ReadReport("wbcatt re-annotation", root)
    rows = read_attribute_csv(find_reannotation_csv(root), report)
    report.emit_warnings()
    return {row.img_name: row for row in rows}


@dataclass(frozen=True)
class Agreement:
    """Agreement of two annotations of one attribute over the cells both annotated.

    Attributes:
        count: number of cells compared.
        agreement: fraction with the same value.
        kappa: Cohen's kappa (chance-corrected agreement); ``nan`` when undefined (a single value).
    """

    count: int
    agreement: float
    kappa: float


def annotator_agreement(root: Path) -> dict[str, Agreement]:
    """Per-attribute agreement between the original WBCAtt labels and the re-annotation file.

    Both are joined by ``img_name``; images do not need to be present.
    """
    from sklearn.metrics import cohen_kappa_score

    root = Path(root)
    report = ReadReport("wbcatt", root)
    original: dict[str, AttributeRow] = {}
    for csv_path in find_attribute_csvs(root):
        for row in read_attribute_csv(csv_path, report):
            original.setdefault(row.img_name, row)
    report.emit_warnings()
    again = read_reannotations(root)
    result: dict[str, Agreement] = {}
    for attribute in CELL_ATTRIBUTE_NAMES:
        pairs = [
            (original[name].attributes[attribute], row.attributes[attribute])
            for name, row in again.items()
            if name in original and attribute in original[name].attributes and attribute in row.attributes
        ]
        if not pairs:
            continue
        first, second = zip(*pairs)
        same = sum(a == b for a, b in pairs) / len(pairs)
        kappa = float("nan") if len(set(first) | set(second)) < 2 else float(cohen_kappa_score(first, second))
        result[attribute] = Agreement(len(pairs), same, kappa)
    return result
