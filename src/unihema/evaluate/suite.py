"""Evaluate one model on several datasets and tasks: the numbers behind a Table 1 / Table 2 style report.

Each :class:`EvalDataset` holds the evaluation samples of one dataset per task (and, for the single-cell
probe, its classification crops of every split) and whether the model was trained on it, read from the
model folder's training record (``training_record.json``, written by the trainer:
:func:`unihema.train.history.write_training_record`). :func:`evaluate_datasets` runs every task of every
dataset under one progress bar and returns a :class:`DatasetResult` per dataset;
:mod:`unihema.evaluate.tables` writes them as the report.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unihema.data.schema import Sample, Task
from unihema.evaluate import evaluator
from unihema.evaluate.evaluator import EvalConfig, TaskResult, evaluation_steps

PROBE_TASK = "probe"
"""The key of the single-cell probe among a dataset's results (beside the :class:`Task` values)."""


@dataclass
class EvalDataset:
    """One dataset to evaluate.

    Attributes:
        name: the name the report shows (and looks up in the training record).
        samples: task -> the samples of the evaluation split.
        probe_samples: classification crops of every split for the probe; empty = no probe.
        seen: whether the model was trained on the dataset (``None``: the model folder records nothing).
        source: where the samples come from (a folder, or the built-in corpus).
        read_skipped: ``{"sample": path, "reason": ...}`` per file the reader could not load.
        trained_tasks: the tasks the model was trained on with this dataset (from the record).
        cell_classes: the cell classes the dataset labels (indices into ``CELL_CLASSES``, from its
            samples of every split): classification predicts among these (``EvalConfig.cell_classes``);
            empty: any class.
    """

    name: str
    samples: dict[Task, list[Sample]] = field(default_factory=dict)
    probe_samples: list[Sample] = field(default_factory=list)
    seen: bool | None = None
    source: str = ""
    read_skipped: list[dict[str, str]] = field(default_factory=list)
    trained_tasks: list[str] = field(default_factory=list)
    cell_classes: tuple[int, ...] = ()


@dataclass
class DatasetResult:
    """The results of one dataset.

    Attributes:
        dataset: what was evaluated.
        results: task value (or :data:`PROBE_TASK`) -> its result.
        failed: task value (or :data:`PROBE_TASK`) -> why it could not be evaluated (e.g. every sample
            unreadable, too few crops for the probe's cross-validation).
    """

    dataset: EvalDataset
    results: dict[str, TaskResult] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def spread_subset(samples: Sequence[Any], limit: int | None) -> list[Any]:
    """At most ``limit`` samples, evenly spaced over ``samples`` (class folders are read class by class and
    synthetic crops field by field, so a prefix would hold few classes or fields)."""
    if limit is None or len(samples) <= limit:
        return list(samples)
    return [samples[i] for i in np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))]


def labelled_cell_classes(crops: Sequence[Sample]) -> tuple[int, ...]:
    """The cell classes (indices into ``CELL_CLASSES``) that ``crops`` carry, sorted: the classes
    single-cell classification of a dataset predicts among."""
    return tuple(sorted({int(s.cell_class) for s in crops if s.cell_class is not None}))


def read_training_record(model_dir: str | Path) -> dict[str, Any] | None:
    """The model folder's training record (``{"datasets": {name: [tasks]}, "splits": {...}, ...}``), or
    ``None`` when the folder has none."""
    from unihema.train.history import TRAINING_RECORD

    path = Path(model_dir) / TRAINING_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("datasets"), dict):
        raise ValueError(f"{path}: expected an object with 'datasets': {{name: [tasks]}}")
    return record


def seen_in_training(record: dict[str, Any] | None, name: str) -> bool | None:
    """Whether ``name`` is among the record's training datasets (``None`` without a record)."""
    return None if record is None else name in record["datasets"]


def total_steps(datasets: Sequence[EvalDataset], config: EvalConfig, probe_config: Any = None) -> int:
    """The samples the progress bar counts for ``datasets``."""
    from unihema.evaluate.probe import probe_crops

    return sum(
        sum(evaluation_steps(task, len(samples), config) for task, samples in dataset.samples.items())
        + (len(probe_crops(dataset.probe_samples, probe_config)) if dataset.probe_samples else 0)
        for dataset in datasets
    )


def evaluate_datasets(
    model: torch.nn.Module,
    datasets: Sequence[EvalDataset],
    config: EvalConfig | None = None,
    probe_config: Any = None,
    progress: bool = True,
) -> list[DatasetResult]:
    """Every task of every dataset (and the probe where a dataset has ``probe_samples``), one tqdm bar.

    Args:
        model: the model (its device is used).
        datasets: what to evaluate.
        config: decoding settings.
        probe_config: a :class:`unihema.evaluate.probe.ProbeConfig` (``None``: its defaults with the
            transforms and padding of ``config``).
        progress: show the progress bar (on stderr).
    """
    from tqdm import tqdm

    from unihema.evaluate.probe import ProbeConfig, run_probe

    config = config or EvalConfig()
    if probe_config is None:
        probe_config = ProbeConfig(transforms=config.transforms, pad_to_multiple=config.pad_to_multiple)
    out: list[DatasetResult] = []
    steps = total_steps(datasets, config, probe_config)
    with tqdm(total=steps, unit="sample", disable=not progress, file=sys.stderr) as bar:
        for dataset in datasets:
            result = DatasetResult(dataset)
            dataset_config = dataclasses.replace(
                config, cell_classes=dataset.cell_classes or config.cell_classes
            )
            for task, samples in dataset.samples.items():
                bar.set_description(f"{dataset.name} {task.value}")
                try:
                    # Through the module, so that the command's tests can stand in for the evaluation.
                    scored = evaluator.evaluate(model, {task: samples}, dataset_config, progress=bar.update)
                except ValueError as error:  # one task that cannot be scored does not cost the others
                    result.failed[task.value] = str(error)
                    continue
                result.results.update({t.value: r for t, r in scored.items()})
            if dataset.probe_samples:
                bar.set_description(f"{dataset.name} {PROBE_TASK}")
                try:
                    result.results[PROBE_TASK] = run_probe(
                        model, dataset.probe_samples, probe_config, bar.update
                    )
                except ValueError as error:
                    result.failed[PROBE_TASK] = str(error)
            out.append(result)
    failures = [f"{r.dataset.name} {task}: {why}" for r in out for task, why in r.failed.items()]
    if failures and not any(r.results for r in out):
        raise ValueError(f"nothing could be evaluated; {failures[0]}")
    return out


__all__ = [
    "PROBE_TASK",
    "DatasetResult",
    "EvalDataset",
    "evaluate_datasets",
    "read_training_record",
    "seen_in_training",
    "total_steps",
]
