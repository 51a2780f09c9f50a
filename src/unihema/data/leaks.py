"""Images shared between samples of different splits: find them by content and give each image one split.

Public blood-smear datasets re-publish each other's images under new names: TXL-PBC contains BCCD and PBC
images, WBCAtt annotates PBC cells. Without this step a model is tested on images it was trained on.
:func:`resolve_cross_dataset_leaks` hashes the pixels' source of every sample
(:func:`unihema.data.splits.content_hashes`) and resolves each image whose copies have different splits
with one of three actions (:data:`RESOLVE_ACTIONS`):

- ``"align"``: every copy of the image gets one split. A split the dataset published wins over one that
  :func:`~unihema.data.splits.assign_splits` drew by hash (several published splits: the strictest,
  ``test`` > ``val`` > ``train``); without a published one the strictest split of the copies wins. A
  hash-split copy takes the winning split, even ``train`` (a PBC test image that WBCAtt publishes in its
  training split is trained on in both, instead of being lost to training); a published training copy of
  a winning val/test image moves there; a published val/test copy never changes. The changes of
  hash-split samples are :meth:`LeakReport.split_overrides`, which evaluation applies to the splits it
  re-derives.
- ``"drop"``: training copies of a val/test image are removed (evaluation sets stay as they are).
- ``"move"``: training copies of a val/test image are given that split (``test`` wins over ``val``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from unihema.atomic import atomic_write_text
from unihema.data.schema import FileImage, Sample
from unihema.data.splits import (
    EVAL_SPLITS,
    HASH_SPLIT_ORIGIN,
    SPLITS,
    HashCache,
    content_hashes,
    is_hash_split,
)

RESOLVE_ACTIONS: tuple[str, ...] = ("align", "drop", "move")
_STRICTNESS = {"train": 0, "val": 1, "test": 2}  # the strictest split of an image's copies wins
_SOURCE_ORIGIN = "source"  # SplitChange.split_origin of a published split


@dataclass(frozen=True)
class Leak:
    """A training sample whose image is also an evaluation image (found before any change)."""

    digest: str
    train_dataset: str
    train_sample_id: str
    train_path: str | None
    eval_dataset: str
    eval_sample_id: str
    eval_split: str
    eval_path: str | None


@dataclass(frozen=True)
class SplitChange:
    """A sample given another split (``"move"``, ``"align"``) to match a copy of its image.

    Attributes:
        digest: content hash of the image.
        dataset, sample_id, path: the sample that changed.
        old_split, new_split: its split before and after.
        split_origin: ``"hash"`` when its old split was drawn by hash, ``"source"`` when published.
        other_dataset, other_sample_id, other_path: the copy whose split it took.
    """

    digest: str
    dataset: str
    sample_id: str
    path: str | None
    old_split: str
    new_split: str
    split_origin: str
    other_dataset: str
    other_sample_id: str
    other_path: str | None


@dataclass
class PairOutcome:
    """What happened to the samples of one dataset that share their image with another dataset's."""

    moved_to_train: int = 0
    moved_to_eval: int = 0
    dropped: int = 0

    def describe(self) -> str:
        parts = [
            f"{self.moved_to_train} moved into training",
            f"{self.moved_to_eval} moved to val/test",
            f"{self.dropped} dropped",
        ]
        return ", ".join(parts)


