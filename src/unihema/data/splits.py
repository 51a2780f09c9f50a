"""Deterministic train/val/test splits and the content hashes that find images shared between datasets.

Two independent steps:

1. :func:`assign_splits` gives every sample a split. A sample that already carries the source dataset's
   own split (``Sample.split``) keeps it; the others are split by a hash of ``(seed, dataset, group)``,
   where ``group`` is ``Sample.extra["split_group"]`` when a reader sets it (several samples cut from
   one source image must share a split) and the ``sample_id`` otherwise. Because the assignment of a
   sample depends only on its own key, adding samples to a dataset never moves existing ones. A
   hash-split copy is marked ``Sample.extra["split_origin"] = "hash"`` (:func:`is_hash_split`), so that
   later steps can tell a split the dataset published from one drawn here.

2. :func:`unihema.data.leaks.resolve_cross_dataset_leaks` (also importable from here) finds images that
   are byte-for-byte identical across samples of different splits (of any dataset, and of any task) and
   gives them one split, or drops or moves the training copies. Public blood-smear datasets re-publish
   each other's images under new names (e.g. TXL-PBC contains BCCD and PBC images), so without this step
   a model is tested on images it was trained on. The check hashes file contents (BLAKE2b, this module),
   cached per ``(path, mtime, size)`` so that repeated runs only re-hash changed files.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unihema.atomic import atomic_write_text
from unihema.data.schema import ArrayImage, FileImage, Sample

SPLITS: tuple[str, ...] = ("train", "val", "test")
EVAL_SPLITS: frozenset[str] = frozenset({"val", "test"})
SPLIT_GROUP_KEY = "split_group"
"""``Sample.extra`` key naming the group a sample is split with (e.g. the source image of a crop)."""
SPLIT_ORIGIN_KEY = "split_origin"
"""``Sample.extra`` key that :func:`assign_splits` sets on the samples it splits by hash."""
HASH_SPLIT_ORIGIN = "hash"
"""Value of ``Sample.extra[SPLIT_ORIGIN_KEY]`` for a split drawn by :func:`hash_split`, not published."""

_HASH_DIGEST_BYTES = 20  # 160-bit BLAKE2b: collision odds are negligible for any corpus size
_HASH_CHUNK_BYTES = 1 << 20
_SPLIT_HASH_BYTES = 8  # 64 bits of the split hash mapped to [0, 1)


@dataclass(frozen=True)
class SplitConfig:
    """How samples without a split of their own are split.

    Attributes:
        val_fraction: expected fraction of groups assigned to ``"val"``, in ``[0, 1)``.
        test_fraction: expected fraction of groups assigned to ``"test"``, in ``[0, 1)``;
            ``val_fraction + test_fraction`` must be below 1 so that training gets data.
        seed: salt of the hash; changing it draws a different (but again stable) split.
        respect_source_split: keep ``Sample.split`` where the dataset provides one. When False every
            sample is re-split by hash (useful when a source split is known to be unusable).
    """

    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    respect_source_split: bool = True

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"SplitConfig.{name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"SplitConfig: val_fraction + test_fraction = {self.val_fraction + self.test_fraction} "
                "leaves no training data (must be < 1)"
            )
        if not isinstance(self.seed, int):
            raise ValueError(f"SplitConfig.seed must be an int, got {self.seed!r}")


def split_key(sample: Sample) -> str:
    """The string a sample is hash-split by: its dataset plus its split group (default: sample id)."""
    group = sample.extra.get(SPLIT_GROUP_KEY, sample.sample_id)
    return f"{sample.dataset}/{group}"


def hash_split(key: str, config: SplitConfig) -> str:
    """Split of ``key`` under ``config``: a uniform draw in [0, 1) from a keyed hash, cut at the fractions."""
    digest = hashlib.blake2b(
        key.encode("utf-8"), digest_size=_SPLIT_HASH_BYTES, key=str(config.seed).encode("utf-8")
    ).digest()
    u = int.from_bytes(digest, "big") / float(1 << (8 * _SPLIT_HASH_BYTES))
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.val_fraction:
        return "val"
    return "train"


def assign_splits(samples: Iterable[Sample], config: SplitConfig | None = None) -> list[Sample]:
    """Copies of ``samples`` that all have a split (see the module docstring). Inputs are not modified.

    A sample keeping its source split is returned as is; a hash-split one is a copy whose ``extra`` also
    holds ``SPLIT_ORIGIN_KEY: HASH_SPLIT_ORIGIN``. Raises ``ValueError`` naming the sample when a source
    split is not one of :data:`SPLITS`.
    """
    config = config or SplitConfig()
    out: list[Sample] = []
    for sample in samples:
        split = sample.split if config.respect_source_split else None
        if split is None:
            extra = {**sample.extra, SPLIT_ORIGIN_KEY: HASH_SPLIT_ORIGIN}
            out.append(dataclasses.replace(sample, split=hash_split(split_key(sample), config), extra=extra))
        elif split not in SPLITS:
            raise ValueError(
                f"sample {sample.dataset}/{sample.sample_id}: split {split!r} is not one of {SPLITS}"
            )
        else:
            out.append(sample)
    return out


def is_hash_split(sample: Sample) -> bool:
    """Whether the split of ``sample`` was drawn by :func:`assign_splits` rather than published with it."""
    return sample.extra.get(SPLIT_ORIGIN_KEY) == HASH_SPLIT_ORIGIN


# --------------------------------------------------------------------------------------------------
# Content hashing


class HashCache:
    """Content hashes of files, reused while a file's ``(mtime_ns, size)`` is unchanged.

    Optionally persisted as JSON at ``path`` (written atomically by :meth:`save`), so a corpus of
    hundreds of thousands of images is hashed once, not at every training start.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, tuple[int, int, str]] = {}
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self._entries = {k: (int(v[0]), int(v[1]), str(v[2])) for k, v in raw.items()}
            except (ValueError, TypeError, IndexError, AttributeError) as err:
                raise ValueError(
                    f"{self.path}: not a valid hash cache ({err}); delete it to rebuild"
                ) from err

    def __len__(self) -> int:
        return len(self._entries)

    def file_hash(self, path: str | os.PathLike[str]) -> str:
        """Hex BLAKE2b digest of the file's bytes (from the cache when the file is unchanged)."""
        resolved = str(Path(path).resolve())
        stat = os.stat(resolved)
        cached = self._entries.get(resolved)
        if cached is not None and cached[0] == stat.st_mtime_ns and cached[1] == stat.st_size:
            return cached[2]
        digest = _hash_file(resolved)
        self._entries[resolved] = (stat.st_mtime_ns, stat.st_size, digest)
        self._dirty = True
        return digest

    def save(self) -> None:
        """Write the cache to ``path`` atomically (no-op without a path or without changes)."""
        if self.path is None or not self._dirty:
            return
        atomic_write_text(self.path, json.dumps({k: list(v) for k, v in self._entries.items()}))
        self._dirty = False


