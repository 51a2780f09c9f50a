"""The reader protocol every native-format reader implements, and the registry used by format detection.

A reader is a class with:

- ``name``: short format name used on the command line (``"voc"``, ``"yolo"`` ...);
- ``description``: one line for ``unihema data check --help``;
- ``priority`` (optional, default 50): order in which :func:`detect_format` tries readers, lowest first;
- ``sniff(root) -> bool``: True when the folder looks like this format (cheap: file names, a few bytes);
- ``read(root, dataset=..., **options) -> ReadResult``: every sample it can load, plus what it skipped
  (with file and reason) and what it fixed. A truly unreadable file is skipped with a reason naming it;
  the rest of the dataset still loads. Pointed at a folder of another format, ``read`` raises
  :class:`WrongFormatError` with one sentence saying what was expected and what was found.

Readers register themselves with :func:`register_reader`; :func:`detect_format` tries each ``sniff``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from unihema.data.schema import ReadResult


class WrongFormatError(ValueError):
    """A folder does not hold the format a reader expects."""


class Reader(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]

    def sniff(self, root: Path) -> bool: ...

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


def detect_format(root: Path) -> str:
    """Name of the first reader whose ``sniff`` accepts ``root``; ``WrongFormatError`` if none does."""
    load_all_readers()
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    # Lower `priority` is tried first: specific layouts before generic ones (class folders last).
    for name, cls in sorted(READERS.items(), key=lambda item: getattr(item[1], "priority", 50)):
        if cls().sniff(root):
            return name
    raise WrongFormatError(f"{root}: no known dataset format recognised (tried {', '.join(READERS)})")


def load_all_readers() -> None:
    """Import every reader module so that they register themselves."""
    import unihema.data.formats  # noqa: F401  (the package imports its reader modules)
