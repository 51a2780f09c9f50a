"""Finding a dataset's files by what they hold and how they pair, not by the names of their folders.

The readers that pair annotation files with images (``voc``, ``yolo``, ``masks``, ``points``) look at the
dataset root and its sub-folders down to :data:`~unihema.data.formats._common.MAX_SEARCH_DEPTH` levels,
recognise their annotation files by content (an ``<annotation>`` XML root, ``class cx cy w h`` lines,
few-colour mask images, ``x y class`` lines), and take as the image folder of each annotation folder the
folder whose images share the most file stems with it (the annotation folder itself included). So a VOC
set in ``Images/`` + ``XML Files/`` reads like one in ``JPEGImages/`` + ``Annotations/``.

:class:`FolderIndex` lists each folder once per read; :meth:`FolderIndex.image_folder_for` does the pairing.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from unihema.data.formats._common import (
    IMAGE_EXTENSIONS,
    MAX_SEARCH_DEPTH,
    candidate_dirs,
    folder_name,
    is_hidden,
)

SNIFF_FILES = 3
"""How many annotation files of a folder are opened to recognise their content (cheap detection)."""

MIN_PAIRED_SHARE = 0.5
"""Share of a folder's annotation files that must have an image of the same stem for the folders to pair."""


def first_lines(path: Path, count: int = 3) -> list[str]:
    """The first ``count`` non-empty lines of a text file (empty when unreadable)."""
    lines: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.strip():
                    lines.append(line.strip())
                    if len(lines) >= count:
                        break
    except OSError:
        return []
    return lines


@dataclass(frozen=True)
class FolderPairing:
    """An annotation folder and the image folder paired with it by file stem.

    Attributes:
        annotations: the folder of the annotation files (XML, label text files, masks).
        images: the folder of the images (may be ``annotations`` itself).
        annotation_files: annotation files in ``annotations``.
        paired: annotation files with an image of the same stem in ``images``.
    """

    annotations: Path
    images: Path
    annotation_files: int
    paired: int

    def describe(self, what: str, root: Path) -> str:
        """``"364 XML files ... in 'XML Files/' paired by stem with 364 images in 'Images/'"``."""
        where = "beside them" if self.images == self.annotations else f"in {folder_name(self.images, root)}"
        return (
            f"{self.annotation_files} {what} in {folder_name(self.annotations, root)} paired by stem with "
            f"{self.paired} images {where}"
        )


@dataclass
class FolderIndex:
    """The folders a reader searches under ``root`` and their files, each folder listed once.

    Attributes:
        root: the dataset root.
        max_depth: how many folder levels below the root are searched.
        dirs: the root and its visible sub-folders down to ``max_depth``, sorted per level.
    """

    root: Path
    max_depth: int = MAX_SEARCH_DEPTH
    dirs: list[Path] = field(default_factory=list)
    _files: dict[Path, list[Path]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.dirs:
            self.dirs = candidate_dirs(self.root, self.max_depth) if self.root.is_dir() else []

    def files(self, folder: Path, suffixes: Collection[str] | None = None) -> list[Path]:
        """Visible files of ``folder`` (sorted), optionally only those whose lower-case suffix is listed."""
        if folder not in self._files:
            try:
                self._files[folder] = sorted(p for p in folder.iterdir() if p.is_file() and not is_hidden(p))
            except OSError:
                self._files[folder] = []
        listed = self._files[folder]
        return listed if suffixes is None else [p for p in listed if p.suffix.lower() in suffixes]

    def images(self, folder: Path) -> dict[str, Path]:
        """Image files of ``folder`` by stem (the first by name when several share a stem)."""
        found: dict[str, Path] = {}
        for path in self.files(folder, IMAGE_EXTENSIONS):
            found.setdefault(path.stem, path)
        return found

    def image_folder_for(
        self, annotations: Path, keys: Collection[str], exclude: Iterable[Path] = ()
    ) -> FolderPairing | None:
        """The folder whose images match the most of ``keys`` (the stems of the annotation files of
        ``annotations``), when they match at least :data:`MIN_PAIRED_SHARE` of them. Ties go to the folder
        whose path shares the most words with the annotation folder's (``Valid boxes/`` pairs with
        ``Valid pictures/``, not ``Train pictures/``), then to the folder searched first. Folders in
        ``exclude`` are not considered."""
        if not keys:
            return None
        skip = set(exclude)
        words = self._words(annotations)
        best: tuple[int, int, Path] | None = None
        for folder in self.dirs:
            if folder in skip:
                continue
            paired = len(set(keys) & set(self.images(folder)))
            if not paired:
                continue
            shared = len(words & self._words(folder))
            if best is None or (paired, shared) > best[:2]:
                best = (paired, shared, folder)
        if best is None or best[0] < MIN_PAIRED_SHARE * len(keys):
            return None
        return FolderPairing(annotations, best[2], len(keys), best[0])

    def _words(self, folder: Path) -> set[str]:
        """Lower-case words of ``folder``'s path below the root (``Valid boxes/`` -> valid, boxes)."""
        try:
            parts = folder.relative_to(self.root).parts
        except ValueError:
            parts = folder.parts
        return {word for part in parts for word in re.split(r"[^a-z0-9]+", part.lower()) if word}
