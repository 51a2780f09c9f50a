"""The reader protocol every native-format reader implements, and the registry used by format detection.

A reader is a class with:

- ``name``: short format name used on the command line (``"voc"``, ``"yolo"`` ...);
- ``description``: one line for ``unihema data check --help``;
- ``expects``: one sentence saying what the reader looks for (shown when no format is recognised);
- ``priority`` (optional, default 50): order in which :func:`detect_format` tries readers, lowest first;
- ``option_names`` (optional): the options of ``read`` when it takes ``**options`` (else its keyword-only
  parameters are its options, see :func:`reader_options`);
- ``sniff(root) -> bool``: True when the folder looks like this format (cheap: file names, a few bytes);
- ``explain(root, options=None) -> str | None``: which files made the folder match (the rule shown by
  ``unihema data check``, e.g. "364 XML files with <annotation> roots in 'Annotations/' paired by stem with
  364 images in 'JPEGImages/'"), or ``None`` when it does not match;
- ``read(root, dataset=..., **options) -> ReadResult``: every sample it can load, plus what it skipped
  (with file and reason) and what it fixed. A truly unreadable file is skipped with a reason naming it;
  the rest of the dataset still loads. Pointed at a folder of another format, ``read`` raises
  :class:`WrongFormatError` with one sentence saying what was expected and what was found.

Readers register themselves with :func:`register_reader`; :func:`detect` tries each ``explain`` and says
which rule matched, or which folders it looked in and what each reader expected.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from unihema.data.formats._common import describe_search
from unihema.data.schema import ReadResult


class WrongFormatError(ValueError):
    """A folder does not hold the format a reader expects."""


class Reader(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    expects: ClassVar[str]

    def sniff(self, root: Path) -> bool: ...

    def explain(self, root: Path, options: Mapping[str, Any] | None = None) -> str | None: ...

    def read(self, root: Path, dataset: str | None = None, **options: Any) -> ReadResult: ...


READERS: dict[str, type] = {}


def register_reader(cls: type) -> type:
    """Class decorator adding a reader to :data:`READERS` under ``cls.name``."""
    if cls.name in READERS:
        raise ValueError(f"reader {cls.name!r} registered twice")
    READERS[cls.name] = cls
    return cls


def get_reader(name: str) -> Reader:
    load_all_readers()
    try:
        return READERS[name]()
    except KeyError:
        raise KeyError(f"unknown format {name!r}; known formats: {', '.join(sorted(READERS))}") from None


def reader_options(reader: Reader) -> tuple[str, ...]:
    """The option names ``reader.read`` accepts: its ``option_names``, else its keyword-only parameters."""
    names = getattr(reader, "option_names", None)
    if names is not None:
        return tuple(names)
    parameters = inspect.signature(reader.read).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class Detection:
    """The format a folder was recognised as, and why.

    Attributes:
        format: the reader's name.
        rule: which files matched, in the reader's words (``Reader.explain``).
    """

    format: str
    rule: str

    def __str__(self) -> str:
        return f"{self.format}: {self.rule}"


def _by_priority() -> list[tuple[str, type]]:
    # Lower `priority` is tried first: specific layouts before generic ones (class folders last).
    load_all_readers()
    return sorted(READERS.items(), key=lambda item: getattr(item[1], "priority", 50))


def detect(root: Path, options: Mapping[str, Any] | None = None) -> Detection:
    """The first reader (by priority) whose ``explain`` accepts ``root``, with the rule that matched.

    ``options`` (reader options such as ``images_root``) are shown to every reader. ``WrongFormatError``
    when none matches: the message names the folders looked in and what each reader expected.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    for name, cls in _by_priority():
        reader = cls()
        explain = getattr(reader, "explain", None)
        rule = explain(root, options) if explain is not None else ("matched" if reader.sniff(root) else None)
        if rule:
            return Detection(name, rule)
    expected = "; ".join(
        f"{name}: {getattr(cls, 'expects', cls.description)}" for name, cls in _by_priority()
    )
    raise WrongFormatError(
        f"{root}: no known dataset format recognised; looked in {describe_search(root)}; expected one of "
        f"{expected}"
    )


def detect_format(root: Path) -> str:
    """Name of the first reader that recognises ``root`` (see :func:`detect`); ``WrongFormatError`` if none does."""
    return detect(root).format


def load_all_readers() -> None:
    """Import every reader module so that they register themselves."""
    import unihema.data.formats  # noqa: F401  (the package imports its reader modules)
