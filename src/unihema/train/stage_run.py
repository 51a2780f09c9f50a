"""The set-up of one training stage: freezing, loader, memory plan, DDP wrapper, optimiser and schedule,
and their state.

:func:`prepare_stage` builds a :class:`StageRun` (its micro-batch sizes from :func:`unihema.train.memory.
plan_memory`, which also refuses a stage that cannot fit); :meth:`StageRun.training_state` is what a
checkpoint saves of it and :meth:`StageRun.restore` puts such a state back, so a resumed stage continues
with the next batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unihema.data.schema import Task
from unihema.train import distributed as dist_utils
from unihema.train.checkpoint import Progress, progress_to_state, set_rng_state
from unihema.train.data import CorpusCache, StageData, build_stage_loader
from unihema.train.ema import WeightEMA
from unihema.train.history import MetricsWindow
from unihema.train.image_cache import (
    CACHE_MEMORY_SHARE,
    DEFAULT_CACHE_BYTES,
    ImageMemoryCache,
    cached_tasks,
)
from unihema.train.memory import plan_memory
from unihema.train.optim import apply_freezing, build_optimizer, build_scheduler, stage_total_steps
from unihema.train.resources import Machine
from unihema.train.stages import StageConfig, TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class StageRun:
    """What one stage trains with.

    Attributes:
        stage: the stage's configuration.
        index: its index in the configuration's stage list.
        model: the model (what checkpoints save).
        ddp_model: what the forward runs through: the DDP wrapper of ``model``, or ``model`` itself.
        data: the stage's loader and class masks.
        optimizer: the stage's AdamW.
        scheduler: its learning-rate schedule.
        total_steps: optimiser steps of the stage.
        steps_per_epoch: batches of one epoch of the stage's sampler (for this rank).
        micro_batch: images per forward/backward pass, per task (a task batch larger than that runs in
            several passes whose gradients add up).
        window: running sums since the last ``metrics.csv`` row.
        image_cache: the stage's image-memory cache for its text tasks (``StageConfig.image_cache``), or
            None.
        cell_cache: the stage's cache of SCFE inputs for its single-cell tasks, or None.
        ema: the moving average of the weights (``StageConfig.ema_decay``), or None.
    """

    stage: StageConfig
    index: int
    model: nn.Module
    ddp_model: nn.Module
    data: StageData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    steps_per_epoch: int
    micro_batch: dict[Task, int] = field(default_factory=dict)
    window: MetricsWindow = field(default_factory=MetricsWindow)
    image_cache: ImageMemoryCache | None = None
    cell_cache: ImageMemoryCache | None = None
    ema: WeightEMA | None = None

    @property
    def sampler(self) -> Any:
        """The resumable batch sampler of the stage's loader."""
        return self.data.loader.batch_sampler

    def training_state(
        self, progress: Progress, rngs: list[dict[str, Any]], world_size: int
    ) -> dict[str, Any]:
        """The training state of a checkpoint (``rngs``: the RNG states of every rank, in rank order)."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(consumed=min(progress.batch_in_epoch, len(self.sampler))),
            "rng": rngs,
            "progress": progress_to_state(progress),
            "world_size": world_size,
        }
        if self.ema is not None:
            state["ema"] = self.ema.averaged.state_dict()
        return state

    def restore(self, state: dict[str, Any], progress: Progress, rank: int) -> None:
        """Continue from a :meth:`training_state` whose progress is ``progress``, on rank ``rank``."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.averaged.load_state_dict(state["ema"])
            else:
                logger.warning(
                    "stage %s: the checkpoint holds no moving average of the weights; it starts again "
                    "from the resumed weights", self.stage.name,
                )  # fmt: skip
        if progress.batch_in_epoch >= self.steps_per_epoch:
            progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
        else:
            self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"][rank])


