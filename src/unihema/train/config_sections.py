"""The sections of a training configuration other than the stages: the learning-rate schedule of a stage
(:class:`SchedulerConfig`), the model to start from (:class:`ModelSpec`), the data (:class:`DataSpec`) and
how the process runs (:class:`RuntimeConfig`), with their validation.

:mod:`unihema.train.stages` assembles them into a :class:`~unihema.train.stages.TrainConfig` and re-exports
every name defined here, so ``from unihema.train.stages import SchedulerConfig`` keeps working.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from unihema.data.leaks import RESOLVE_ACTIONS
from unihema.data.schema import SYNTHETIC_DATASET
from unihema.validation import ValidationError, is_int, is_number, require

SCHEDULERS: tuple[str, ...] = ("constant", "step", "cosine")
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
LEAK_ACTIONS: tuple[str, ...] = (*RESOLVE_ACTIONS, "keep")  # "keep": no duplicate check


class TrainConfigError(ValidationError):
    """An invalid training configuration; the message names the field (and the stage)."""


_require = functools.partial(require, error=TrainConfigError)


@dataclass
class SchedulerConfig:
    """Learning-rate schedule of one stage, applied per optimiser step after an optional linear warm-up.

    Attributes:
        name: ``"constant"``, ``"step"`` (multiply by ``gamma`` every ``step_epochs`` epochs, the authors'
            StepLR) or ``"cosine"`` (cosine decay to ``min_lr_scale`` x lr over the stage).
        step_epochs: epochs between two decays of ``"step"`` (may be fractional).
        gamma: decay factor of ``"step"``.
        min_lr_scale: final learning rate of ``"cosine"`` as a fraction of the initial one.
        warmup_steps: optimiser steps of linear warm-up from 0 at the start of the stage.
    """

    name: str = "step"
    step_epochs: float = 10.0
    gamma: float = 0.1
    min_lr_scale: float = 0.0
    warmup_steps: int = 0

    def validate(self, where: str) -> None:
        step_epochs, gamma = self.step_epochs, self.gamma
        min_scale, warmup = self.min_lr_scale, self.warmup_steps
        for name, valid, message in (
            ("name", self.name in SCHEDULERS, f"must be one of {SCHEDULERS}"),
            ("step_epochs", is_number(step_epochs) and step_epochs > 0, "must be a number > 0"),
            ("gamma", is_number(gamma) and 0 < gamma <= 1, "must be in (0, 1]"),
            ("min_lr_scale", is_number(min_scale) and 0 <= min_scale <= 1, "must be in [0, 1]"),
            ("warmup_steps", is_int(warmup) and warmup >= 0, "must be an integer >= 0"),
        ):
            _require(valid, f"{where}.{name}", message, getattr(self, name))

    def factor(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        """Learning-rate multiplier at optimiser step ``step`` (0-based) of a stage of ``total_steps``."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            decays = int(step // max(1.0, self.step_epochs * steps_per_epoch))
            return self.gamma**decays
        span = max(1, total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_scale + (1 - self.min_lr_scale) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class ModelSpec:
    """Which model a run starts from.

    Attributes:
        preset: a preset of :data:`unihema.model.presets.PRESET_REGISTRY` (``tiny``, ``fast``, ``paper``).
        overrides: section -> fields merged into the preset (e.g. ``{vision: {num_queries: 100}}``).
        config_file: a JSON/YAML model configuration used instead of ``preset``/``overrides``.
        init_from: a directory written by ``UniHema.save_pretrained`` to start from (its configuration wins).
    """

    preset: str = "tiny"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_file: str | None = None
    init_from: str | None = None


@dataclass
class DataSpec:
    """Where the data comes from and how it is prepared.

    Attributes:
        root: folder holding the real datasets (one sub-folder per catalog name); ``null`` uses
            ``$UNIHEMA_DATASETS`` or ``../shared/datasets`` next to the working directory.
        synthetic: fields of ``unihema.data.synthetic.SyntheticConfig`` for the generated corpus (held in
            memory, every field's pixels included: for a large corpus write it with
            ``unihema data synthetic --out DIR`` and list ``DIR/manifest.jsonl`` under ``manifests``).
        transforms: fields of :class:`unihema.data.transforms.TransformConfig` (sizes, augmentation).
        splits: fields of :class:`unihema.data.splits.SplitConfig` for datasets without their own split.
        leak_action: what to do with images shared by samples of different splits, across the real
            datasets of the run (see :mod:`unihema.data.leaks`): ``"align"`` (default) gives every copy of
            such an image one split, the split a dataset published winning over one drawn by hash (a PBC
            val/test image that WBCAtt publishes for training is trained on in both, a published val/test
            image stays there, its training copies moving to it); ``"drop"`` removes training images that
            duplicate an evaluation image; ``"move"`` gives them that evaluation split; ``"keep"`` skips
            the check.
        reader_options: dataset name -> reader options merged over the catalog's (e.g.
            ``{wbcatt: {tasks: [cell_morphology, vqa, mlm]}}`` to also build WBCAtt's text samples).
        manifests: dataset name -> a manifest file (:mod:`unihema.data.manifest`, e.g. the
            ``manifest.jsonl`` of a written synthetic corpus). Stages name such a dataset like any other;
            it is read line by line when a batch needs a sample, so the run's memory does not grow with
            the corpus. Its samples keep the splits the manifest records, and it is left out of the
            cross-dataset duplicate check (which would decode every image).
        folders: dataset name -> a dataset folder in its native layout, outside the catalog (``--data
            NAME=PATH`` of ``unihema train``). It is read as ``unihema data check DIR`` reads it: with the
            reader its ``unihema.yaml`` descriptor names, else the detected one, and the descriptor's
            options with ``reader_options`` of that name over them; the log says which format and rule
            matched. Stages name such a dataset like any other and its samples get the same splits,
            cross-dataset duplicate check and annotated-class masks as a catalog dataset's. A name that is
            also a catalog name reads this folder: the explicit folder wins, without the catalog's
            reader or options. A missing folder stops the run when its datasets are first read.
        num_workers: data-loading worker processes per rank (0 loads in the training process, which also
            makes a resumed run replay the exact augmentation draws).
        cap_workers: cap ``num_workers`` at the CPU cores this process may run on
            (``os.sched_getaffinity``, shared by the ranks of one machine) minus one for the training
            process itself, logging the reason; ``false`` starts ``num_workers`` workers whatever the cores.
        pad_to_multiple: batches are padded to a multiple of this many pixels.
    """

    root: str | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)
    transforms: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] = field(default_factory=dict)
    leak_action: str = "align"
    reader_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)
    num_workers: int = 0
    cap_workers: bool = True
    pad_to_multiple: int = 32

    def transform_config(self) -> Any:
        """``transforms`` as a :class:`unihema.data.transforms.TransformConfig`."""
        from unihema.data.transforms import TransformConfig

        return TransformConfig(**_tuples(self.transforms))

    def synthetic_config(self) -> Any:
        """``synthetic`` as a :class:`unihema.data.synthetic.SyntheticConfig` (``ValueError`` on an unknown field)."""
        from unihema.data.synthetic import SyntheticConfig

        try:
            return SyntheticConfig(**_tuples(self.synthetic))
        except TypeError as error:
            raise ValueError(f"data.synthetic has an unknown field ({error})") from None


