"""The data side of a training run: the samples of every stage, their loaders and the run's pre-processing.

:class:`CorpusCache` reads each dataset of a run once (the built-in synthetic corpus, manifests, the folders
of ``data.folders`` and/or real datasets of the catalog), :func:`stage_samples` gathers a stage's training
samples per task and :func:`build_stage_loader` batches them with
:class:`unihema.data.sampler.MultiTaskBatchSampler` (each rank gets its own share) and collects the
detection classes each (dataset, task) annotates.

A dataset listed under ``data.manifests`` stays on disk: its samples are
:class:`~unihema.data.manifest.ManifestDataset` views (8 bytes per sample) and a stage's datasets are
concatenated without being copied, so the memory of a run is bounded by its batches, not by its corpus.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unihema.data.schema import SYNTHETIC_DATASET, ReadResult, Sample, Task
from unihema.data.vocab import DETECTION_CLASSES, detection_index
from unihema.train.distributed import DistributedContext
from unihema.train.image_cache import cached_tasks
from unihema.train.stages import StageConfig, TrainConfig

DATASETS_ENV = "UNIHEMA_DATASETS"
# Seed offsets so that the per-rank augmentation streams and the loader generators differ from each other
# and from the model initialisation.
RANK_SEED_STRIDE = 1_000
LOADER_SEED_OFFSET = 7_919

logger = logging.getLogger(__name__)


def datasets_root(configured: str | None) -> Path:
    """The folder of the real datasets: ``data.root``, else ``$UNIHEMA_DATASETS``, else ``../shared/datasets``."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(DATASETS_ENV):
        return Path(os.environ[DATASETS_ENV]).expanduser()
    return Path.cwd().parent / "shared" / "datasets"


@dataclass(frozen=True)
class _FolderSource:
    """A real dataset's folder, its name in the samples, how messages name it and a catalog entry's reader
    and options (used when neither the run's reader options nor the folder's descriptor choose one)."""

    folder: Path
    dataset: str
    label: str
    default_format: str | None = None
    default_options: Mapping[str, Any] | None = None