def _hash_file(path: str) -> str:
    hasher = hashlib.blake2b(digest_size=_HASH_DIGEST_BYTES)
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def sample_content_hash(sample: Sample, cache: HashCache | None = None) -> str:
    """Hash of the pixels' source of a sample.

    File-backed samples hash the bytes of ``source_path`` (or of the image file), ignoring any crop: a
    training crop of an image that is a test image elsewhere still leaks it. In-memory images hash
    their array bytes and shape. Raises ``TypeError`` for image references it cannot hash.
    """
    path = sample.source_path
    if path is None and isinstance(sample.image, FileImage):
        path = sample.image.path
    if path is not None:
        return (cache or HashCache()).file_hash(path)
    if isinstance(sample.image, ArrayImage):
        array = np.ascontiguousarray(sample.image.array)
        hasher = hashlib.blake2b(digest_size=_HASH_DIGEST_BYTES)
        hasher.update(str((array.shape, array.dtype.str)).encode())
        hasher.update(array.tobytes())
        return "array:" + hasher.hexdigest()
    raise TypeError(
        f"sample {sample.dataset}/{sample.sample_id}: cannot hash image of type "
        f"{type(sample.image).__name__} without a source_path"
    )


def content_hashes(
    samples: Iterable[Sample], cache: HashCache | None = None, num_threads: int = 4
) -> list[str]:
    """:func:`sample_content_hash` of every sample, reading files on ``num_threads`` threads."""
    cache = cache or HashCache()
    items = list(samples)
    if num_threads <= 1 or len(items) < 2:
        return [sample_content_hash(s, cache) for s in items]
    # hashlib releases the GIL on large buffers, so threads overlap file reads and hashing.
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        return list(pool.map(lambda s: sample_content_hash(s, cache), items))


def read_duplicate_hints(csv_path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Pairs of relative paths listed in a precomputed duplicates CSV (first two columns).

    Only a hint for reports and tests: :func:`resolve_cross_dataset_leaks` always hashes contents.
    """
    path = Path(csv_path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or len(header) < 2:
            raise ValueError(f"{path}: expected a header with at least two path columns")
        return [(row[0], row[1]) for row in reader if len(row) >= 2]


_LEAK_NAMES = frozenset(
    {"Leak", "LeakReport", "PairOutcome", "RESOLVE_ACTIONS", "SplitChange", "resolve_cross_dataset_leaks"}
)


def __getattr__(name: str) -> Any:
    # The leak resolution lives in unihema.data.leaks (which imports this module); re-exported lazily.
    if name in _LEAK_NAMES:
        from unihema.data import leaks

        return getattr(leaks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
