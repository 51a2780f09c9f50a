"""The staged trainer: runs a :class:`~unihema.train.stages.TrainConfig` curriculum, checkpoints, resumes.

Public entry point::

    from unihema.train.trainer import run_training
    model = run_training(TrainConfig.load("src/unihema/configs/demo.yaml"), Path("runs/demo"))

Each selected stage starts from the weights the previous one ended with. Per stage the trainer

1. freezes every module group the stage does not train (``requires_grad=False`` and ``eval()`` mode, so
   their batch-norm statistics and buffers do not move either) and rebuilds the DDP wrapper;
2. gathers the stage's samples per task (the synthetic corpus and/or real datasets of the catalog, the
   stage's split, cross-dataset duplicates of evaluation images removed) and batches them with
   :class:`unihema.data.sampler.MultiTaskBatchSampler` (each rank gets its own share);
3. builds a fresh AdamW (backbone at ``lr * backbone_lr_scale``) and the stage's schedule;
4. runs optimiser steps: in ``round_robin``/``weighted`` mode a step is one task-homogeneous batch, in
   ``joint`` mode one batch per task whose losses are summed before the single optimiser step;
5. writes a checkpoint every ``runtime.checkpoint_every`` steps and at the end of the stage.

A step whose loss or gradient norm is not finite is skipped (no weight update) and logged; after
``runtime.max_nonfinite_steps`` of them in a row the run stops with :class:`NonFiniteLossError`, and the
newest checkpoint (taken before the streak started) is the last good state.

Resuming (``resume=True``) restores the weights, optimiser, scheduler, sampler position and every RNG
(Python, NumPy, torch, per rank) of the newest checkpoint and continues with the next batch. With
``data.num_workers: 0`` the continued run is bit-for-bit the run that was never interrupted (on CPU;
on GPU up to the non-determinism of CUDA kernels unless ``runtime.deterministic``). With worker
processes the data order is still exact, but the augmentation draws of the interrupted epoch differ.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unihema.atomic import atomic_write_text
from unihema.data.schema import SYNTHETIC_DATASET, Sample, Task
from unihema.data.vocab import DETECTION_CLASSES, detection_index
from unihema.train import distributed as dist_utils
from unihema.train.checkpoint import (
    MODEL_DIR,
    Progress,
    latest_checkpoint,
    load_training_state,
    progress_from_state,
    progress_to_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    stage_checkpoint_name,
    step_checkpoint_name,
)
from unihema.train.losses import LOSS_FAMILIES, UniHemaCriterion
from unihema.train.stages import BACKBONE_GROUP, StageConfig, TrainConfig

CONFIG_SNAPSHOT = "config.yaml"
RUN_FILE = "run.json"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
FINAL_MODEL_DIR = "final"
DATASETS_ENV = "UNIHEMA_DATASETS"
METRIC_COLUMNS: tuple[str, ...] = (
    "time", "stage", "stage_name", "global_step", "stage_step", "epoch", "tasks", "loss", *LOSS_FAMILIES,
    "lr", "grad_norm", "images_per_s", "skipped",
)  # fmt: skip
# Seed offsets so that the per-rank augmentation streams and the loader generators differ from each other
# and from the model initialisation.
_RANK_SEED_STRIDE = 1_000
_LOADER_SEED_OFFSET = 7_919

logger = logging.getLogger("unihema.train")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive training steps had a non-finite loss or gradient."""


# ============================================================================================ data