class CorpusCache:
    """Samples per (dataset, task, split) and the detection classes each (dataset, task) annotates.

    Real datasets (the folders of ``data.folders`` and the catalog's) are read once, each through
    :func:`unihema.data.formats.plan_read` like ``unihema data check`` (the run's ``reader_options``, the
    folder's descriptor, a catalog entry's reader and options, else format detection), given splits
    (:func:`unihema.data.splits.assign_splits`) and resolved for images shared by samples of different
    splits across the real datasets the run uses (:func:`unihema.data.leaks.resolve_cross_dataset_leaks`,
    ``data.leak_action``). :attr:`split_overrides` holds the hash-split samples whose split that changed.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self._synthetic: Any = None
        self._real: dict[str, list[Sample]] | None = None
        self._annotated: dict[str, tuple[str, ...]] = {}
        self._manifests: dict[str, dict[tuple[str, str], Sequence[Sample]]] = {}
        self._split_overrides: dict[str, dict[str, str]] = {}

    @property
    def split_overrides(self) -> dict[str, dict[str, str]]:
        """``{dataset: {sample_id: split}}``: the real datasets' hash-split samples that the leak resolution
        gave another split (:meth:`unihema.data.leaks.LeakReport.split_overrides`; the datasets are read
        first when they were not yet). Evaluation re-derives hash splits and applies these to match."""
        self._load_real()
        return self._split_overrides

    def real_dataset_names(self) -> list[str]:
        """The datasets the run's stages name that are read from a folder: those of ``data.folders`` and
        the catalog's (not the synthetic corpus nor the manifests)."""
        other = {SYNTHETIC_DATASET, *self.config.data.manifests}
        names: list[str] = []
        for stage in self.config.stages:
            names += [d for d in stage.datasets if d not in other and d not in names]
        return names

    def _manifest_views(self, name: str) -> dict[tuple[str, str], Sequence[Sample]]:
        """The samples of manifest dataset ``name`` per (task, split): line offsets only, one pass."""
        if name not in self._manifests:
            from unihema.data.manifest import ManifestDataset

            path = Path(self.config.data.manifests[name]).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"data.manifests.{name}: manifest {path} not found")
            manifest = ManifestDataset(path)
            lines: dict[tuple[str, str], list[int]] = {}
            for line in range(len(manifest)):
                try:
                    record = json.loads(manifest.read_line(line))
                    key = (record.get("task"), record.get("split"))
                except (ValueError, AttributeError):
                    raise ValueError(f"{path}: line {line + 1} is not a JSON sample record") from None
                lines.setdefault(key, []).append(line)
            self._manifests[name] = {
                key: ManifestDataset(path, offsets=manifest.offsets[np.asarray(found, dtype=np.int64)])
                for key, found in lines.items()
            }
            logger.info("manifest %s (%s): %d samples", name, path, len(manifest))
        return self._manifests[name]

    def _synthetic_corpus(self) -> Any:
        if self._synthetic is None:
            from unihema.data.synthetic import SyntheticCorpus

            self._synthetic = SyntheticCorpus(self.config.data.synthetic_config())
        return self._synthetic

    def _source(self, name: str, root: Path) -> _FolderSource:
        """Where dataset ``name`` is read from: its ``data.folders`` entry, else its catalog folder."""
        folders = self.config.data.folders
        if name in folders:  # an explicit folder wins over a catalog entry of the same name
            folder = Path(folders[name]).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"data.folders.{name}: dataset folder {folder} not found")
            return _FolderSource(folder, name, f"dataset {name!r} (data.folders.{name})")
        from unihema.data.catalog import get_dataset

        try:
            entry = get_dataset(name)
        except KeyError as error:
            raise KeyError(f"{error.args[0]}; list a folder of your own under data.folders") from None
        if entry.kind != "staged" or entry.reader is None:
            raise ValueError(
                f"dataset {name!r} is a catalog entry without a local reader; use the name of a staged "
                "dataset folder (run `unihema data list`) or list its folder under data.folders"
            )
        folder = root / entry.name
        if not folder.is_dir():
            raise FileNotFoundError(
                f"dataset {name!r}: folder {folder} not found (set data.root or ${DATASETS_ENV})"
            )
        return _FolderSource(folder, entry.name, f"dataset {name!r}", entry.reader, entry.options)

    def _read(self, name: str, source: _FolderSource) -> ReadResult:
        """The :class:`~unihema.data.schema.ReadResult` of ``source``, with at least one sample."""
        from unihema.data.formats import DescriptorError, WrongFormatError, plan_read, read_planned

        try:
            # The folder's own unihema.yaml may name another layout; the run's reader_options win over it.
            plan = plan_read(
                source.folder, options=self.config.data.reader_options.get(name, {}),
                default_format=source.default_format, default_options=source.default_options,
            )  # fmt: skip
            result = read_planned(plan, dataset=source.dataset)
        except (WrongFormatError, DescriptorError) as error:
            raise type(error)(f"{source.label}: {error}") from None
        how = plan.describe()
        if not result.samples:
            skipped = result.skipped
            first = (
                f"; {len(skipped)} skipped, first {skipped[0].path}: {skipped[0].reason}" if skipped else ""
            )
            raise ValueError(f"{source.label}: the {how} found no samples in {source.folder}{first}")
        logger.info(
            "read %s from %s with the %s: %d samples (%d skipped, %d fixed)",
            name, source.folder, how, len(result.samples), len(result.skipped), len(result.fixed),
        )  # fmt: skip
        return result

    def _load_real(self) -> dict[str, list[Sample]]:
        if self._real is not None:
            return self._real
        from unihema.data.leaks import resolve_cross_dataset_leaks
        from unihema.data.splits import SplitConfig, assign_splits

        root = datasets_root(self.config.data.root)
        split_config = SplitConfig(**self.config.data.splits)
        real: dict[str, list[Sample]] = {}
        for name in self.real_dataset_names():
            result = self._read(name, self._source(name, root))
            real[name] = assign_splits(result.samples, split_config)
            self._annotated[name] = tuple(result.annotated_classes)
        if self.config.data.leak_action != "keep" and real:
            real, report = resolve_cross_dataset_leaks(real, action=self.config.data.leak_action)
            logger.info("cross-dataset duplicates: %s", report.summary())
            self._split_overrides = report.split_overrides()
        self._real = real
        return real

    def samples(self, dataset: str, task: Task, split: str) -> Sequence[Sample]:
        """The samples of ``dataset`` for ``task`` in ``split`` (a list, or a manifest view)."""
        if dataset == SYNTHETIC_DATASET:
            return self._synthetic_corpus().samples(task, split)
        if dataset in self.config.data.manifests:
            return self._manifest_views(dataset).get((task.value, split), [])
        real = self._load_real()
        return [s for s in real[dataset] if s.task is task and s.split == split]

    def class_mask(self, dataset: str, task: Task) -> torch.Tensor:
        """Bool ``(len(DETECTION_CLASSES),)``: the detection classes ``dataset`` annotates for ``task``."""
        if dataset == SYNTHETIC_DATASET:
            names: Sequence[str] = self._synthetic_corpus().annotated_classes(task)
        elif dataset in self.config.data.manifests:
            names = ()  # a manifest does not list them: its boxes tell (below)
        else:
            self._load_real()
            names = self._annotated.get(dataset, ())
        mask = torch.zeros(len(DETECTION_CLASSES), dtype=torch.bool)
        for name in names:
            try:
                mask[detection_index(name)] = True
            except KeyError:
                continue  # a single-cell class name of a mixed dataset
        if not mask.any():
            # No list of annotated classes: the classes its boxes use are the best evidence.
            for sample in self.samples(dataset, task, "train"):
                mask[torch.as_tensor(sample.box_labels, dtype=torch.long)] = True
        return mask


