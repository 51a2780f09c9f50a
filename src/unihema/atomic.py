"""Atomic file writes: every file UniHema writes appears complete or not at all.

Each writer writes a temporary file in the destination folder, flushes it to disk and moves it onto the
final name with ``os.replace`` (atomic on POSIX and Windows within one file system). On any error the
temporary file is removed and an existing file of that name is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], None], *, suffix: str = ".tmp"
) -> Path:
    """Call ``write(temporary_path)`` and move the result onto ``path``; returns ``path``.

    ``suffix`` is the temporary file's suffix (writers that pick a format from the file name, such as
    PIL's ``save``, need the real one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def atomic_save_image(image: Image.Image, path: str | os.PathLike[str], format: str | None = None) -> Path:
    """``image.save`` to ``path`` atomically (format from ``format`` or the file suffix)."""
    path = Path(path)
    return atomic_write(
        path, lambda temporary: image.save(temporary, format=format), suffix=path.suffix or ".png"
    )
