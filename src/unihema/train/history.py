"""The written record of a training run: run directory set-up, ``train.log``, ``metrics.csv`` and TensorBoard.

The layout of a run directory is described in :mod:`unihema.train.checkpoint`. Only the main process writes
these files. Metrics are summed over the steps between two log rows (:class:`MetricsWindow`) and written as
one ``metrics.csv`` row with the columns :data:`METRIC_COLUMNS` (:class:`MetricsWriter`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from unihema.atomic import atomic_write_text
from unihema.train import distributed as dist_utils
from unihema.train.checkpoint import Progress, latest_checkpoint
from unihema.train.losses import LOSS_FAMILIES
from unihema.train.stages import StageConfig, TrainConfig

CONFIG_SNAPSHOT = "config.yaml"
RUN_FILE = "run.json"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
FINAL_MODEL_DIR = "final"
TRAINING_RECORD = "training_record.json"
"""Written beside the weights of every model the trainer saves (:func:`write_training_record`), so that
``unihema eval`` can tell the datasets a model was trained on from unseen ones."""
METRIC_COLUMNS: tuple[str, ...] = (
    "time", "stage", "stage_name", "global_step", "stage_step", "epoch", "tasks", "loss", *LOSS_FAMILIES,
    "lr", "grad_norm", "images_per_s", "skipped",
)  # fmt: skip
# Columns that are labels or counters, not scalars worth a TensorBoard curve.
_NON_SCALAR_COLUMNS = frozenset({"time", "stage", "stage_name", "global_step", "stage_step", "tasks"})

# The logger of the whole training package; the modules log through children of it.
package_logger = logging.getLogger("unihema.train")
logger = logging.getLogger(__name__)


def prepare_run_dir(
    config: TrainConfig, run_dir: Path, stages: str | None, *, resume: bool, is_main: bool
) -> list[int]:
    """Check (``resume``) or create the run directory; returns the 0-based indices of the selected stages.

    A new run gets the configuration snapshot and ``run.json`` (written by the main process). A resumed run
    must have the same configuration and stage selection as the one it continues.
    """
    run_file = run_dir / RUN_FILE
    if resume:
        if not run_file.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: not a run directory (no {RUN_FILE})")
        saved = json.loads(run_file.read_text(encoding="utf-8"))
        snapshot = TrainConfig.load(run_dir / CONFIG_SNAPSHOT)
        if snapshot.to_dict() != config.to_dict():
            differing = [k for k, v in snapshot.to_dict().items() if config.to_dict().get(k) != v]
            raise ValueError(
                f"--resume {run_dir}: the configuration differs from the run's {CONFIG_SNAPSHOT} "
                f"(sections: {', '.join(differing)}); resume with the snapshot"
            )
        indices = config.select_stages(stages) if stages is not None else list(saved["stage_indices"])
        if indices != list(saved["stage_indices"]):
            raise ValueError(
                f"--resume {run_dir}: --stages selects {indices}, the run was started with "
                f"{saved['stage_indices']} (0-based)"
            )
        return indices
    indices = config.select_stages(stages)
    if is_main:
        if latest_checkpoint(run_dir) is not None:
            raise FileExistsError(
                f"{run_dir} already holds a training run; pass --resume to continue it or choose another --out"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG_SNAPSHOT)
        record = {"stage_indices": indices, "stage_names": [config.stages[i].name for i in indices]}
        atomic_write_text(run_file, json.dumps(record, indent=2) + "\n")
    dist_utils.barrier()
    return indices


def training_record(
    config: TrainConfig,
    stage_indices: Sequence[int],
    split_overrides: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """What the stages ``stage_indices`` (0-based) train on: ``datasets`` (name -> tasks), the stage names,
    the run's split settings (``splits``, the :class:`~unihema.data.splits.SplitConfig` fields) and
    ``leak_action``, and ``split_overrides`` (dataset -> {sample_id: split}: the hash-split samples the leak
    resolution gave another split, :attr:`unihema.train.data.CorpusCache.split_overrides`), kept for the
    datasets these stages use."""
    datasets: dict[str, list[str]] = {}
    for index in stage_indices:
        for task, weights in config.stages[index].tasks.items():
            for dataset in (name for name, weight in weights.items() if weight):
                tasks = datasets.setdefault(dataset, [])
                if task.value not in tasks:
                    tasks.append(task.value)
    overrides = {
        name: dict(sorted(changed.items()))
        for name, changed in sorted((split_overrides or {}).items())
        if name in datasets and changed
    }
    return {
        "format_version": 1, "datasets": datasets, "stages": [config.stages[i].name for i in stage_indices],
        "splits": dict(config.data.splits), "leak_action": config.data.leak_action,
        "split_overrides": overrides,
    }  # fmt: skip


def write_training_record(
    model_dir: Path,
    config: TrainConfig,
    stage_indices: Sequence[int],
    split_overrides: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """Write :func:`training_record` as ``TRAINING_RECORD`` into a saved model folder."""
    path = Path(model_dir) / TRAINING_RECORD
    record = training_record(config, stage_indices, split_overrides)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def configure_logging(run_dir: Path, main: bool) -> logging.Handler | None:
    """Log the training package at INFO; the main process also into ``train.log`` (the returned handler)."""
    package_logger.setLevel(logging.INFO)
    if not main:
        return None
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    package_logger.addHandler(handler)
    return handler


def remove_logging(handler: logging.Handler | None) -> None:
    """Detach and close a handler of :func:`configure_logging`."""
    if handler is not None:
        package_logger.removeHandler(handler)
        handler.close()


def loss_family(name: str) -> str:
    """The ``metrics.csv`` column (one of ``LOSS_FAMILIES``) a loss term such as ``loss_bbox_3`` adds to."""
    for family in LOSS_FAMILIES:
        if name == family or name.startswith(family + "_"):
            return family
    return name


class MetricsWindow:
    """Running sums between two log rows."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.loss = 0.0
        self.terms: dict[str, Any] = {}
        self.grad_norm = 0.0
        self.images = 0
        self.skipped = 0
        self.tasks: list[str] = []
        self.start = time.perf_counter()

    def add(
        self, loss: float, terms: Mapping[str, Any], grad_norm: float, images: int, skipped: bool, tasks: str
    ) -> None:
        self.steps += 1
        self.loss += loss
        for key, value in terms.items():
            self.terms[key] = self.terms.get(key, 0.0) + value
        self.grad_norm += grad_norm
        self.images += images
        self.skipped += int(skipped)
        if tasks not in self.tasks:
            self.tasks.append(tasks)

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        steps = max(1, self.steps)
        return {
            "loss": self.loss / steps,
            "terms": {k: float(v) / steps for k, v in self.terms.items()},
            "grad_norm": self.grad_norm / steps,
            "rate": self.rate(),
            "skipped": self.skipped,
            "tasks": ";".join(self.tasks),
        }


