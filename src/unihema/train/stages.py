"""The training curriculum as data: :class:`TrainConfig` with its list of :class:`StageConfig`.

The paper (section 4.2) trains UniHema in six sequential steps, each starting from the previous one's
weights, each with its own tasks, data, trainable modules and schedule. A YAML file describes them::

    seed: 42
    model: {preset: tiny}
    data: {root: null, num_workers: 0, transforms: {seg_size: 256}}
    loss: {attribute_loss: ce}
    runtime: {precision: float32, checkpoint_every: 200, keep_last: 3}
    stages:
      - name: step1_classification
        tasks:
          classification: {pbc: 1.0, bccd_wbc_crops: 2.0}   # dataset -> sampling weight
        train: [B, E_I, SCFE, heads]                         # every other module group is frozen
        epochs: 24
        k_per_task: 32
        lr: 1.0e-4
        backbone_lr_scale: 0.1
        scheduler: {name: step, step_epochs: 10, gamma: 0.1}

A dataset is ``synthetic`` (the built-in generated corpus), a name listed under ``data.manifests`` (read
lazily from a manifest file), a name listed under ``data.folders`` (a folder in any native layout) or the
name of a real dataset of the catalog (:mod:`unihema.data.catalog`), read from ``data.root``. Module group names are those of
:meth:`unihema.model.unihema.UniHema.module_groups` (:data:`MODULE_GROUPS`). The sections other than the
stages are defined in :mod:`unihema.train.config_sections` and re-exported here.

Loading validates everything up front and raises :class:`TrainConfigError` naming the file, the stage
and the field (``configs/x.yaml: stages[2] (step3_joint).lr must be > 0, got -1``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unihema.data.schema import SPLITS, Task
from unihema.model.configuration import MODULE_GROUPS, TEXT_MEMORIES
from unihema.train.config_sections import (
    DEVICES,
    LEAK_ACTIONS,
    PRECISIONS,
    SCHEDULERS,
    DataSpec,
    ModelSpec,
    RuntimeConfig,
    SchedulerConfig,
    TrainConfigError,
    _require,
    validate_data,
    validate_runtime,
)
from unihema.train.ema import ema_errors
from unihema.train.image_cache import CELL_INPUT_GROUPS, IMAGE_MEMORY_GROUPS, cached_tasks
from unihema.train.losses import LossConfig
from unihema.validation import is_int, is_number

BACKBONE_GROUP = "B"
ALL_GROUPS = "all"
BATCH_MODES: tuple[str, ...] = ("round_robin", "weighted", "joint")
AUTO_MICRO_BATCH = "auto"


@dataclass
class StageConfig:
    """One stage of the curriculum.

    Attributes:
        name: unique stage name (used in logs, checkpoints and ``--stages``).
        tasks: task name -> {dataset name -> sampling weight}. Weights scale how often a dataset's samples
            are drawn within its task (all 1: every sample once per epoch).
        train: module groups trained in this stage (:data:`MODULE_GROUPS`, or ``[all]``); all others are
            frozen. Parameters the model itself keeps frozen (e.g. the ResNet stem) stay frozen.
        epochs: passes over the stage's data (an epoch is one pass of the multi-task sampler).
        max_steps: optimiser steps of the stage; with ``epochs`` too, whichever ends first.
        max_minutes: wall-clock budget of the stage's training loop (data loading and checkpoints
            included); the stage ends after the step that reaches it, or at ``epochs`` / ``max_steps`` when
            those come first. Schedules are planned over the ``epochs`` / ``max_steps`` length, so a stage
            cut short by its budget stops part-way through a cosine or step schedule (a constant schedule
            is unaffected). A resumed stage counts the time it had already trained.
        k_per_task: images per task per batch on each process, one number or task -> number.
        micro_batch: how many of a task batch's images go through one forward and backward pass: ``null``
            (all at once), a number (at most that many; the gradients of the passes add up to the one of
            the whole batch, so the optimiser step is the same) or ``"auto"`` (the largest number that fits
            ``runtime.memory_fraction`` of the available memory, per task). The images per optimiser step
            and the learning dynamics stay those of ``k_per_task``.
        mode: batch composition: ``"round_robin"`` (one task per optimiser step, in turn), ``"weighted"``
            (tasks in random order) or ``"joint"`` (every step holds one batch of every task and one
            optimiser step follows the summed losses, as the paper's step 3).
        lr: learning rate of the non-backbone parameters.
        backbone_lr_scale: the backbone (group ``B``) learns at ``lr * backbone_lr_scale``.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        grad_clip: maximum global gradient norm (``null`` disables clipping).
        scheduler: learning-rate schedule (:class:`SchedulerConfig`).
        split: which split of each dataset the stage trains on.
        text_memory: what the T5 decoder reads in the stage's VQA and masked-sentence batches
            (:data:`unihema.model.configuration.TEXT_MEMORIES`): ``"fused"`` (default), CMF's fused
            image-and-text states, as the model answers; ``"text"``, the T5 encoder's states alone, so the
            image path is skipped (about a fifth of the cost of a ``tiny`` VQA step): plain text-to-text
            pre-training of ``E_T`` and ``D_T``; every task of such a stage must be vqa or mlm.
        image_cache: compute what the frozen image path gives each distinct input crop once and reuse it
            for the rest of the stage (:mod:`unihema.train.image_cache`): for vqa / mlm what CMF reads, so
            a step runs only E_T, CMF and D_T (a ``tiny`` VQA step at 96 px costs about a quarter); for
            classification / cell_morphology what SCFE reads, so a step runs only SCFE and the cell heads.
            Needs at least one such task; text tasks need the fused memory and ``B``, ``E_I``, ``SCFE``
            frozen, single-cell tasks ``B`` and ``E_I`` frozen. The cached tasks' inputs are then not
            augmented (no flips or colour jitter), since an augmented crop is a new input every time;
            the stage's other tasks (detection, FoV morphology, segmentation) run as without the cache.
        ema_decay: keep a moving average of the weights (:mod:`unihema.train.ema`) whose decay ramps up
            from 0 towards this value, and end the stage on the average instead of the last weights: the
            stage's checkpoint, the later stages and ``final/`` get the averaged model. 0 (default) keeps
            the last weights. Mid-stage checkpoints hold the average beside the live weights, so a resumed
            stage goes on averaging. (On BCCD from scratch in 5 minutes it was level with the last
            weights: ``docs/benchmarks.md``, "BCCD from scratch".)
        ema_warmup_steps: the ramp's time constant in optimiser steps: the decay at update ``n`` is
            ``ema_decay * (1 - exp(-n / ema_warmup_steps))``.
    """

    name: str
    tasks: dict[Task, dict[str, float]]
    train: tuple[str, ...]
    epochs: float | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    k_per_task: int | dict[Task, int] = 2
    micro_batch: int | str | None = None
    mode: str = "round_robin"
    lr: float = 1.0e-4
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 0.1
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    split: str = "train"
    text_memory: str = "fused"
    image_cache: bool = False
    ema_decay: float = 0.0
    ema_warmup_steps: float = 100.0

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        return MODULE_GROUPS if ALL_GROUPS in self.train else tuple(self.train)

    @property
    def frozen_groups(self) -> tuple[str, ...]:
        return tuple(g for g in MODULE_GROUPS if g not in self.trainable_groups)

    @property
    def datasets(self) -> tuple[str, ...]:
        names: list[str] = []
        for weights in self.tasks.values():
            names += [name for name in weights if name not in names]
        return tuple(names)

    def k_of(self, task: Task) -> int:
        return self.k_per_task[task] if isinstance(self.k_per_task, dict) else self.k_per_task

    def dataset_weights(self) -> dict[str, float] | None:
        """Per-dataset sampling weights for the sampler, or None when all are 1."""
        weights: dict[str, float] = {}
        for per_task in self.tasks.values():
            weights.update(per_task)
        return None if all(w == 1.0 for w in weights.values()) else weights

    def validate(self, where: str) -> None:
        name_ok = isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) is not None
        _require(
            name_ok, f"{where}.name", "must be a non-empty name of letters, digits, '_', '.', '-'", self.name
        )
        _require(bool(self.tasks), f"{where}.tasks", "must name at least one task")
        seen: dict[str, float] = {}
        for task, weights in self.tasks.items():
            _require(bool(weights), f"{where}.tasks.{task.value}", "must name at least one dataset")
            for dataset, weight in weights.items():
                field_name = f"{where}.tasks.{task.value}.{dataset}"
                _require(
                    is_number(weight) and weight >= 0, field_name, "weight must be a number >= 0", weight
                )
                if dataset in seen:
                    other = seen[dataset]
                    message = f"weight differs from the same dataset's weight in another task ({other})"
                    _require(other == weight, field_name, message, weight)
                seen[dataset] = weight
            _require(
                any(w != 0 for w in weights.values()), f"{where}.tasks.{task.value}", "has only zero weights"
            )
        known_groups = ", ".join(MODULE_GROUPS)
        _require(
            bool(self.train), f"{where}.train", f"must list module groups to train ({known_groups} or all)"
        )
        for group in self.train:
            _require(
                group == ALL_GROUPS or group in MODULE_GROUPS,
                f"{where}.train",
                f"has unknown module group {group!r} (known: {known_groups}, all)",
            )
        _require(self.epochs is not None or self.max_steps is not None, where, "needs epochs or max_steps")
        for name, kind, message in (
            ("epochs", is_number, "must be a number > 0"),
            ("max_steps", is_int, "must be an integer > 0"),
            ("max_minutes", is_number, "must be a number > 0 or null"),
            ("grad_clip", is_number, "must be a number > 0 or null"),
        ):
            value = getattr(self, name)
            _require(value is None or (kind(value) and value > 0), f"{where}.{name}", message, value)
        ks = self.k_per_task.values() if isinstance(self.k_per_task, dict) else [self.k_per_task]
        _require(
            all(is_int(k) and k > 0 for k in ks),
            f"{where}.k_per_task",
            "must be a positive integer or task -> positive integer",
            self.k_per_task,
        )
        if isinstance(self.k_per_task, dict):
            missing = [t.value for t in self.tasks if t not in self.k_per_task]
            _require(not missing, f"{where}.k_per_task", f"has no batch size for {missing}")
        micro = self.micro_batch
        _require(
            micro is None or micro == AUTO_MICRO_BATCH or (is_int(micro) and micro > 0),
            f"{where}.micro_batch",
            f"must be a positive integer, {AUTO_MICRO_BATCH!r} or null",
            micro,
        )
        _require(self.mode in BATCH_MODES, f"{where}.mode", f"must be one of {BATCH_MODES}", self.mode)
        for name, low_open in (("lr", True), ("backbone_lr_scale", False), ("weight_decay", False)):
            value = getattr(self, name)
            valid = is_number(value) and (value > 0 if low_open else value >= 0)
            _require(valid, f"{where}.{name}", "must be a number " + ("> 0" if low_open else ">= 0"), value)
        betas_ok = len(self.betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in self.betas)
        _require(betas_ok, f"{where}.betas", "must be two numbers in [0, 1)", self.betas)
        _require(self.split in SPLITS, f"{where}.split", f"must be one of {SPLITS}", self.split)
        _require(
            self.text_memory in TEXT_MEMORIES,
            f"{where}.text_memory",
            f"must be one of {TEXT_MEMORIES}",
            self.text_memory,
        )
        vision = [t.value for t in self.tasks if not t.is_text]
        if self.text_memory != "fused":
            _require(
                not vision,
                f"{where}.text_memory",
                f"applies to vqa and mlm only; the stage also has {vision}",
            )
        for name, why in ema_errors(self.ema_decay, self.ema_warmup_steps).items():
            raise TrainConfigError.for_field(f"{where}.{name}", why, getattr(self, name))
        _require(
            isinstance(self.image_cache, bool),
            f"{where}.image_cache",
            "must be true or false",
            self.image_cache,
        )
        if self.image_cache:
            cached = cached_tasks(list(self.tasks))
            _require(
                bool(cached),
                f"{where}.image_cache",
                f"applies to vqa, mlm, classification and cell_morphology; the stage has only {vision}",
            )
            text = [t for t in cached if t.is_text]
            if text:
                _require(
                    self.text_memory == "fused",
                    f"{where}.image_cache",
                    f"caches the image path, which text_memory={self.text_memory!r} does not run; drop one of them",
                )
            needed = IMAGE_MEMORY_GROUPS if text else CELL_INPUT_GROUPS
            trained = [g for g in needed if g in self.trainable_groups]
            _require(
                not trained,
                f"{where}.image_cache",
                f"needs the image path of {[t.value for t in cached]} frozen ({', '.join(needed)}), but the "
                f"stage trains {trained}",
            )
        self.scheduler.validate(f"{where}.scheduler")


@dataclass
class TrainConfig:
    """A whole training run: model, data, losses, runtime and the stages in order.

    Attributes:
        stages: the curriculum (:class:`StageConfig`), run in order, each from the previous one's weights.
        model: :class:`ModelSpec`.
        data: :class:`DataSpec`.
        loss: :class:`unihema.train.losses.LossConfig`.
        runtime: :class:`RuntimeConfig`.
        seed: seed of the model initialisation, the samplers and the augmentation.
    """

    stages: list[StageConfig]
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    loss: LossConfig = field(default_factory=LossConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = 42

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _require(is_int(self.seed) and self.seed >= 0, "seed", "must be an integer >= 0", self.seed)
        _require(bool(self.stages), "stages", "must list at least one stage")
        names: set[str] = set()
        for index, stage in enumerate(self.stages):
            where = f"stages[{index}] ({getattr(stage, 'name', '?')})"
            stage.validate(where)
            _require(stage.name not in names, f"{where}.name", "is used by two stages", stage.name)
            names.add(stage.name)
        validate_runtime(self.runtime)
        validate_data(self.data)
        if self.model.config_file is None and self.model.init_from is None:
            from unihema.model.presets import PRESET_REGISTRY

            presets = tuple(PRESET_REGISTRY)
            _require(
                self.model.preset in presets, "model.preset", f"must be one of {presets}", self.model.preset
            )

    # ------------------------------------------------------------------------------- dict / YAML
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build from a plain mapping (as read from YAML); errors are prefixed with ``source``."""
        try:
            return _train_config_from_dict(data)
        except TrainConfigError as error:
            raise TrainConfigError(f"{source}: {error}") from None
        except (TypeError, ValueError) as error:
            raise TrainConfigError(f"{source}: {error}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a YAML (or JSON) training configuration."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training configuration not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise TrainConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(data, dict):
            raise TrainConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tasks as strings, tuples as lists) that :meth:`from_dict` reads back."""

        def plain(value: Any) -> Any:
            if isinstance(value, Task):
                return value.value
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, dict):
                return {plain(k): plain(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [plain(v) for v in value]
            return value

        return plain(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as YAML, atomically."""
        import yaml

        from unihema.atomic import atomic_write_text

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    def select_stages(self, spec: str | None) -> list[int]:
        """Indices of the stages named by ``spec``: ``None`` (all), ``"3-6"``, ``"1,3"``, 1-based numbers
        or stage names, in curriculum order."""
        if spec is None or spec.strip() in ("", "all"):
            return list(range(len(self.stages)))
        names = {stage.name: i for i, stage in enumerate(self.stages)}
        chosen: set[int] = set()
        for part in (p.strip() for p in spec.split(",")):
            if part in names:
                chosen.add(names[part])
                continue
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if match is None:
                raise TrainConfigError(
                    f"--stages: {part!r} is neither a stage number/range nor a stage name ({', '.join(names)})"
                )
            first = int(match.group(1))
            last = int(match.group(2) or first)
            if not 1 <= first <= last <= len(self.stages):
                raise TrainConfigError(f"--stages: {part!r} is outside 1-{len(self.stages)}")
            chosen.update(range(first - 1, last))
        return sorted(chosen)


def _build(cls: type, data: Any, where: str, converters: Mapping[str, Any] | None = None) -> Any:
    """Dataclass ``cls`` from a mapping, rejecting unknown keys with the field path."""
    if data is None:
        data = {}
    _require(isinstance(data, Mapping), where, "must be a mapping", data)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        field_name = f"{where}.{key}" if where else str(key)
        _require(key in known, field_name, f"is not a known field (known: {', '.join(sorted(known))})")
        if converters and key in converters:
            value = converters[key](value, f"{where}.{key}" if where else key)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise TrainConfigError.for_field(where or cls.__name__, f"is incomplete ({error})") from None
    except ValueError as error:
        if isinstance(error, TrainConfigError):
            raise
        raise TrainConfigError.for_field(where or cls.__name__, f"is invalid: {error}") from None


def _task(name: Any, where: str) -> Task:
    try:
        return Task(name)
    except ValueError:
        known = ", ".join(t.value for t in Task)
        raise TrainConfigError.for_field(where, f"names an unknown task (known: {known})", name) from None


def _tasks(value: Any, where: str) -> dict[Task, dict[str, float]]:
    _require(
        isinstance(value, Mapping), where, "must map task -> {dataset: weight} (or task -> [datasets])", value
    )
    out: dict[Task, dict[str, float]] = {}
    for name, datasets in value.items():
        task = _task(name, f"{where}.{name}")
        if isinstance(datasets, str):
            datasets = [datasets]
        if isinstance(datasets, list):
            datasets = {d: 1.0 for d in datasets}
        _require(
            isinstance(datasets, Mapping),
            f"{where}.{name}",
            "must map dataset -> weight or list datasets",
            datasets,
        )
        for dataset in datasets:
            valid = isinstance(dataset, str) and dataset != ""
            _require(valid, f"{where}.{name}", "dataset names must be non-empty strings", dataset)
        out[task] = {d: (float(w) if is_number(w) else w) for d, w in datasets.items()}
    return out


def _k_per_task(value: Any, where: str) -> int | dict[Task, int]:
    if isinstance(value, Mapping):
        return {_task(t, f"{where}.{t}"): k for t, k in value.items()}
    return value


def _train_groups(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    _require(isinstance(value, list | tuple), where, "must be a list of module groups", value)
    return tuple(value)


def _stage(value: Any, index: int) -> StageConfig:
    name = value.get("name", "?") if isinstance(value, Mapping) else "?"
    where = f"stages[{index}] ({name})"
    return _build(
        StageConfig,
        value,
        where,
        {
            "tasks": _tasks,
            "train": _train_groups,
            "k_per_task": _k_per_task,
            "betas": lambda v, w: tuple(v) if isinstance(v, list) else v,
            "scheduler": lambda v, w: _build(SchedulerConfig, v, w),
        },
    )


def _train_config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    _require(isinstance(data, Mapping), "configuration", "must be a mapping", data)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in data:
        _require(key in known, str(key), f"is not a known section (known: {', '.join(sorted(known))})")
    stages = data.get("stages")
    _require(
        isinstance(stages, list) and len(stages) > 0, "stages", "must be a non-empty list of stages", stages
    )
    return TrainConfig(
        stages=[_stage(stage, i) for i, stage in enumerate(stages)],
        model=_build(ModelSpec, data.get("model"), "model"),
        data=_build(DataSpec, data.get("data"), "data"),
        loss=_build(LossConfig, data.get("loss"), "loss"),
        runtime=_build(RuntimeConfig, data.get("runtime"), "runtime"),
        seed=data.get("seed", 42),
    )


__all__ = [
    "ALL_GROUPS",
    "AUTO_MICRO_BATCH",
    "BACKBONE_GROUP",
    "BATCH_MODES",
    "DEVICES",
    "LEAK_ACTIONS",
    "PRECISIONS",
    "SCHEDULERS",
    "DataSpec",
    "ModelSpec",
    "RuntimeConfig",
    "SchedulerConfig",
    "StageConfig",
    "TrainConfig",
    "TrainConfigError",
]