@dataclass
class LeakReport:
    """What :func:`resolve_cross_dataset_leaks` found and did.

    Attributes:
        action: ``"align"``, ``"drop"`` or ``"move"``.
        leaks: one entry per training sample whose image was also a val/test image before the action
            (paired with one evaluation copy, the strictest).
        changes: one entry per sample given another split (``"move"`` and ``"align"``).
        removed: number of training samples dropped (``"drop"``; 0 otherwise).
        moved: number of samples moved to a val/test split.
        moved_to_train: number of samples moved into training (``"align"`` only: hash-split val/test
            copies of an image another dataset publishes for training).
        hashed: number of samples hashed.
    """

    action: str
    leaks: list[Leak] = field(default_factory=list)
    changes: list[SplitChange] = field(default_factory=list)
    removed: int = 0
    moved: int = 0
    moved_to_train: int = 0
    hashed: int = 0

    def by_pair(self) -> dict[tuple[str, str], int]:
        """Leak counts per ``(train_dataset, eval_dataset)``."""
        counts: dict[tuple[str, str], int] = {}
        for leak in self.leaks:
            key = (leak.train_dataset, leak.eval_dataset)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def outcomes(self) -> dict[tuple[str, str], PairOutcome]:
        """Per ``(dataset, other_dataset)``: how many samples of ``dataset`` were moved into training,
        moved to val/test or dropped because of a copy of their image in ``other_dataset``."""
        outcomes: dict[tuple[str, str], PairOutcome] = {}
        for change in self.changes:
            outcome = outcomes.setdefault((change.dataset, change.other_dataset), PairOutcome())
            if change.new_split == "train":
                outcome.moved_to_train += 1
            else:
                outcome.moved_to_eval += 1
        if self.action == "drop":
            for leak in self.leaks:
                outcomes.setdefault((leak.train_dataset, leak.eval_dataset), PairOutcome()).dropped += 1
        return outcomes

    def split_overrides(self) -> dict[str, dict[str, str]]:
        """``{dataset: {sample_id: new_split}}`` of the hash-split samples that changed split: evaluation
        re-derives hash splits and must apply these to see the splits training used."""
        overrides: dict[str, dict[str, str]] = {}
        for change in self.changes:
            if change.split_origin == HASH_SPLIT_ORIGIN:
                overrides.setdefault(change.dataset, {})[change.sample_id] = change.new_split
        return overrides

    def summary(self) -> str:
        total = PairOutcome(self.moved_to_train, self.moved, self.removed)
        lines = [
            f"{len(self.leaks)} training samples share their image with a val/test sample ({self.action}): "
            + total.describe()
        ]
        for (dataset, other), outcome in sorted(self.outcomes().items()):
            lines.append(f"  {dataset} (image also in {other}): {outcome.describe()}")
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """Write every leak (``"drop"``, ``"move"``) or every split change (``"align"``) as a CSV row,
        atomically; the columns are the fields of :class:`Leak` or :class:`SplitChange`."""
        rows: Sequence[Leak | SplitChange] = self.changes if self.action == "align" else self.leaks
        columns = [f.name for f in dataclasses.fields(SplitChange if self.action == "align" else Leak)]
        lines = [",".join(columns)]
        lines += [",".join(_csv_cell(getattr(row, c)) for c in columns) for row in rows]
        atomic_write_text(Path(path), "\n".join(lines) + "\n")


def resolve_cross_dataset_leaks(
    samples_by_dataset: Mapping[str, list[Sample]],
    *,
    action: Literal["align", "drop", "move"] = "drop",
    same_dataset: bool = True,
    cache: HashCache | None = None,
    num_threads: int = 4,
) -> tuple[dict[str, list[Sample]], LeakReport]:
    """Resolve images shared by samples of different splits (see the module docstring for the actions).

    Args:
        samples_by_dataset: split samples per dataset (run :func:`~unihema.data.splits.assign_splits`
            first; a sample without a split raises ``ValueError``).
        action: ``"align"`` gives every copy of an image one split (published splits win over hash
            splits, evaluation sets keep their published content); ``"drop"`` removes the leaking
            training samples (evaluation sets stay as they are); ``"move"`` gives them the evaluation split
            they leak into (``"test"`` wins over ``"val"``), which keeps their labels but changes that
            dataset's evaluation set.
        same_dataset: also resolve copies inside one dataset (duplicate files across its own splits, or
            the same image used by two tasks with different splits). With False only pairs from
            different datasets count (``"align"``: an image whose copies all belong to one dataset is
            left as it is).
        cache: hash cache to reuse (and fill); a fresh in-memory one when omitted.
        num_threads: threads used to hash files.

    Returns:
        ``(samples_by_dataset, report)``: new lists (inputs are not modified), same keys and order.
    """
    if action not in RESOLVE_ACTIONS:
        raise ValueError(f"action must be one of {RESOLVE_ACTIONS}, got {action!r}")
    cache = cache or HashCache()
    flat: list[tuple[str, Sample]] = []
    for name, samples in samples_by_dataset.items():
        for sample in samples:
            if sample.split not in SPLITS:
                raise ValueError(
                    f"dataset {name!r}, sample {sample.sample_id!r}: split {sample.split!r} is not one of "
                    f"{SPLITS}; call assign_splits first"
                )
            flat.append((name, sample))
    samples = [sample for _, sample in flat]
    digests = content_hashes(samples, cache, num_threads=num_threads)

    leaks = _find_leaks(samples, digests, same_dataset)
    # index -> (the split it moves to, None to drop it; the copy whose split that is)
    targets: Mapping[int, tuple[str | None, Sample]]
    if action == "align":
        targets = _aligned_splits(samples, digests, same_dataset)
    else:
        targets = {i: (None if action == "drop" else other.split, other) for i, (_, other) in leaks.items()}

    report = LeakReport(action=action, leaks=[leak for leak, _ in leaks.values()], hashed=len(flat))
    resolved: dict[str, list[Sample]] = {name: [] for name in samples_by_dataset}
    for index, ((name, sample), digest) in enumerate(zip(flat, digests)):
        if index not in targets:
            resolved[name].append(sample)
            continue
        split, other = targets[index]
        if split is None:
            report.removed += 1
            continue
        resolved[name].append(dataclasses.replace(sample, split=split))
        report.changes.append(
            SplitChange(
                digest=digest, dataset=sample.dataset, sample_id=sample.sample_id, path=_path_of(sample),
                old_split=str(sample.split), new_split=split,
                split_origin=HASH_SPLIT_ORIGIN if is_hash_split(sample) else _SOURCE_ORIGIN,
                other_dataset=other.dataset, other_sample_id=other.sample_id, other_path=_path_of(other),
            )
        )  # fmt: skip
        if split == "train":
            report.moved_to_train += 1
        else:
            report.moved += 1
    cache.save()
    return resolved, report