@dataclass
class RuntimeConfig:
    """How the training process runs.

    Attributes:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        precision: ``"float32"`` or ``"bfloat16"`` (autocast of the forward; weights stay float32).
        log_every: optimiser steps between two rows of ``metrics.csv`` / TensorBoard points.
        checkpoint_every: optimiser steps between two checkpoints (plus one at each stage end); 0 = only at
            stage ends.
        keep_last: number of step checkpoints kept (stage-end checkpoints are always kept).
        max_nonfinite_steps: a run stops after this many consecutive steps with a non-finite loss or
            gradient (each such step is skipped and logged).
        tensorboard: also write TensorBoard event files under ``tensorboard/``.
        deterministic: ask PyTorch for deterministic algorithms (slower; for reproducibility checks).
        check_memory: at the start of each stage, estimate the memory a step needs (the activations of one
            image of each task at the stage's largest input size, times the images of a pass, plus the
            gradients and optimiser state) and stop with a message naming the stage, the batch and the
            memory when it exceeds ``memory_fraction`` of the available memory.
        memory_fraction: share of the available memory (``MemAvailable`` of ``/proc/meminfo`` within the
            container's memory limit, or the free memory of the GPU; split among the ranks of one machine)
            that a step may plan to use; the memory check and ``micro_batch: auto`` use it.
    """

    device: str = "auto"
    precision: str = "float32"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    max_nonfinite_steps: int = 5
    tensorboard: bool = True
    deterministic: bool = False
    check_memory: bool = True
    memory_fraction: float = 0.8