def stage_samples(cache: CorpusCache, stage: StageConfig) -> dict[Task, Sequence[Sample]]:
    """The stage's training samples per task (datasets concatenated in configuration order; lists stay
    lists, manifest views are concatenated without reading them)."""
    from unihema.data.loader import ConcatenatedSamples

    out: dict[Task, Sequence[Sample]] = {}
    for task, weights in stage.tasks.items():
        parts: list[Sequence[Sample]] = []
        for dataset, weight in weights.items():
            if weight == 0:
                continue
            found = cache.samples(dataset, task, stage.split)
            if not found:
                raise ValueError(
                    f"stage {stage.name!r}: dataset {dataset!r} has no {task.value} samples in split {stage.split!r}"
                )
            parts.append(found)
        if all(isinstance(part, list) for part in parts):
            out[task] = [sample for part in parts for sample in part]
        else:
            out[task] = parts[0] if len(parts) == 1 else ConcatenatedSamples(parts)
    return out


@dataclass
class StageData:
    """What a stage trains on.

    Attributes:
        loader: the multi-task training loader; its ``batch_sampler`` holds the resumable position.
        class_masks: bool ``(len(DETECTION_CLASSES),)`` per (dataset, task) with boxes: the classes the
            dataset annotates (a class it never labels is neither positive nor background there).
        sizes: number of training samples per task name (for the log).
        samples: the training samples per task (what the loader indexes).
    """

    loader: Any
    class_masks: dict[tuple[str, Task], torch.Tensor]
    sizes: dict[str, int]
    samples: dict[Task, Sequence[Sample]] = field(default_factory=dict)


def build_stage_loader(
    config: TrainConfig,
    corpus: CorpusCache,
    stage: StageConfig,
    index: int,
    context: DistributedContext,
    num_workers: int | None = None,
) -> StageData:
    """The loader of stage number ``index`` (0-based) for this rank, with its class masks and sizes
    (``num_workers``: data workers to start, ``data.num_workers`` when None)."""
    from unihema.data.loader import build_multitask_loader

    samples = stage_samples(corpus, stage)
    k = {task: stage.k_of(task) for task in samples}
    workers = config.data.num_workers if num_workers is None else num_workers
    transforms = config.data.transform_config()
    # A cached row stands for one exact input: an augmented crop would be a new one.
    unaugmented = cached_tasks(list(samples)) if stage.image_cache else []
    loader = build_multitask_loader(
        samples, k, train=True, num_workers=workers, mode=stage.mode, unaugmented_tasks=unaugmented,
        dataset_weights=stage.dataset_weights(), seed=config.seed + index,
        rank=context.rank, world_size=context.world_size, transform_config=transforms,
        class_masks=None, pin_memory=context.device.type == "cuda", pad_to_multiple=config.data.pad_to_multiple,
    )  # fmt: skip
    # A private generator for the worker base seed keeps the global RNG stream independent of when
    # the iterator is created (needed for an exact resume).
    loader.generator = torch.Generator().manual_seed(
        config.seed + LOADER_SEED_OFFSET + index + RANK_SEED_STRIDE * context.rank
    )
    masks = {
        (dataset, task): corpus.class_mask(dataset, task)
        for task, weights in stage.tasks.items()
        if task.has_boxes
        for dataset in weights
    }
    return StageData(loader, masks, {task.value: len(s) for task, s in samples.items()}, samples)


def preprocessor_of(config: TrainConfig) -> Any:
    """The :class:`~unihema.inference.preprocessor.PreprocessorConfig` of a run: its transforms, padding
    and, when a stage trains on the built-in corpus, the synthetic corpus settings."""
    from unihema.inference.preprocessor import PreprocessorConfig

    uses_synthetic = any(SYNTHETIC_DATASET in stage.datasets for stage in config.stages)
    return PreprocessorConfig(
        transforms=config.data.transform_config(),
        pad_to_multiple=config.data.pad_to_multiple,
        synthetic=dict(config.data.synthetic) if uses_synthetic else None,
    )


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor inside (nested dicts and lists) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    return value
