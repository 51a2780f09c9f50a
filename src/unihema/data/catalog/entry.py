"""One catalog entry: :class:`DatasetInfo`, and how its field values are displayed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from unihema.data.schema import Task
from unihema.data.vocab import cell_index, detection_index

UNKNOWN_TEXT = "unknown"
"""How a field that is not known is displayed."""

READER_FORMATS: tuple[str, ...] = ("voc", "yolo", "coco", "masks", "folders", "attributes", "points")
"""Names of the native-format readers; ``native_format`` is one of these or a descriptive string."""

Kind = Literal["paper", "staged"]
Vocabulary = Literal["detection", "cell"]


@dataclass(frozen=True)
class DatasetInfo:
    """One catalog entry.

    Attributes:
        name: registry slug (``"bccd_det"``, ``"txl_pbc"``); lower case, digits and ``_``.
        display_name: the name as the paper / the authors' table / the source spells it.
        kind: ``"paper"`` for the paper's 46 datasets, ``"staged"`` for the real datasets read here.
        tasks: the tasks the dataset supervises (``unihema.data.schema.Task``).
        paper_task: for paper entries, the task group the paper counts the entry in; ``None`` otherwise.
        disease: disease context (``"malaria"``, ``"healthy"`` ...) or ``None`` when not known.
        magnification: microscope magnification(s) when known, else ``None``.
        native_format: a reader name of :data:`READER_FORMATS`, or a descriptive string ("unknown" when
            the format was not checked).
        classes: ``(source label, unified name)`` pairs, or ``None`` when the label set is not known. The
            unified name is a canonical entry of the vocabulary named by ``class_vocabulary``.
        class_vocabulary: ``"detection"`` (``DETECTION_CLASSES``) or ``"cell"`` (``CELL_CLASSES``).
        license: license as stated by the source, or ``None``.
        homepage: landing page (repository, data portal) or ``None``.
        download_url: a direct link to a downloadable file, or ``None`` when there is none.
        sha256: hex digest of the file at ``download_url`` when known.
        size: size in bytes of the file at ``download_url`` when known.
        paper_url: link to the dataset's paper, or ``None``.
        citation: the reference, as the Uni-Hema paper's reference list gives it when it cites the dataset.
        paper_ref: the Uni-Hema paper's reference number (``"[68]"``) when it cites the dataset.
        aliases: other names the dataset goes by (used by :func:`get_dataset`).
        reader: staged entries: the reader (format) name used to load the folder.
        reader_options: staged entries: keyword options passed to the reader's ``read``.
        corresponds_to: staged entries: names of the paper entries holding (part of) the same data.
        origin: staged entries: origin repository and commit.
        subset: staged entries: True when only part of the source was staged.
        notes: anything a user must know (odd links, quirks, reconciliation choices).
    """

    name: str
    display_name: str
    kind: Kind
    tasks: tuple[Task, ...]
    paper_task: Task | None = None
    disease: str | None = None
    magnification: str | None = None
    native_format: str = UNKNOWN_TEXT
    classes: tuple[tuple[str, str], ...] | None = None
    class_vocabulary: Vocabulary | None = None
    license: str | None = None
    homepage: str | None = None
    download_url: str | None = None
    sha256: str | None = None
    size: int | None = None
    paper_url: str | None = None
    citation: str | None = None
    paper_ref: str | None = None
    aliases: tuple[str, ...] = ()
    reader: str | None = None
    reader_options: tuple[tuple[str, Any], ...] = ()
    corresponds_to: tuple[str, ...] = ()
    origin: str | None = None
    subset: bool | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or not self.name.replace("_", "").isalnum():
            raise ValueError(f"catalog entry {self.name!r}: name must be lower-case letters, digits and '_'")
        if self.kind not in ("paper", "staged"):
            raise ValueError(
                f"catalog entry {self.name!r}: kind must be 'paper' or 'staged', got {self.kind!r}"
            )
        object.__setattr__(self, "tasks", tuple(Task(task) for task in self.tasks))
        if not self.tasks:
            raise ValueError(f"catalog entry {self.name!r}: tasks is empty")
        if self.kind == "paper" and self.paper_task not in self.tasks:
            raise ValueError(f"catalog entry {self.name!r}: paper_task {self.paper_task} not among its tasks")
        if (self.classes is None) != (self.class_vocabulary is None):
            raise ValueError(f"catalog entry {self.name!r}: classes and class_vocabulary go together")
        if self.classes is not None:
            lookup = detection_index if self.class_vocabulary == "detection" else cell_index
            for source, unified in self.classes:
                try:
                    lookup(unified)
                except KeyError:
                    raise ValueError(
                        f"catalog entry {self.name!r}: class {source!r} -> {unified!r} does not resolve in the "
                        f"{self.class_vocabulary} vocabulary"
                    ) from None
        if self.kind == "staged" and self.reader not in READER_FORMATS:
            raise ValueError(
                f"catalog entry {self.name!r}: staged entries need a reader, got {self.reader!r}"
            )
        if self.sha256 is not None and (len(self.sha256) != 64 or not _is_hex(self.sha256)):
            raise ValueError(f"catalog entry {self.name!r}: sha256 must be 64 hex digits")

    @property
    def options(self) -> dict[str, Any]:
        """``reader_options`` as a fresh dict (safe to modify)."""
        return {key: _thaw(value) for key, value in self.reader_options}

    @property
    def class_map(self) -> dict[str, int]:
        """Source label -> index in the unified vocabulary (``DETECTION_CLASSES`` or ``CELL_CLASSES``)."""
        if self.classes is None:
            return {}
        lookup = detection_index if self.class_vocabulary == "detection" else cell_index
        return {source: lookup(unified) for source, unified in self.classes}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; unknown fields are ``None``."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "kind": self.kind,
            "tasks": [task.value for task in self.tasks],
            "paper_task": None if self.paper_task is None else self.paper_task.value,
            "disease": self.disease,
            "magnification": self.magnification,
            "native_format": self.native_format,
            "classes": None if self.classes is None else [list(pair) for pair in self.classes],
            "class_vocabulary": self.class_vocabulary,
            "license": self.license,
            "homepage": self.homepage,
            "download_url": self.download_url,
            "sha256": self.sha256,
            "size": self.size,
            "paper_url": self.paper_url,
            "citation": self.citation,
            "paper_ref": self.paper_ref,
            "aliases": list(self.aliases),
            "reader": self.reader,
            "reader_options": self.options,
            "corresponds_to": list(self.corresponds_to),
            "origin": self.origin,
            "subset": self.subset,
            "notes": self.notes,
        }


def display(value: Any) -> str:
    """Text for a field value: ``None`` and empty values read "unknown"."""
    if value is None or value == "" or value == () or value == []:
        return UNKNOWN_TEXT
    if isinstance(value, Task):
        return value.value
    if isinstance(value, (tuple, list)):
        return ", ".join(display(item) for item in value)
    return str(value)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def freeze_options(options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Reader options as the hashable ``reader_options`` of an entry (mappings -> pairs, lists -> tuples)."""

    def freeze_value(value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple((key, freeze_value(item)) for key, item in value.items())
        if isinstance(value, list):
            return tuple(freeze_value(item) for item in value)
        return value

    return tuple((key, freeze_value(value)) for key, value in options.items())


def _thaw(value: Any) -> Any:
    # Frozen mappings are tuples of (str, value) pairs; everything else stays as is (json-able).
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in value)
    ):
        return {key: _thaw(item) for key, item in value}
    return value