def validate_runtime(runtime: RuntimeConfig) -> None:
    """Raise :class:`TrainConfigError` naming the first invalid ``runtime`` field."""
    _require(runtime.device in DEVICES, "runtime.device", f"must be one of {DEVICES}", runtime.device)
    _require(
        runtime.precision in PRECISIONS,
        "runtime.precision",
        f"must be one of {PRECISIONS}",
        runtime.precision,
    )
    for name, minimum in (
        ("log_every", 1),
        ("checkpoint_every", 0),
        ("keep_last", 1),
        ("max_nonfinite_steps", 1),
    ):
        value = getattr(runtime, name)
        _require(
            is_int(value) and value >= minimum, f"runtime.{name}", f"must be an integer >= {minimum}", value
        )
    fraction = runtime.memory_fraction
    _require(
        is_number(fraction) and 0 < fraction <= 1, "runtime.memory_fraction", "must be in (0, 1]", fraction
    )
    check = runtime.check_memory
    _require(isinstance(check, bool), "runtime.check_memory", "must be true or false", check)


def validate_data(data: DataSpec) -> None:
    """Raise :class:`TrainConfigError` naming the first invalid ``data`` field."""
    _require(
        data.leak_action in LEAK_ACTIONS,
        "data.leak_action",
        f"must be one of {LEAK_ACTIONS}",
        data.leak_action,
    )
    for name, minimum in (("num_workers", 0), ("pad_to_multiple", 1)):
        value = getattr(data, name)
        _require(
            is_int(value) and value >= minimum, f"data.{name}", f"must be an integer >= {minimum}", value
        )
    _require(
        isinstance(data.cap_workers, bool), "data.cap_workers", "must be true or false", data.cap_workers
    )
    for name in ("synthetic", "transforms", "splits", "reader_options", "manifests", "folders"):
        _require(
            isinstance(getattr(data, name), dict), f"data.{name}", "must be a mapping", getattr(data, name)
        )
    # A dataset named by a path: a manifest file or a folder in its native layout.
    for section, kind in (("manifests", "a manifest path"), ("folders", "a dataset folder path")):
        for name, path in getattr(data, section).items():
            where = f"data.{section}.{name}"
            _require(name != SYNTHETIC_DATASET, where, "is the name of the built-in corpus; rename it")
            _require(isinstance(path, str) and path != "", where, f"must be {kind}", path)
    for name in data.folders:
        _require(
            name not in data.manifests,
            f"data.folders.{name}",
            "is also listed under data.manifests; a dataset is read from one of them",
        )
    from unihema.data.splits import SplitConfig
    from unihema.data.transforms import TransformConfig

    for name, cls in (("transforms", TransformConfig), ("splits", SplitConfig)):
        try:
            cls(**_tuples(getattr(data, name)))
        except TypeError as error:
            raise TrainConfigError.for_field(f"data.{name}", f"has an unknown field ({error})") from None
        except ValueError as error:
            raise TrainConfigError.for_field(f"data.{name}:", str(error)) from None


def _tuples(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in mapping.items()}