def prepare_stage(
    config: TrainConfig,
    corpus: CorpusCache,
    model: nn.Module,
    index: int,
    base_trainable: set[str],
    context: dist_utils.DistributedContext,
    *,
    machine: Machine | None = None,
    num_workers: int | None = None,
) -> StageRun:
    """Freeze ``model`` for stage number ``index`` (0-based) and build its loader, memory plan, DDP
    wrapper, optimiser and schedule (``base_trainable``: the parameters the model itself leaves
    trainable; ``machine``: the resources, the real ones by default; ``num_workers``: data workers,
    ``data.num_workers`` by default). Raises :class:`~unihema.train.memory.InsufficientMemoryError` when a
    step cannot fit in the available memory."""
    stage = config.stages[index]
    counts = apply_freezing(model, stage, base_trainable)
    trained = [g for g, n in counts.items() if n > 0]
    logger.info(
        "stage %d/%d %s: training %s (%d parameters); frozen: %s",
        index + 1, len(config.stages), stage.name, ", ".join(trained) or "-", sum(counts.values()),
        ", ".join(g for g in counts if g not in trained) or "-",
    )  # fmt: skip
    data = build_stage_loader(config, corpus, stage, index, context, num_workers)
    plan = plan_memory(model, config, stage, data.samples, context.device, machine or Machine())
    for line in plan.log_lines(stage):
        logger.info("%s", line)
    steps_per_epoch = len(data.loader.batch_sampler)
    total_steps = stage_total_steps(stage, steps_per_epoch)
    logger.info(
        "stage %s: samples per task %s, %d steps per epoch, %d steps",
        stage.name, data.sizes, steps_per_epoch, total_steps,
    )  # fmt: skip
    sampler = data.loader.batch_sampler
    mixed = sampler.mixed_steps()
    if min(total_steps, steps_per_epoch) > mixed:
        left = [t.value for t in sampler.tail_tasks()]
        logger.warning(
            "stage %s: in round_robin mode the tasks alternate for the first %d steps of each %d-step epoch, "
            "then only %s train (the other tasks' samples are used up) and the others can be forgotten; "
            "this stage runs %d steps. `mode: weighted` mixes the tasks over the whole epoch",
            stage.name, mixed, steps_per_epoch, ", ".join(left), total_steps,
        )  # fmt: skip
    # The average is a copy of the bare model, taken before DDP wraps it.
    ema = WeightEMA(model, stage.ema_decay, stage.ema_warmup_steps) if stage.ema_decay > 0 else None
    ddp_model = dist_utils.wrap_model(model, context)
    optimizer = build_optimizer(model, stage)
    scheduler = build_scheduler(optimizer, stage, total_steps, steps_per_epoch)
    memory_cache = cell_cache = None
    if stage.image_cache:
        cached = cached_tasks(list(stage.tasks))
        kinds = {
            "image memory": any(t.is_text for t in cached),
            "SCFE inputs": any(t.is_single_cell for t in cached),
        }
        room = (machine or Machine()).available_memory(context.device)
        # The share is split between the kinds of rows the stage caches.
        limit = int(
            (room if room is not None else DEFAULT_CACHE_BYTES) * CACHE_MEMORY_SHARE / sum(kinds.values())
        )
        if kinds["image memory"]:
            memory_cache = ImageMemoryCache(model.image_memory, limit)
        if kinds["SCFE inputs"]:
            cell_cache = ImageMemoryCache(model.cell_inputs, limit)
        logger.info(
            "stage %s: %s cached per input (up to %.0f MB each) for %s, whose inputs are not augmented",
            stage.name, " and ".join(k for k, on in kinds.items() if on), limit / 2**20,
            ", ".join(t.value for t in cached),
        )  # fmt: skip
    return StageRun(
        stage, index, model, ddp_model, data, optimizer, scheduler, total_steps, steps_per_epoch,
        plan.micro_batch, image_cache=memory_cache, cell_cache=cell_cache, ema=ema,
    )  # fmt: skip
