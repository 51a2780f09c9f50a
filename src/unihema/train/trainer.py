"""The staged trainer: runs a :class:`~unihema.train.stages.TrainConfig` curriculum, checkpoints, resumes.

Public entry point::

    from unihema.train.trainer import run_training
    model = run_training(TrainConfig.load("src/unihema/configs/demo.yaml"), Path("runs/demo"))

Each selected stage starts from the weights the previous one ended with. Per stage the trainer

1. freezes every module group the stage does not train (``requires_grad=False`` and ``eval()`` mode, so
   their batch-norm statistics and buffers do not move either) and rebuilds the DDP wrapper;
2. gathers the stage's samples per task (the synthetic corpus, manifests, real datasets of the catalog
   and folders under ``data.folders``; the stage's split, cross-dataset duplicates of evaluation images
   removed) and batches them with
   :class:`unihema.data.sampler.MultiTaskBatchSampler` (each rank gets its own share);
3. builds a fresh AdamW (backbone at ``lr * backbone_lr_scale``) and the stage's schedule;
4. estimates the memory a step needs and refuses a stage that cannot fit, naming the stage, the batch and
   the memory (:mod:`unihema.train.memory`), and picks the micro-batch size of every task;
5. runs optimiser steps: in ``round_robin``/``weighted`` mode a step is one task-homogeneous batch, in
   ``joint`` mode one batch per task whose losses are summed before the single optimiser step; a task
   batch larger than its micro-batch size runs in several passes whose gradients add up to the whole
   batch's (:mod:`unihema.train.accumulation`);
6. writes a checkpoint every ``runtime.checkpoint_every`` steps and at the end of the stage.

The data workers are capped by the CPU cores the process may use unless ``data.cap_workers`` is false
(:func:`unihema.train.resources.worker_count`; the reason is logged).

A step whose loss or gradient norm is not finite is skipped (no weight update) and logged; after
``runtime.max_nonfinite_steps`` of them in a row the run stops with :class:`NonFiniteLossError`, and the
newest checkpoint (taken before the streak started) is the last good state.

Resuming (``resume=True``) restores the weights, optimiser, scheduler, sampler position and every RNG
(Python, NumPy, torch, per rank) of the newest checkpoint and continues with the next batch. With
``data.num_workers: 0`` the continued run is bit-for-bit the run that was never interrupted (on CPU;
on GPU up to the non-determinism of CUDA kernels unless ``runtime.deterministic``). With worker
processes the data order is still exact, but the augmentation draws of the interrupted epoch differ.

The data side lives in :mod:`unihema.train.data`, freezing and the optimiser in :mod:`unihema.train.optim`,
the set-up of a stage in :mod:`unihema.train.stage_run`, the run directory and its logs in
:mod:`unihema.train.history`.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import torch
from torch import nn

from unihema.data.schema import Task
from unihema.train import distributed as dist_utils
from unihema.train.accumulation import UntrainedTaskError, accumulate_gradients, autocast_factory
from unihema.train.checkpoint import (
    MODEL_DIR,
    Progress,
    latest_checkpoint,
    load_training_state,
    progress_from_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    stage_checkpoint_name,
    step_checkpoint_name,
)
from unihema.train.data import RANK_SEED_STRIDE, CorpusCache, preprocessor_of, stage_samples, to_device
from unihema.train.history import (
    CONFIG_SNAPSHOT,
    FINAL_MODEL_DIR,
    METRICS_FILE,
    MetricsWriter,
    configure_logging,
    iter_metrics,
    loss_family,
    metrics_row,
    prepare_run_dir,
    remove_logging,
    write_training_record,
)
from unihema.train.image_cache import input_keys
from unihema.train.losses import LOSS_FAMILIES, UniHemaCriterion
from unihema.train.optim import apply_freezing, build_optimizer, stage_total_steps
from unihema.train.resources import Machine, worker_count
from unihema.train.stage_run import StageRun, prepare_stage
from unihema.train.stages import StageConfig, TrainConfig

# The name under which the benchmarks import :func:`unihema.train.data.to_device`.
_to_device = to_device

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive training steps had a non-finite loss or gradient."""


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


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        machine: Machine | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.show_progress = progress
        self.context = context or dist_utils.DistributedContext()
        self.device = self.context.device
        self.machine = machine or Machine()
        self.num_workers = config.data.num_workers
        self.criterion = UniHemaCriterion(config.loss)
        self.corpus = CorpusCache(config)
        self.stage_indices = prepare_run_dir(
            config, self.run_dir, stages, resume=resume, is_main=self.context.is_main
        )
        self.metrics: MetricsWriter | None = None
        self.model: nn.Module | None = None

    # ------------------------------------------------------------------------------------- run
    def run(self) -> nn.Module:
        """Train every selected stage (from the newest checkpoint when resuming); returns the model."""
        handler = configure_logging(self.run_dir, self.context.is_main)
        try:
            return self._run()
        finally:
            if self.metrics is not None:
                self.metrics.close()
            remove_logging(handler)

    def _start(self) -> tuple[nn.Module, Progress, dict[str, Any] | None]:
        """The model, progress and training state the run starts from (the newest checkpoint if resuming)."""
        checkpoint = latest_checkpoint(self.run_dir) if self.resume else None
        if checkpoint is not None:
            from unihema.model.unihema import UniHema

            model = UniHema.from_pretrained(checkpoint / MODEL_DIR)
            state = load_training_state(checkpoint)
            progress = progress_from_state(state)
            logger.info(
                "resuming from %s (stage %s, step %d)", checkpoint, progress.stage_name, progress.stage_step
            )
            return model, progress, state
        if self.resume:
            logger.info("no checkpoint in %s yet: starting the run from the beginning", self.run_dir)
        model = build_model(self.config)
        first = self.stage_indices[0]
        if first > 0 and not self.config.model.init_from:
            logger.warning(
                "starting at stage %d (%s) from a freshly initialised model; set model.init_from to the "
                "result of the earlier stages", first + 1, self.config.stages[first].name,
            )  # fmt: skip
        return model, Progress(), None

    def _run(self) -> nn.Module:
        runtime = self.config.runtime
        if runtime.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        data = self.config.data
        self.num_workers, reason = worker_count(data.num_workers, data.cap_workers, self.machine)
        if reason is not None:
            logger.info("%s", reason)
        seed_everything(self.config.seed)
        model, progress, state = self._start()
        # The model folder records the pre-processing of this run, so eval and predict use it by default.
        model.preprocessor = preprocessor_of(self.config)
        model.to(self.device)
        self.model = model
        # Per-rank augmentation streams (identical model initialisation came before).
        seed_everything(self.config.seed + RANK_SEED_STRIDE * self.context.rank)
        base_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if self.context.is_main:
            self.metrics = MetricsWriter(self.run_dir, runtime.tensorboard)

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
                progress.stage_done, progress.stage_seconds = False, 0.0
                if pending_rng is not None:
                    set_rng_state(pending_rng[self.context.rank])
            pending_rng = None
            self._run_stage(model, stage, index, base_trainable, progress, resume_state)
            state = None
        if self.context.is_main:
            model.save_pretrained(self.run_dir / FINAL_MODEL_DIR)
            write_training_record(
                self.run_dir / FINAL_MODEL_DIR, self.config, self.stage_indices, self.corpus.split_overrides
            )
            logger.info("training finished; final model in %s", self.run_dir / FINAL_MODEL_DIR)
        dist_utils.barrier()
        model.eval()
        return model

    # ------------------------------------------------------------------------------------ stage
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
        run = prepare_stage(
            self.config, self.corpus, model, index, base_trainable, self.context,
            machine=self.machine, num_workers=self.num_workers,
        )  # fmt: skip
        if state is not None:
            run.restore(state, progress, self.context.rank)
        bar = None
        if self.show_progress and self.context.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=run.total_steps,
                initial=progress.stage_step,
                desc=stage.name,
                unit="step",
                dynamic_ncols=True,
            )
        # A resumed stage goes on counting from the time it had trained before.
        started = perf_counter() - progress.stage_seconds
        out_of_time = False
        try:
            while progress.stage_step < run.total_steps and not out_of_time:
                if progress.batch_in_epoch == 0:
                    run.sampler.set_epoch(progress.epoch)
                for batch in run.data.loader:
                    loss = self._train_step(run, batch, progress)
                    progress.batch_in_epoch += 1
                    progress.stage_step += 1
                    progress.global_step += 1
                    progress.stage_seconds = perf_counter() - started
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{run.window.rate():.1f}")
                    stop = progress.nonfinite_streak >= runtime.max_nonfinite_steps
                    out_of_time = self._budget_spent(stage, progress)
                    last_step = progress.stage_step >= run.total_steps or out_of_time
                    if stop or last_step or progress.stage_step % runtime.log_every == 0:
                        self._log(run, progress)
                    if stop:
                        raise self._nonfinite_error(stage, progress)
                    due = runtime.checkpoint_every and progress.global_step % runtime.checkpoint_every == 0
                    # During a non-finite streak the newest checkpoint stays the last good one.
                    if due and not last_step and progress.nonfinite_streak == 0:
                        self._checkpoint(step_checkpoint_name(progress.global_step), run, progress)
                    if last_step:
                        break
                if progress.batch_in_epoch >= run.steps_per_epoch:
                    progress.epoch += 1
                    progress.batch_in_epoch = 0
        finally:
            if bar is not None:
                bar.close()
        if run.ema is not None:
            model.load_state_dict(run.ema.module.state_dict())
            logger.info(
                "stage %s ends on the moving average of its weights (decay %g, %d updates)",
                stage.name, stage.ema_decay, run.ema.updates,
            )  # fmt: skip
            # The model now is the average: the stage-end checkpoint needs no second copy of it.
            run.ema = None
        progress.stage_done = True
        progress.completed_stages.append(stage.name)
        self._checkpoint(stage_checkpoint_name(index, stage.name), run, progress)
        budget = f"; its {stage.max_minutes:g}-minute budget was spent" if out_of_time else ""
        logger.info(
            "stage %s finished after %d steps in %.1f s%s",
            stage.name, progress.stage_step, progress.stage_seconds, budget,
        )  # fmt: skip
        for what, cache in (("image memory", run.image_cache), ("SCFE inputs", run.cell_cache)):
            if cache is not None:
                logger.info(
                    "stage %s: %s of %d inputs cached, %d of %d lookups served from the cache",
                    stage.name, what, len(cache), cache.hits, cache.hits + cache.misses,
                )  # fmt: skip
        progress.stage_seconds = 0.0

    def _budget_spent(self, stage: StageConfig, progress: Progress) -> bool:
        """Whether the stage's ``max_minutes`` are used up; under DDP the ranks agree (any rank's clock
        ends the stage for all, so they stop at the same step)."""
        if stage.max_minutes is None:
            return False
        spent = progress.stage_seconds >= stage.max_minutes * 60.0
        if self.context.world_size > 1:
            flag = torch.tensor(float(spent), device=self.device)
            spent = bool(dist_utils.all_reduce_sum(flag).item() > 0)
        return spent

    def _nonfinite_error(self, stage: StageConfig, progress: Progress) -> NonFiniteLossError:
        last = latest_checkpoint(self.run_dir)
        return NonFiniteLossError(
            f"stage {stage.name!r}: {progress.nonfinite_streak} consecutive steps with a non-finite "
            f"loss or gradient (last at step {progress.stage_step}); training stopped. "
            + (f"The last good checkpoint is {last}; " if last else "No checkpoint was written yet; ")
            + "lower the learning rate, enable gradient clipping or check the data, then resume."
        )

    # ------------------------------------------------------------------------------------- step
    def _train_step(self, run: StageRun, batch: dict[str, Any], progress: Progress) -> float:
        """One optimiser step (skipped when the loss or gradient is not finite); returns the mean loss."""
        stage, optimizer = run.stage, run.optimizer
        task_batches = list(batch.values()) if stage.mode == "joint" else [batch]
        optimizer.zero_grad(set_to_none=True)
        autocast = autocast_factory(self.device, self.config.runtime.precision)
        total = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        images = 0
        for position, task_batch in enumerate(task_batches):
            task: Task = task_batch["task"]
            try:
                losses = accumulate_gradients(
                    run.ddp_model, self.criterion, self._on_device(run, task_batch), run.micro_batch[task],
                    autocast=autocast, synchronise=position == len(task_batches) - 1,
                    touch_outputs=self.context.enabled, text_memory=stage.text_memory,
                )  # fmt: skip
            except UntrainedTaskError as error:
                raise UntrainedTaskError(
                    f"stage {stage.name!r}: {error}: it trains only {', '.join(stage.train)}; add the groups "
                    f"{task.value} needs to `train` or drop {task.value} from the stage's tasks"
                ) from None
            total = total + losses["loss"]
            for name, value in losses.items():
                if name != "loss":
                    family = loss_family(name)
                    terms[family] = terms.get(family, 0.0) + value
            images += task_batch["images"].shape[0]

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
            if run.ema is not None:
                run.ema.update(run.model)
        run.scheduler.step()
        tasks = "+".join(b["task"].value for b in task_batches)
        run.window.add(mean_loss, terms, grad_norm, images * self.context.world_size, skipped, tasks)
        return mean_loss

    def _on_device(self, run: StageRun, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with its images, padding mask and targets on the device; detection targets get the
        ``class_mask`` of their dataset; with the stage's image cache, the batch's ``image_memory`` (text
        tasks) or ``cell_inputs`` (single-cell tasks)."""
        task: Task = batch["task"]
        targets = to_device(batch["targets"], self.device)
        if task.has_boxes:
            for target, sample in zip(targets, batch["samples"]):
                mask = run.data.class_masks.get((sample.dataset, task))
                if mask is not None:
                    target["class_mask"] = mask.to(self.device)
        images = batch["images"].to(self.device, non_blocking=True)
        image_mask = batch["image_mask"].to(self.device, non_blocking=True)
        moved = {**batch, "images": images, "image_mask": image_mask, "targets": targets}
        cache, key = None, ""
        if task.is_single_cell:
            cache, key = run.cell_cache, "cell_inputs"
        elif task.is_text:
            cache, key = run.image_cache, "image_memory"
        if cache is not None:
            keys = input_keys(batch["images"], batch["image_mask"])
            with autocast_factory(self.device, self.config.runtime.precision)():
                moved[key] = cache.lookup(images, image_mask, keys)
        return moved

    # ------------------------------------------------------------------------------ logging, ckpt
    def _log(self, run: StageRun, progress: Progress) -> None:
        summary = run.window.summary()
        # Loss families averaged over ranks (each rank saw its own share of the batch).
        values = torch.tensor(
            [summary["terms"].get(f, float("nan")) for f in LOSS_FAMILIES], dtype=torch.float64
        )
        values = dist_utils.all_reduce_mean(values.to(self.device)).cpu()
        if self.metrics is not None:
            lr = run.optimizer.param_groups[0]["lr"]
            self.metrics.write(metrics_row(run.stage, run.index, progress, summary, values.tolist(), lr))
        run.window.reset()

    def _checkpoint(self, name: str, run: StageRun, progress: Progress) -> None:
        rngs = _gather_rng_states(self.context)
        if self.context.is_main:
            state = run.training_state(progress, rngs, self.context.world_size)
            path = save_checkpoint(self.run_dir, name, run.model, state, self.config.runtime.keep_last)
            write_training_record(
                path / MODEL_DIR, self.config, [i for i in self.stage_indices if i <= run.index],
                self.corpus.split_overrides,
            )  # fmt: skip
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


def run_training(
    config: TrainConfig,
    run_dir: Path,
    *,
    stages: str | None = None,
    resume: bool = False,
    progress: bool = True,
    machine: Machine | None = None,
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
        machine: the cores and memory the run may use (:class:`~unihema.train.resources.Machine`; the
            real ones by default).

    Launched under ``torchrun`` the function trains data-parallel (one process per device, gloo on CPU,
    NCCL on GPU); only rank 0 writes files. Raises :class:`NonFiniteLossError` after too many non-finite
    steps in a row, :class:`~unihema.train.memory.InsufficientMemoryError` (a ``ValueError``) when a stage
    cannot fit in the available memory, :class:`~unihema.train.checkpoint.CheckpointError` for a resumed
    training state that is truncated, corrupt or holds objects that could run code,
    ``ValueError``/``FileNotFoundError`` for bad configurations or data.
    """
    context = dist_utils.setup(config.runtime.device)
    try:
        trainer = Trainer(
            config, Path(run_dir), stages=stages, resume=resume, progress=progress, context=context,
            machine=machine,
        )  # fmt: skip
        return trainer.run()
    finally:
        dist_utils.teardown(context)


__all__ = [
    "CONFIG_SNAPSHOT",
    "METRICS_FILE",
    "CorpusCache",
    "NonFiniteLossError",
    "Trainer",
    "apply_freezing",
    "build_model",
    "build_optimizer",
    "iter_metrics",
    "run_training",
    "seed_everything",
    "stage_samples",
    "stage_total_steps",
]