def datasets_root(configured: str | None) -> Path:
    """The folder of the real datasets: ``data.root``, else ``$UNIHEMA_DATASETS``, else ``../shared/datasets``."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(DATASETS_ENV):
        return Path(os.environ[DATASETS_ENV]).expanduser()
    return Path.cwd().parent / "shared" / "datasets"


class CorpusCache:
    """Samples per (dataset, task, split) and the detection classes each (dataset, task) annotates.

    Real datasets are read once (through the catalog's reader and options), given splits
    (:func:`unihema.data.splits.assign_splits`) and cleaned of training images that duplicate an evaluation
    image of any real dataset the run uses (:func:`unihema.data.splits.resolve_cross_dataset_leaks`).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self._synthetic: Any = None
        self._real: dict[str, list[Sample]] | None = None
        self._annotated: dict[str, tuple[str, ...]] = {}

    def real_dataset_names(self) -> list[str]:
        names: list[str] = []
        for stage in self.config.stages:
            names += [d for d in stage.datasets if d != SYNTHETIC_DATASET and d not in names]
        return names

    def _synthetic_corpus(self) -> Any:
        if self._synthetic is None:
            from unihema.data.synthetic import SyntheticCorpus

            self._synthetic = SyntheticCorpus(self.config.data.synthetic_config())
        return self._synthetic

    def _load_real(self) -> dict[str, list[Sample]]:
        if self._real is not None:
            return self._real
        from unihema.data.catalog import get_dataset
        from unihema.data.formats.base import get_reader
        from unihema.data.splits import SplitConfig, assign_splits, resolve_cross_dataset_leaks

        root = datasets_root(self.config.data.root)
        split_config = SplitConfig(**self.config.data.splits)
        real: dict[str, list[Sample]] = {}
        for name in self.real_dataset_names():
            entry = get_dataset(name)
            if entry.kind != "staged" or entry.reader is None:
                raise ValueError(
                    f"dataset {name!r} is a catalog entry without a local reader; use the name of a staged "
                    "dataset folder (run `unihema data list`)"
                )
            folder = root / entry.name
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"dataset {name!r}: folder {folder} not found (set data.root or ${DATASETS_ENV})"
                )
            options = {**entry.options, **self.config.data.reader_options.get(name, {})}
            result = get_reader(entry.reader).read(folder, dataset=entry.name, **options)
            if not result.samples:
                raise ValueError(f"dataset {name!r}: the {entry.reader} reader found no samples in {folder}")
            real[name] = assign_splits(result.samples, split_config)
            self._annotated[name] = tuple(result.annotated_classes)
            logger.info(
                "read %s: %d samples (%d skipped, %d fixed)",
                name,
                len(result.samples),
                len(result.skipped),
                len(result.fixed),
            )
        if self.config.data.leak_action != "keep" and real:
            real, report = resolve_cross_dataset_leaks(real, action=self.config.data.leak_action)
            logger.info("cross-dataset duplicates: %s", report.summary())
        self._real = real
        return real

    def samples(self, dataset: str, task: Task, split: str) -> list[Sample]:
        if dataset == SYNTHETIC_DATASET:
            return self._synthetic_corpus().samples(task, split)
        real = self._load_real()
        return [s for s in real[dataset] if s.task is task and s.split == split]

    def class_mask(self, dataset: str, task: Task) -> torch.Tensor:
        """Bool ``(len(DETECTION_CLASSES),)``: the detection classes ``dataset`` annotates for ``task``."""
        if dataset == SYNTHETIC_DATASET:
            names: Sequence[str] = self._synthetic_corpus().annotated_classes(task)
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


def stage_samples(cache: CorpusCache, stage: StageConfig) -> dict[Task, list[Sample]]:
    """The stage's training samples per task (datasets concatenated in configuration order)."""
    out: dict[Task, list[Sample]] = {}
    for task, weights in stage.tasks.items():
        samples: list[Sample] = []
        for dataset, weight in weights.items():
            if weight == 0:
                continue
            found = cache.samples(dataset, task, stage.split)
            if not found:
                raise ValueError(
                    f"stage {stage.name!r}: dataset {dataset!r} has no {task.value} samples in split {stage.split!r}"
                )
            samples += found
        out[task] = samples
    return out


# ============================================================================================ model


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


def build_model(config: TrainConfig) -> nn.Module:
    """The model a run starts from (``model.init_from``, ``model.config_file`` or the preset)."""
    from unihema.model.configuration import UniHemaConfig
    from unihema.model.unihema import UniHema

    spec = config.model
    if spec.init_from:
        return UniHema.from_pretrained(spec.init_from)
    if spec.config_file:
        return UniHema.from_config(UniHemaConfig.load(spec.config_file))
    return UniHema.from_preset(spec.preset, **spec.overrides)