def metrics_row(
    stage: StageConfig,
    index: int,
    progress: Progress,
    summary: Mapping[str, Any],
    family_values: Sequence[float],
    lr: float,
) -> dict[str, Any]:
    """One ``metrics.csv`` row: a :meth:`MetricsWindow.summary` of stage ``index`` (0-based), with the mean
    of each loss family (in ``LOSS_FAMILIES`` order, NaN where the window had none) and the current lr."""
    return {
        "time": f"{time.time():.3f}", "stage": index + 1, "stage_name": stage.name,
        "global_step": progress.global_step, "stage_step": progress.stage_step, "epoch": progress.epoch,
        "tasks": summary["tasks"], "loss": f"{summary['loss']:.6g}",
        **{f: ("" if math.isnan(v) else f"{v:.6g}") for f, v in zip(LOSS_FAMILIES, family_values)},
        "lr": f"{lr:.6g}", "grad_norm": f"{summary['grad_norm']:.6g}",
        "images_per_s": f"{summary['rate']:.3f}", "skipped": summary["skipped"],
    }  # fmt: skip


class MetricsWriter:
    """``metrics.csv`` (appending across resumes) and TensorBoard scalars, on the main process only."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.path = run_dir / METRICS_FILE
        new = not self.path.exists()
        self.handle = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.writer = csv.DictWriter(self.handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        if new:
            self.writer.writeheader()
        self.tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
            except ImportError:  # tensorboard is a declared dependency; keep training if it is broken
                logger.warning("tensorboard unavailable: only metrics.csv is written")

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)
        self.handle.flush()
        if self.tensorboard is not None:
            step = int(row["global_step"])
            for key, value in row.items():
                if key in _NON_SCALAR_COLUMNS or value in ("", None):
                    continue
                self.tensorboard.add_scalar(f"train/{key}", float(value), step)

    def close(self) -> None:
        self.handle.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def iter_metrics(run_dir: Path) -> Iterator[dict[str, str]]:
    """Rows of a run's ``metrics.csv``."""
    with open(Path(run_dir) / METRICS_FILE, newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)
