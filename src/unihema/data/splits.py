"""Deterministic train/val/test splits and cross-dataset de-duplication.

Two independent steps:

1. :func:`assign_splits` gives every sample a split. A sample that already carries the source dataset's
   own split (``Sample.split``) keeps it; the others are split by a hash of ``(seed, dataset, group)``,
   where ``group`` is ``Sample.extra["split_group"]`` when a reader sets it (several samples cut from
   one source image must share a split) and the ``sample_id`` otherwise. Because the assignment of a
   sample depends only on its own key, adding samples to a dataset never moves existing ones.

2. :func:`resolve_cross_dataset_leaks` finds training samples whose image is byte-for-byte identical
   to a validation or test image (of any dataset, and of any task) and drops them from training, or
   moves them to the evaluation split they leak into. Public blood-smear datasets re-publish each
   other's images under new names (e.g. TXL-PBC contains BCCD and PBC images), so without this step a
   model is tested on images it was trained on. The check hashes file contents (BLAKE2b), cached per
   ``(path, mtime, size)`` so that repeated runs only re-hash changed files.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from unihema.atomic import atomic_write_text
from unihema.data.schema import ArrayImage, FileImage, Sample

SPLITS: tuple[str, ...] = ("train", "val", "test")
EVAL_SPLITS: frozenset[str] = frozenset({"val", "test"})
SPLIT_GROUP_KEY = "split_group"
"""``Sample.extra`` key naming the group a sample is split with (e.g. the source image of a crop)."""

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

    Raises ``ValueError`` naming the sample when a source split is not one of :data:`SPLITS`.
    """
    config = config or SplitConfig()
    out: list[Sample] = []
    for sample in samples:
        split = sample.split if config.respect_source_split else None
        if split is None:
            split = hash_split(split_key(sample), config)
        elif split not in SPLITS:
            raise ValueError(
                f"sample {sample.dataset}/{sample.sample_id}: split {split!r} is not one of {SPLITS}"
            )
        out.append(sample if split == sample.split else dataclasses.replace(sample, split=split))
    return out


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


# --------------------------------------------------------------------------------------------------
# Leak resolution


@dataclass(frozen=True)
class Leak:
    """A training sample whose image is also an evaluation image."""

    digest: str
    train_dataset: str
    train_sample_id: str
    train_path: str | None
    eval_dataset: str
    eval_sample_id: str
    eval_split: str
    eval_path: str | None


@dataclass
class LeakReport:
    """What :func:`resolve_cross_dataset_leaks` found and did.

    Attributes:
        action: ``"drop"`` or ``"move"``.
        leaks: one entry per leaking training sample (paired with one evaluation copy).
        removed: number of training samples dropped (``action="drop"``).
        moved: number of training samples moved to an evaluation split (``action="move"``).
        hashed: number of samples hashed.
    """

    action: str
    leaks: list[Leak] = field(default_factory=list)
    removed: int = 0
    moved: int = 0
    hashed: int = 0

    def by_pair(self) -> dict[tuple[str, str], int]:
        """Leak counts per ``(train_dataset, eval_dataset)``."""
        counts: dict[tuple[str, str], int] = {}
        for leak in self.leaks:
            key = (leak.train_dataset, leak.eval_dataset)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def summary(self) -> str:
        lines = [
            f"{len(self.leaks)} training samples share their image with a val/test sample ({self.action})"
        ]
        for (train, evaluated), count in sorted(self.by_pair().items()):
            lines.append(f"  {train} (train) = {evaluated} (val/test): {count}")
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """Write every leak as a CSV row (atomically)."""
        columns = [f.name for f in dataclasses.fields(Leak)]
        rows = [",".join(columns)]
        for leak in self.leaks:
            rows.append(",".join(_csv_cell(getattr(leak, c)) for c in columns))
        atomic_write_text(Path(path), "\n".join(rows) + "\n")


def resolve_cross_dataset_leaks(
    samples_by_dataset: Mapping[str, list[Sample]],
    *,
    action: Literal["drop", "move"] = "drop",
    same_dataset: bool = True,
    cache: HashCache | None = None,
    num_threads: int = 4,
) -> tuple[dict[str, list[Sample]], LeakReport]:
    """Remove (or move) training samples whose image is a validation/test image of another sample.

    Args:
        samples_by_dataset: split samples per dataset (run :func:`assign_splits` first; a sample
            without a split raises ``ValueError``).
        action: ``"drop"`` removes the leaking training samples (evaluation sets stay as published);
            ``"move"`` gives them the evaluation split they leak into (``"test"`` wins over ``"val"``),
            which keeps their labels but changes that dataset's evaluation set.
        same_dataset: also resolve leaks inside one dataset (duplicate files across its own splits, or
            the same image used by two tasks with different splits). With False only pairs from
            different datasets count.
        cache: hash cache to reuse (and fill); a fresh in-memory one when omitted.
        num_threads: threads used to hash files.

    Returns:
        ``(samples_by_dataset, report)``: new lists (inputs are not modified), same keys and order.
    """
    if action not in ("drop", "move"):
        raise ValueError(f"action must be 'drop' or 'move', got {action!r}")
    cache = cache or HashCache()
    flat: list[Sample] = []
    for name, samples in samples_by_dataset.items():
        for sample in samples:
            if sample.split not in SPLITS:
                raise ValueError(
                    f"dataset {name!r}, sample {sample.sample_id!r}: split {sample.split!r} is not one of "
                    f"{SPLITS}; call assign_splits first"
                )
            flat.append(sample)
    digests = content_hashes(flat, cache, num_threads=num_threads)

    # For every digest, the evaluation copies (test first: a move goes to the strictest split).
    eval_copies: dict[str, list[Sample]] = {}
    for sample, digest in zip(flat, digests):
        if sample.split in EVAL_SPLITS:
            eval_copies.setdefault(digest, []).append(sample)
    for copies in eval_copies.values():
        copies.sort(key=lambda s: (s.split != "test", s.dataset, s.sample_id))

    report = LeakReport(action=action, hashed=len(flat))
    leaking: dict[int, str] = {}  # id(sample) -> split it moves to
    for sample, digest in zip(flat, digests):
        if sample.split != "train" or digest not in eval_copies:
            continue
        candidates = [e for e in eval_copies[digest] if same_dataset or e.dataset != sample.dataset]
        if not candidates:
            continue
        other = candidates[0]
        report.leaks.append(
            Leak(
                digest=digest,
                train_dataset=sample.dataset,
                train_sample_id=sample.sample_id,
                train_path=_path_of(sample),
                eval_dataset=other.dataset,
                eval_sample_id=other.sample_id,
                eval_split=str(other.split),
                eval_path=_path_of(other),
            )
        )
        leaking[id(sample)] = str(other.split)

    resolved: dict[str, list[Sample]] = {}
    for name, samples in samples_by_dataset.items():
        kept: list[Sample] = []
        for sample in samples:
            target = leaking.get(id(sample))
            if target is None:
                kept.append(sample)
            elif action == "move":
                kept.append(dataclasses.replace(sample, split=target))
                report.moved += 1
            else:
                report.removed += 1
        resolved[name] = kept
    cache.save()
    return resolved, report


def _path_of(sample: Sample) -> str | None:
    if sample.source_path is not None:
        return str(sample.source_path)
    if isinstance(sample.image, FileImage):
        return str(sample.image.path)
    return None


def _csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    if any(ch in text for ch in ',"\n'):
        text = '"' + text.replace('"', '""') + '"'
    return text


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