def apply_freezing(model: nn.Module, stage: StageConfig, base_trainable: set[str]) -> dict[str, int]:
    """Train the stage's module groups, freeze the others; returns trainable parameter counts per group.

    A parameter the model keeps frozen by construction (``base_trainable`` lacks it) stays frozen. Frozen
    groups are put in ``eval()`` mode so that their buffers (batch-norm statistics) stay fixed too.
    """
    model.train()
    groups = model.module_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    grouped: set[int] = set()
    counts: dict[str, int] = {}
    for group, module in groups.items():
        trainable = group in stage.trainable_groups
        count = 0
        for param in module.parameters():
            grouped.add(id(param))
            param.requires_grad_(trainable and names.get(id(param)) in base_trainable)
            count += param.numel() if param.requires_grad else 0
        counts[group] = count
        if not trainable:
            module.eval()
    for name, param in model.named_parameters():
        if id(param) not in grouped:
            param.requires_grad_(False)
            logger.warning("parameter %s belongs to no module group: frozen", name)
    return counts


def build_optimizer(model: nn.Module, stage: StageConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; the backbone group learns at ``lr * backbone_lr_scale``."""
    backbone = {id(p) for p in model.module_groups()[BACKBONE_GROUP].parameters()}
    main, low = [], []
    for param in model.parameters():
        if param.requires_grad:
            (low if id(param) in backbone else main).append(param)
    groups = [{"params": main, "lr": stage.lr, "name": "main"}]
    if low:
        groups.append({"params": low, "lr": stage.lr * stage.backbone_lr_scale, "name": "backbone"})
    if not main and not low:
        raise ValueError(f"stage {stage.name!r}: no trainable parameters (train: {list(stage.train)})")
    return torch.optim.AdamW(groups, lr=stage.lr, betas=stage.betas, weight_decay=stage.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, stage: StageConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = stage.scheduler
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule.factor(step, total_steps, steps_per_epoch)
    )


def stage_total_steps(stage: StageConfig, steps_per_epoch: int) -> int:
    """Optimiser steps of a stage: ``epochs`` worth of batches, capped by ``max_steps``."""
    candidates = []
    if stage.epochs is not None:
        candidates.append(max(1, math.ceil(stage.epochs * steps_per_epoch)))
    if stage.max_steps is not None:
        candidates.append(stage.max_steps)
    return min(candidates)


# ============================================================================================ helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def _family(name: str) -> str:
    for family in LOSS_FAMILIES:
        if name == family or name.startswith(family + "_"):
            return family
    return name


class _MetricsWriter:
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
                if key in ("time", "stage", "stage_name", "global_step", "stage_step", "tasks") or value in (
                    "",
                    None,
                ):
                    continue
                self.tensorboard.add_scalar(f"train/{key}", float(value), step)

    def close(self) -> None:
        self.handle.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _configure_logging(run_dir: Path, main: bool) -> logging.Handler | None:
    logger.setLevel(logging.INFO)
    if not main:
        return None
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return handler


# ============================================================================================ trainer


class Trainer:
    """Runs a curriculum in a run directory (see the module docstring and :func:`run_training`)."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        *,
        stages: str | None = None,
        resume: bool = False,
        progress: bool = True,
        context: dist_utils.DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.show_progress = progress
        self.context = context or dist_utils.DistributedContext()
        self.device = self.context.device
        self.criterion = UniHemaCriterion(config.loss)
        self.corpus = CorpusCache(config)
        self.stage_indices = self._prepare_run_dir(stages)
        self.metrics: _MetricsWriter | None = None
        self.model: nn.Module | None = None

    # ------------------------------------------------------------------------------ run directory
    def _prepare_run_dir(self, stages: str | None) -> list[int]:
        run_file = self.run_dir / RUN_FILE
        if self.resume:
            if not run_file.is_file():
                raise FileNotFoundError(f"--resume {self.run_dir}: not a run directory (no {RUN_FILE})")
            saved = json.loads(run_file.read_text(encoding="utf-8"))
            snapshot = TrainConfig.load(self.run_dir / CONFIG_SNAPSHOT)
            if snapshot.to_dict() != self.config.to_dict():
                differing = [k for k, v in snapshot.to_dict().items() if self.config.to_dict().get(k) != v]
                raise ValueError(
                    f"--resume {self.run_dir}: the configuration differs from the run's {CONFIG_SNAPSHOT} "
                    f"(sections: {', '.join(differing)}); resume with the snapshot"
                )
            indices = (
                self.config.select_stages(stages) if stages is not None else list(saved["stage_indices"])
            )
            if indices != list(saved["stage_indices"]):
                raise ValueError(
                    f"--resume {self.run_dir}: --stages selects {indices}, the run was started with "
                    f"{saved['stage_indices']} (0-based)"
                )
            return indices
        indices = self.config.select_stages(stages)
        if self.context.is_main:
            if latest_checkpoint(self.run_dir) is not None:
                raise FileExistsError(
                    f"{self.run_dir} already holds a training run; pass --resume to continue it or choose another --out"
                )
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.run_dir / CONFIG_SNAPSHOT)
            record = {"stage_indices": indices, "stage_names": [self.config.stages[i].name for i in indices]}
            atomic_write_text(run_file, json.dumps(record, indent=2) + "\n")
        dist_utils.barrier()
        return indices

    # ------------------------------------------------------------------------------------- run
    def run(self) -> nn.Module:
        """Train every selected stage (from the newest checkpoint when resuming); returns the model."""
        handler = _configure_logging(self.run_dir, self.context.is_main)
        try:
            return self._run()
        finally:
            if self.metrics is not None:
                self.metrics.close()
            if handler is not None:
                logger.removeHandler(handler)
                handler.close()

    def _run(self) -> nn.Module:
        runtime = self.config.runtime
        if runtime.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(self.config.seed)
        state: dict[str, Any] | None = None
        checkpoint = latest_checkpoint(self.run_dir) if self.resume else None
        if checkpoint is not None:
            from unihema.model.unihema import UniHema

            model = UniHema.from_pretrained(checkpoint / MODEL_DIR)
            state = load_training_state(checkpoint)
            progress = progress_from_state(state)
            logger.info(
                "resuming from %s (stage %s, step %d)", checkpoint, progress.stage_name, progress.stage_step
            )
        else:
            if self.resume:
                logger.info("no checkpoint in %s yet: starting the run from the beginning", self.run_dir)
            model = build_model(self.config)
            progress = Progress()
            first = self.stage_indices[0]
            if first > 0 and not self.config.model.init_from:
                logger.warning(
                    "starting at stage %d (%s) from a freshly initialised model; set model.init_from to the "
                    "result of the earlier stages", first + 1, self.config.stages[first].name,
                )  # fmt: skip
        # The model folder records the pre-processing of this run, so eval and predict use it by default.
        model.preprocessor = preprocessor_of(self.config)
        model.to(self.device)
        self.model = model
        # Per-rank augmentation streams (identical model initialisation came before).
        seed_everything(self.config.seed + _RANK_SEED_STRIDE * self.context.rank)
        base_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if self.context.is_main:
            self.metrics = _MetricsWriter(self.run_dir, runtime.tensorboard)

        # Resuming from a stage-end checkpoint: the next stage starts from the RNG state saved there.
        pending_rng = state["rng"] if state is not None and progress.stage_done else None
        for index in self.stage_indices:
            stage = self.config.stages[index]
            if stage.name in progress.completed_stages:
                continue
            resume_state = (
                state
                if (state is not None and progress.stage_index == index and not progress.stage_done)
                else None
            )
            if resume_state is None:
                progress.stage_index, progress.stage_name = index, stage.name
                progress.stage_step = progress.epoch = progress.batch_in_epoch = 0
                progress.stage_done = False
                if pending_rng is not None:
                    set_rng_state(pending_rng[self.context.rank])
            pending_rng = None
            self._run_stage(model, stage, index, base_trainable, progress, resume_state)
            state = None
        if self.context.is_main:
            model.save_pretrained(self.run_dir / FINAL_MODEL_DIR)
            logger.info("training finished; final model in %s", self.run_dir / FINAL_MODEL_DIR)
        dist_utils.barrier()
        model.eval()
        return model

    # ------------------------------------------------------------------------------------ stage
    def _build_loader(self, stage: StageConfig, index: int) -> Any:
        from unihema.data.loader import build_multitask_loader

        samples = stage_samples(self.corpus, stage)
        k = {task: stage.k_of(task) for task in samples}
        transforms = self.config.data.transform_config()
        loader = build_multitask_loader(
            samples, k, train=True, num_workers=self.config.data.num_workers, mode=stage.mode,
            dataset_weights=stage.dataset_weights(), seed=self.config.seed + index,
            rank=self.context.rank, world_size=self.context.world_size, transform_config=transforms,
            class_masks=None, pin_memory=self.device.type == "cuda", pad_to_multiple=self.config.data.pad_to_multiple,
        )  # fmt: skip
        # A private generator for the worker base seed keeps the global RNG stream independent of when
        # the iterator is created (needed for an exact resume).
        loader.generator = torch.Generator().manual_seed(
            self.config.seed + _LOADER_SEED_OFFSET + index + _RANK_SEED_STRIDE * self.context.rank
        )
        masks = {
            (dataset, task): self.corpus.class_mask(dataset, task)
            for task, weights in stage.tasks.items()
            if task.has_boxes
            for dataset in weights
        }
        sizes = {task.value: len(s) for task, s in samples.items()}
        return loader, masks, sizes

    def _run_stage(
        self,
        model: nn.Module,
        stage: StageConfig,
        index: int,
        base_trainable: set[str],
        progress: Progress,
        state: dict[str, Any] | None,
    ) -> None:
        runtime = self.config.runtime
        counts = apply_freezing(model, stage, base_trainable)
        trained = [g for g, n in counts.items() if n > 0]
        logger.info(
            "stage %d/%d %s: training %s (%d parameters); frozen: %s",
            index + 1, len(self.config.stages), stage.name, ", ".join(trained) or "-", sum(counts.values()),
            ", ".join(g for g in counts if g not in trained) or "-",
        )  # fmt: skip
        loader, class_masks, sizes = self._build_loader(stage, index)
        sampler = loader.batch_sampler
        steps_per_epoch = len(sampler)
        total_steps = stage_total_steps(stage, steps_per_epoch)
        logger.info(
            "stage %s: samples per task %s, %d steps per epoch, %d steps",
            stage.name,
            sizes,
            steps_per_epoch,
            total_steps,
        )
        ddp_model = dist_utils.wrap_model(model, self.context)
        optimizer = build_optimizer(model, stage)
        scheduler = build_scheduler(optimizer, stage, total_steps, steps_per_epoch)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if progress.batch_in_epoch >= steps_per_epoch:
                progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
            else:
                sampler.load_state_dict(state["sampler"])
            set_rng_state(state["rng"][self.context.rank])

        bar = None
        if self.show_progress and self.context.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=total_steps,
                initial=progress.stage_step,
                desc=f"{stage.name}",
                unit="step",
                dynamic_ncols=True,
            )
        window = _Window()
        try:
            while progress.stage_step < total_steps:
                if progress.batch_in_epoch == 0:
                    sampler.set_epoch(progress.epoch)
                for batch in loader:
                    row = self._train_step(
                        ddp_model, model, stage, batch, class_masks, optimizer, scheduler, progress, window
                    )
                    progress.batch_in_epoch += 1
                    progress.stage_step += 1
                    progress.global_step += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{window.rate():.1f}")
                    stop = progress.nonfinite_streak >= runtime.max_nonfinite_steps
                    if (
                        stop
                        or progress.stage_step % runtime.log_every == 0
                        or progress.stage_step == total_steps
                    ):
                        self._log(stage, index, progress, window, optimizer)
                    if stop:
                        last = latest_checkpoint(self.run_dir)
                        raise NonFiniteLossError(
                            f"stage {stage.name!r}: {progress.nonfinite_streak} consecutive steps with a non-finite "
                            f"loss or gradient (last at step {progress.stage_step}); training stopped. "
                            + (
                                f"The last good checkpoint is {last}; "
                                if last
                                else "No checkpoint was written yet; "
                            )
                            + "lower the learning rate, enable gradient clipping or check the data, then resume."
                        )
                    due = runtime.checkpoint_every and progress.global_step % runtime.checkpoint_every == 0
                    # During a non-finite streak the newest checkpoint stays the last good one.
                    if due and progress.stage_step < total_steps and progress.nonfinite_streak == 0:
                        self._checkpoint(
                            step_checkpoint_name(progress.global_step),
                            model,
                            optimizer,
                            scheduler,
                            sampler,
                            progress,
                        )
                    if progress.stage_step >= total_steps:
                        break
                if progress.batch_in_epoch >= steps_per_epoch:
                    progress.epoch += 1
                    progress.batch_in_epoch = 0
        finally:
            if bar is not None:
                bar.close()
        progress.stage_done = True
        progress.completed_stages.append(stage.name)
        self._checkpoint(
            stage_checkpoint_name(index, stage.name), model, optimizer, scheduler, sampler, progress
        )
        logger.info("stage %s finished after %d steps", stage.name, progress.stage_step)

    # ------------------------------------------------------------------------------------- step
    def _train_step(
        self,
        ddp_model: nn.Module,
        model: nn.Module,
        stage: StageConfig,
        batch: dict[str, Any],
        class_masks: Mapping[tuple[str, Task], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        progress: Progress,
        window: _Window,
    ) -> dict[str, Any]:
        runtime = self.config.runtime
        micro_batches = list(batch.values()) if stage.mode == "joint" else [batch]
        optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if runtime.precision == "bfloat16"
            else nullcontext()
        )
        total = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        images = 0
        for position, micro in enumerate(micro_batches):
            task: Task = micro["task"]
            targets = _to_device(micro["targets"], self.device)
            if task.has_boxes:
                for target, sample in zip(targets, micro["samples"]):
                    mask = class_masks.get((sample.dataset, task))
                    if mask is not None:
                        target["class_mask"] = mask.to(self.device)
            batch_images = micro["images"].to(self.device, non_blocking=True)
            image_mask = micro["image_mask"].to(self.device, non_blocking=True)
            synchronise = position == len(micro_batches) - 1
            with dist_utils.sync_context(ddp_model, synchronise):
                with autocast:
                    outputs = ddp_model(batch_images, task, micro["prompts"], targets, image_mask)
                losses = self.criterion(outputs, targets, task, padded_size=tuple(batch_images.shape[-2:]))
                loss = losses["loss"]
                if self.context.enabled:
                    loss = dist_utils.touch_outputs(loss, outputs)
                loss.backward()
            total = total + loss.detach()
            for name, value in losses.items():
                if name != "loss":
                    family = _family(name)
                    terms[family] = terms.get(family, 0.0) + value.detach()
            images += batch_images.shape[0]

        # Every rank takes the same decision: the loss sum and its finiteness are reduced first.
        reduced = dist_utils.all_reduce_sum(torch.stack([total, (~torch.isfinite(total)).float()]))
        mean_loss = float(reduced[0]) / self.context.world_size
        finite = float(reduced[1]) == 0
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        max_norm = stage.grad_clip if stage.grad_clip is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
        skipped = not (finite and math.isfinite(grad_norm))
        if skipped:
            optimizer.zero_grad(set_to_none=True)
            progress.nonfinite_streak += 1
            logger.warning(
                "stage %s step %d: non-finite %s (loss %s, grad norm %s): step skipped (%d in a row)",
                stage.name, progress.stage_step + 1, "loss" if not finite else "gradient", mean_loss, grad_norm,
                progress.nonfinite_streak,
            )  # fmt: skip
        else:
            optimizer.step()
            progress.nonfinite_streak = 0
        scheduler.step()
        tasks = "+".join(m["task"].value for m in micro_batches)
        window.add(mean_loss, terms, grad_norm, images * self.context.world_size, skipped, tasks)
        return {"loss": mean_loss}

    # ------------------------------------------------------------------------------ logging, ckpt
    def _log(
        self,
        stage: StageConfig,
        index: int,
        progress: Progress,
        window: _Window,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        summary = window.summary()
        # Loss families averaged over ranks (each rank saw its own share of the batch).
        values = torch.tensor(
            [summary["terms"].get(f, float("nan")) for f in LOSS_FAMILIES], dtype=torch.float64
        )
        values = dist_utils.all_reduce_mean(values.to(self.device)).cpu()
        if self.metrics is not None:
            row = {
                "time": f"{time.time():.3f}", "stage": index + 1, "stage_name": stage.name,
                "global_step": progress.global_step, "stage_step": progress.stage_step, "epoch": progress.epoch,
                "tasks": summary["tasks"], "loss": f"{summary['loss']:.6g}",
                **{f: ("" if math.isnan(v) else f"{v:.6g}") for f, v in zip(LOSS_FAMILIES, values.tolist())},
                "lr": f"{optimizer.param_groups[0]['lr']:.6g}", "grad_norm": f"{summary['grad_norm']:.6g}",
                "images_per_s": f"{summary['rate']:.3f}", "skipped": summary["skipped"],
            }  # fmt: skip
            self.metrics.write(row)
        window.reset()

    def _checkpoint(
        self,
        name: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        sampler: Any,
        progress: Progress,
    ) -> None:
        rngs = _gather_rng_states(self.context)
        if self.context.is_main:
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler": sampler.state_dict(consumed=min(progress.batch_in_epoch, len(sampler))),
                "rng": rngs,
                "progress": progress_to_state(progress),
                "world_size": self.context.world_size,
            }
            path = save_checkpoint(self.run_dir, name, model, state, self.config.runtime.keep_last)
            logger.info("checkpoint %s", path)
        dist_utils.barrier()