def _find_leaks(
    samples: list[Sample], digests: list[str], same_dataset: bool
) -> dict[int, tuple[Leak, Sample]]:
    """Index of every training sample whose image is a val/test image -> the leak and that copy (a test copy
    before a val copy: a move goes to the strictest split)."""
    eval_copies: dict[str, list[Sample]] = {}
    for sample, digest in zip(samples, digests):
        if sample.split in EVAL_SPLITS:
            eval_copies.setdefault(digest, []).append(sample)
    for copies in eval_copies.values():
        copies.sort(key=lambda s: (s.split != "test", s.dataset, s.sample_id))

    leaks: dict[int, tuple[Leak, Sample]] = {}
    for index, (sample, digest) in enumerate(zip(samples, digests)):
        if sample.split != "train" or digest not in eval_copies:
            continue
        candidates = [e for e in eval_copies[digest] if same_dataset or e.dataset != sample.dataset]
        if not candidates:
            continue
        other = candidates[0]
        leak = Leak(
            digest=digest, train_dataset=sample.dataset, train_sample_id=sample.sample_id,
            train_path=_path_of(sample), eval_dataset=other.dataset, eval_sample_id=other.sample_id,
            eval_split=str(other.split), eval_path=_path_of(other),
        )  # fmt: skip
        leaks[index] = (leak, other)
    return leaks


def _aligned_splits(
    samples: list[Sample], digests: list[str], same_dataset: bool
) -> dict[int, tuple[str, Sample]]:
    """``"align"``: index of every sample whose split changes -> its new split and the copy it takes it
    from."""
    groups: dict[str, list[int]] = {}
    for index, digest in enumerate(digests):
        groups.setdefault(digest, []).append(index)
    targets: dict[int, tuple[str, Sample]] = {}
    for members in groups.values():
        copies = [samples[i] for i in members]
        if len({copy.split for copy in copies}) < 2:
            continue
        if not same_dataset and len({copy.dataset for copy in copies}) < 2:
            continue
        deciding = [copy for copy in copies if not is_hash_split(copy)] or copies
        winner = max((str(copy.split) for copy in deciding), key=_STRICTNESS.__getitem__)
        holders = sorted(
            (copy for copy in deciding if copy.split == winner), key=lambda s: (s.dataset, s.sample_id)
        )
        for index, copy in zip(members, copies):
            # A published val/test copy keeps its split: evaluation sets keep their published content.
            if copy.split == winner or not (is_hash_split(copy) or copy.split == "train"):
                continue
            # Name a copy of another dataset when there is one: that is the pair the report counts.
            other = next((h for h in holders if h.dataset != copy.dataset), holders[0])
            targets[index] = (winner, other)
    return targets


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
