"""Load a dataset folder with its native reader and summarise what loaded (``unihema data check``).

:func:`check_dataset` picks the reader (the ``format`` given, else the one the folder's ``unihema.yaml``
descriptor names, else the catalog's reader when the folder is named like a staged dataset, else the
detected one, see :func:`unihema.data.formats.plan_read`), merges the reader options (catalog, descriptor,
then the ones given), runs the reader with ``verify_images=True`` so damaged images are found, and returns
a :class:`CheckReport`: which rule matched the reader, image and sample counts, annotations per class,
masks, attribute value counts, splits, and every item the reader skipped or fixed with its file and reason.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unihema.data.catalog import DatasetInfo, get_dataset, staged_dataset_for_folder
from unihema.data.schema import UNKNOWN, ReadResult, Sample, Task, printable_name
from unihema.data.vocab import CELL_ATTRIBUTES, CELL_CLASSES, DETECTION_CLASSES, FOV_ATTRIBUTES

NO_SPLIT = "none"
"""Split name shown for samples whose source has no split of its own."""

# Which task's labels the flat per-class summary counts, in order of preference.
_BOX_TASKS = (Task.DETECTION, Task.FOV_MORPHOLOGY)
_CELL_TASKS = (Task.CLASSIFICATION, Task.CELL_MORPHOLOGY)


@dataclass
class CheckReport:
    """Summary of one dataset folder as loaded by its reader.

    Attributes:
        dataset: catalog name (or the folder name when the catalog has no entry for it).
        path: the folder checked.
        format: reader used.
        format_source: ``"given"``, ``"descriptor"``, ``"catalog"`` or ``"detected"``: how the reader was
            chosen.
        format_rule: which files matched the reader, in its words (e.g. "364 XML files with <annotation>
            roots in 'Annotations/' paired by stem with 364 images in 'JPEGImages/'"), or ``None``.
        descriptor: the dataset descriptor file whose settings were used, or ``None``.
        options: reader options used (besides ``verify_images``).
        catalog_entry: name of the catalog entry whose options were used, or ``None``.
        images: distinct image files (or in-memory images) among the samples.
        samples: number of samples.
        tasks: samples per task.
        annotations: per class: boxes (detection) and samples (classification) per unified class name.
        annotations_by_task: the same counts split by task.
        boxes: total boxes over the detection samples.
        masks: samples with a mask.
        attributes: per attribute name, counts of each annotated value.
        splits: samples per split (``"none"`` when the source has no split).
        annotated_classes: the classes the reader says the dataset annotates.
        skipped: ``{"path", "reason"}`` for every item not loaded.
        fixed: ``{"path", "what"}`` for every quirk repaired on purpose.
    """

    dataset: str
    path: str
    format: str
    format_source: str
    format_rule: str | None = None
    descriptor: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    catalog_entry: str | None = None
    images: int = 0
    samples: int = 0
    tasks: dict[str, int] = field(default_factory=dict)
    annotations: dict[str, int] = field(default_factory=dict)
    annotations_by_task: dict[str, dict[str, int]] = field(default_factory=dict)
    boxes: int = 0
    masks: int = 0
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    annotated_classes: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    fixed: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``--json`` output)."""
        return {
            "dataset": self.dataset,
            "path": self.path,
            "format": self.format,
            "format_source": self.format_source,
            "format_rule": self.format_rule,
            "descriptor": self.descriptor,
            "options": _jsonable(self.options),
            "catalog_entry": self.catalog_entry,
            "images": self.images,
            "samples": self.samples,
            "tasks": dict(self.tasks),
            "annotations": dict(self.annotations),
            "annotations_by_task": {task: dict(counts) for task, counts in self.annotations_by_task.items()},
            "boxes": self.boxes,
            "masks": self.masks,
            "attributes": {name: dict(counts) for name, counts in self.attributes.items()},
            "splits": dict(self.splits),
            "annotated_classes": list(self.annotated_classes),
            "skipped": [dict(item) for item in self.skipped],
            "fixed": [dict(item) for item in self.fixed],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        """Human-readable summary (the default output of ``unihema data check``)."""
        options = json.dumps(_jsonable(self.options), sort_keys=True) if self.options else "none"
        source = {
            "given": "given",
            "descriptor": f"descriptor {self.descriptor}",
            "catalog": f"catalog entry {self.catalog_entry}",
            "detected": "detected",
        }
        lines = [
            f"dataset   {self.dataset}",
            f"path      {self.path}",
            f"format    {self.format} ({source.get(self.format_source, self.format_source)}), options {options}",
        ]
        if self.format_rule:
            lines.append(f"rule      {self.format_rule}")
        if self.descriptor and self.format_source != "descriptor":
            lines.append(f"descriptor {self.descriptor}")
        lines += [
            f"images    {self.images}",
            f"samples   {self.samples}" + _inline(self.tasks),
            "splits   " + _inline(self.splits, lead=""),
        ]
        if self.boxes:
            lines.append(f"boxes     {self.boxes}")
        if self.masks:
            lines.append(f"masks     {self.masks}")
        for task, counts in self.annotations_by_task.items():
            unit = "boxes" if Task(task).has_boxes else "samples"
            lines.append(f"{task} {unit} per class:")
            width = max((len(name) for name in counts), default=0)
            lines += [f"  {name:<{width}}  {count}" for name, count in counts.items()]
        for name, counts in self.attributes.items():
            lines.append(f"attribute {name}:" + _inline(counts))
        lines.append(f"skipped   {len(self.skipped)}")
        lines += [f"  {item['path']}: {item['reason']}" for item in self.skipped]
        lines.append(f"fixed     {len(self.fixed)}")
        lines += [f"  {item['path']}: {item['what']}" for item in self.fixed]
        return "\n".join(lines)


def _inline(counts: Mapping[str, int], lead: str = "  ") -> str:
    if not counts:
        return lead + "-" if lead else " -"
    return (lead if lead else " ") + ", ".join(f"{key} {value}" for key, value in counts.items())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Task):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _image_key(sample: Sample) -> Any:
    if sample.source_path is not None:
        return Path(sample.source_path).resolve()
    return ("memory", sample.dataset, sample.sample_id.split("#", 1)[0])


def summarize(result: ReadResult) -> dict[str, Any]:
    """Counts of a :class:`ReadResult` (the numeric part of a :class:`CheckReport`)."""
    tasks: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    by_task: dict[str, Counter[str]] = {}
    attribute_counts: dict[str, Counter[str]] = {}
    images: set[Any] = set()
    boxes = masks = 0
    for sample in result.samples:
        tasks[sample.task.value] += 1
        splits[sample.split or NO_SPLIT] += 1
        images.add(_image_key(sample))
        if sample.mask is not None:
            masks += 1
        counts = by_task.setdefault(sample.task.value, Counter())
        if sample.task.has_boxes:
            if sample.task == Task.DETECTION:
                boxes += len(sample.box_labels)
            counts.update(DETECTION_CLASSES[int(label)] for label in sample.box_labels)
            for row in sample.box_attributes:
                _count_attributes(attribute_counts, FOV_ATTRIBUTES, row)
        elif sample.cell_class is not None:
            counts[CELL_CLASSES[int(sample.cell_class)]] += 1
        if sample.cell_attributes is not None:
            _count_attributes(attribute_counts, CELL_ATTRIBUTES, sample.cell_attributes)
    by_task = {task: counts for task, counts in by_task.items() if counts}
    flat: Counter[str] = Counter()
    for group in (_BOX_TASKS, _CELL_TASKS):
        for task in group:  # the first task of each group that has labels (no double counting)
            if task.value in by_task:
                flat.update(by_task[task.value])
                break
    return {
        "images": len(images),
        "samples": len(result.samples),
        "tasks": dict(sorted(tasks.items())),
        "annotations": dict(sorted(flat.items())),
        "annotations_by_task": {task: dict(sorted(c.items())) for task, c in sorted(by_task.items())},
        "boxes": boxes,
        "masks": masks,
        "attributes": {name: dict(sorted(c.items())) for name, c in attribute_counts.items()},
        "splits": dict(sorted(splits.items())),
    }


def _count_attributes(
    counts: dict[str, Counter[str]], schema: tuple[tuple[str, tuple[str, ...]], ...], row: Any
) -> None:
    for (name, values), value in zip(schema, row):
        value = int(value)
        if value != UNKNOWN and 0 <= value < len(values):
            counts.setdefault(name, Counter())[values[value]] += 1


def _resolve_entry(path: Path, dataset: str | None) -> DatasetInfo | None:
    if dataset is not None:
        entry = get_dataset(dataset)
        if entry.kind != "staged":
            return None
        return entry
    return staged_dataset_for_folder(path.name) or staged_dataset_for_folder(path.resolve().name)


def check_dataset(
    path: str | Path,
    format: str | None = None,
    *,
    dataset: str | None = None,
    options: Mapping[str, Any] | None = None,
    verify_images: bool = True,
) -> CheckReport:
    """Load ``path`` with its reader and summarise it.

    Args:
        path: the dataset folder.
        format: reader name; default: the one the folder's ``unihema.yaml`` names, else the catalog's
            reader when the folder (or ``dataset``) names a staged dataset, else the detected format.
        dataset: catalog name to take the reader options from (default: the folder's name).
        options: extra reader options (``--option key=value``), overriding the catalog's and the
            descriptor's.
        verify_images: decode every image (catches truncated files).

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        unihema.data.formats.WrongFormatError: the folder is not a dataset of any known format (or not of
            ``format``).
        ValueError: the reader loaded nothing at all; a bad descriptor or option (named).
    """
    from unihema.data.formats import plan_read, read_planned  # readers import PIL etc.: only when checking

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    entry = _resolve_entry(root, dataset)
    plan = plan_read(
        root,
        format,
        options,
        default_format=entry.reader if entry is not None else None,
        default_options=entry.options if entry is not None else None,
    )
    format, read_options = plan.format, plan.options
    format_source = "catalog" if plan.format_source == "default" else plan.format_source
    name = entry.name if entry is not None else (dataset or printable_name(root.resolve().name.lower()))
    with warnings.catch_warnings():
        # Skipped items are reported in the summary; the readers' per-item warnings would repeat them.
        warnings.simplefilter("ignore")
        result = read_planned(plan, dataset=name, verify_images=verify_images)
    if not result.samples:
        detail = (
            f" ({len(result.skipped)} items skipped, first: {result.skipped[0].path}: {result.skipped[0].reason})"
            if result.skipped
            else ""
        )
        raise ValueError(f"{root}: the {format} reader loaded no samples{detail}")
    counts = summarize(result)
    return CheckReport(
        dataset=name,
        path=printable_name(root),
        format=format,
        format_source=format_source,
        format_rule=plan.rule,
        descriptor=str(plan.descriptor.path) if plan.descriptor is not None else None,
        options=read_options,
        catalog_entry=entry.name if entry is not None and entry.reader == format else None,
        annotated_classes=list(result.annotated_classes),
        skipped=[{"path": item.path, "reason": item.reason} for item in result.skipped],
        fixed=[{"path": item.path, "what": item.what} for item in result.fixed],
        **counts,
    )


__all__ = ["CheckReport", "check_dataset", "summarize"]