def _gather_rng_states(context: dist_utils.DistributedContext) -> list[dict[str, Any]]:
    """RNG states of every rank (rank order), so each rank resumes its own augmentation stream."""
    state = rng_state()
    if not context.enabled:
        return [state]
    import torch.distributed as dist

    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, state)
    return gathered


class _Window:
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


# ============================================================================================ API


def run_training(
    config: TrainConfig,
    run_dir: Path,
    *,
    stages: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Train ``config``'s curriculum in ``run_dir`` and return the trained :class:`UniHema` (eval mode).

    Args:
        config: the curriculum (:class:`~unihema.train.stages.TrainConfig`, e.g. ``TrainConfig.load(path)``).
        run_dir: run directory (created; must not already hold a run unless ``resume``). It receives
            ``config.yaml``, ``run.json``, ``train.log``, ``metrics.csv``, ``tensorboard/``,
            ``checkpoints/`` and ``final/`` (the trained model, loadable with ``UniHema.from_pretrained``).
        stages: which stages to run: ``None`` (all), ``"3-6"``, ``"1,3"`` (1-based) or stage names.
        resume: continue the run in ``run_dir`` from its newest checkpoint (``config`` must equal the run's
            snapshot; ``stages`` must be None or the same selection).
        progress: show a tqdm progress bar (loss, images/s, ETA) on the main process.

    Launched under ``torchrun`` the function trains data-parallel (one process per device, gloo on CPU,
    NCCL on GPU); only rank 0 writes files. Raises :class:`NonFiniteLossError` after too many non-finite
    steps in a row, ``ValueError``/``FileNotFoundError`` for bad configurations or data.
    """
    context = dist_utils.setup(config.runtime.device)
    try:
        trainer = Trainer(
            config, Path(run_dir), stages=stages, resume=resume, progress=progress, context=context
        )
        return trainer.run()
    finally:
        dist_utils.teardown(context)


def iter_metrics(run_dir: Path) -> Iterator[dict[str, str]]:
    """Rows of a run's ``metrics.csv``."""
    with open(Path(run_dir) / METRICS_FILE, newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


__all__ = [
    "CorpusCache",
    "NonFiniteLossError",
    "Trainer",
    "apply_freezing",
    "build_model",
    "build_optimizer",
    "iter_metrics",
    "run_training",
    "stage_total_steps",
]
