"""Does a stage's step fit in memory? An estimate at the stage's start, the micro-batch sizes, and a clear
refusal instead of a kernel kill.

At the start of a stage :func:`plan_memory` runs, for each task of the stage, one forward of a sample of
that task at the largest input size the stage's transforms produce (detection: the largest of
``det_train_sizes``), with the stage's freezing, precision and device. It adds up the bytes of the tensors
autograd keeps for the backward pass (``torch.autograd.graph.saved_tensors_hooks``; the parameters
themselves excluded). The probe batch holds the sample twice (batch normalisation in training mode needs
more than one value per channel) and half of its bytes is the activation memory of one image, which grows
linearly with the images of a pass. A pass of ``n`` images is then estimated at::

    n x activations_per_image x ACTIVATION_OVERHEAD + trainable parameters x OPTIMISER_BYTES_PER_PARAMETER

(the overhead covers what the losses keep, about 2% more, and what the backward pass allocates on top;
measured peaks were 0.5-1.1 x the saved activations on the tiny preset at 256-512 px, on CPU). The
estimate is compared with the memory available when the stage starts
(:func:`unihema.train.resources.available_memory`: ``MemAvailable`` within the container's memory limit,
or the free memory of the GPU; divided among the training processes of the machine) times
``runtime.memory_fraction``. ``micro_batch: auto`` takes the largest pass that fits; a batch (or a given
``micro_batch``) that does not fit stops the run with :class:`InsufficientMemoryError` naming the stage,
the batch, the input size and both amounts.

The probe leaves no trace: the random number generators and the model's buffers (batch-norm statistics)
are restored afterwards, so a run gives the same weights with or without it. Not counted: the data-loading
workers (each its own process) and the memory other programs take while the stage runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unihema.data.schema import Sample, Task
from unihema.train import distributed as dist_utils
from unihema.train.accumulation import AutocastFactory, autocast_factory, forward_batch
from unihema.train.checkpoint import rng_state, set_rng_state
from unihema.train.data import to_device
from unihema.train.resources import Machine
from unihema.train.stages import AUTO_MICRO_BATCH, StageConfig, TrainConfig

ACTIVATION_OVERHEAD = 1.25
"""Peak memory of a pass over the activations autograd saves for it (see the module docstring)."""
OPTIMISER_BYTES_PER_PARAMETER = 12
"""A float32 gradient and AdamW's two moments per trainable parameter."""
GB = 10**9

logger = logging.getLogger(__name__)


class InsufficientMemoryError(ValueError):
    """A stage's step needs more memory than the machine has available."""


@dataclass(frozen=True)
class TaskFootprint:
    """The measured memory of one task of a stage.

    Attributes:
        task: the task.
        batch_images: images of the task per optimiser step (``k_per_task``).
        height: padded height of the probe image (the stage's largest input).
        width: its padded width.
        bytes_per_image: activation memory of one image, overhead included.
    """

    task: Task
    batch_images: int
    height: int
    width: int
    bytes_per_image: int

    def describe(self, images: int) -> str:
        noun = "image" if images == 1 else "images"
        return f"{images} {self.task.value} {noun} of {self.height}x{self.width}"


@dataclass
class MemoryPlan:
    """How a stage's task batches go through the model.

    Attributes:
        micro_batch: images per forward/backward pass, per task.
        footprints: the measured memory per task (empty when nothing was measured).
        fixed_bytes: gradients and optimiser state of the trainable parameters.
        available_bytes: memory available to this process at the stage start (None: unknown).
        memory_fraction: the share of it a step may use (``runtime.memory_fraction``).
    """

    micro_batch: dict[Task, int]
    footprints: dict[Task, TaskFootprint] = field(default_factory=dict)
    fixed_bytes: int = 0
    available_bytes: int | None = None
    memory_fraction: float = 1.0

    @property
    def budget_bytes(self) -> int:
        """Bytes a step may use (0 when the available memory is unknown)."""
        return int((self.available_bytes or 0) * self.memory_fraction)

    def need(self, task: Task, images: int) -> int:
        """Estimated bytes of one pass of ``images`` images of ``task``."""
        return self.fixed_bytes + images * self.footprints[task].bytes_per_image

    def log_lines(self, stage: StageConfig) -> list[str]:
        """One line per task: its images per step, the passes they take and, when measured, the memory."""
        lines = []
        for task, size in self.micro_batch.items():
            images = stage.k_of(task)
            passes = math.ceil(images / size)
            how = "in one pass" if passes == 1 else f"in {passes} micro-batches of {size}"
            if passes > 1 and images % size:
                how = f"in {passes} micro-batches of at most {size}"
            line = f"stage {stage.name}: {images} {task.value} images per step {how}"
            if task in self.footprints and self.available_bytes is not None:
                line += (
                    f" (about {_gb(self.need(task, size))} GB per pass; {_gb(self.available_bytes)} GB "
                    f"available, {_gb(self.budget_bytes)} GB usable)"
                )
            lines.append(line)
        return lines


def largest_inputs(transforms: Any) -> Any:
    """``transforms`` whose deterministic (evaluation) resizing gives the largest training input: the
    detection shorter side is the largest of ``det_train_sizes``; the other tasks have fixed sizes."""
    return dataclasses.replace(transforms, det_eval_size=max(transforms.det_train_sizes))


PROBE_IMAGES = 2
"""Copies of the probe sample in the probe batch (see the module docstring)."""


def probe_batch(samples: Sequence[Sample], transforms: Any, pad_to_multiple: int) -> dict[str, Any]:
    """A batch of :data:`PROBE_IMAGES` copies of the first readable of ``samples`` (one task) at the largest
    training input size, without random augmentation (an unreadable sample is skipped, as in training)."""
    from unihema.data.loader import SampleDataset, collate
    from unihema.data.transforms import build_transforms

    task = samples[0].task
    pipeline = build_transforms(task, train=False, config=largest_inputs(transforms))
    item = SampleDataset(samples, {task: pipeline}, skip_unreadable=True)[0]
    return collate([item] * PROBE_IMAGES, pad_to_multiple)


def activation_bytes(
    model: nn.Module, batch: dict[str, Any], autocast: AutocastFactory, text_memory: str = "fused"
) -> int:
    """Bytes of the tensors autograd saves for the backward pass of the forward of ``batch`` (the
    parameters are not counted, storages shared by several saved tensors once). Nothing is back-propagated.
    ``text_memory`` is the stage's (see :class:`~unihema.train.stages.StageConfig`)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in seen and pointer not in parameters:
            seen.add(pointer)
            total += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast():
        forward_batch(model, batch, text_memory)
    return total


def measure_footprints(
    model: nn.Module,
    config: TrainConfig,
    stage: StageConfig,
    samples: Mapping[Task, Sequence[Sample]],
    device: torch.device,
) -> dict[Task, TaskFootprint]:
    """The :class:`TaskFootprint` of every task of ``stage`` (one probe image each; see the module
    docstring). The random number generators and the model's buffers are left as they were."""
    autocast = autocast_factory(device, config.runtime.precision)
    transforms = config.data.transform_config()
    rngs = rng_state()
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    footprints: dict[Task, TaskFootprint] = {}
    try:
        for task, task_samples in samples.items():
            batch = probe_batch(task_samples, transforms, config.data.pad_to_multiple)
            batch = {**batch, **to_device({k: batch[k] for k in ("images", "image_mask", "targets")}, device)}
            per_image = activation_bytes(model, batch, autocast, stage.text_memory) / PROBE_IMAGES
            height, width = (int(v) for v in batch["images"].shape[-2:])
            footprints[task] = TaskFootprint(
                task, stage.k_of(task), height, width, math.ceil(per_image * ACTIVATION_OVERHEAD)
            )
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        set_rng_state(rngs)
    return footprints


def plan_memory(
    model: nn.Module,
    config: TrainConfig,
    stage: StageConfig,
    samples: Mapping[Task, Sequence[Sample]],
    device: torch.device,
    machine: Machine,
) -> MemoryPlan:
    """The micro-batch size of every task of ``stage``, checked against the available memory.

    Raises :class:`InsufficientMemoryError` when a pass (the whole task batch, the given ``micro_batch``,
    or with ``micro_batch: auto`` a single image) needs more than ``runtime.memory_fraction`` of the
    available memory.
    """
    requested = stage.micro_batch
    auto = requested == AUTO_MICRO_BATCH
    sizes = {task: stage.k_of(task) for task in samples}
    if isinstance(requested, int):
        sizes = {task: min(k, requested) for task, k in sizes.items()}
    if not (auto or config.runtime.check_memory):
        return MemoryPlan(sizes)
    available = machine.available_memory(device)
    if available is None:
        if auto:
            raise InsufficientMemoryError(
                f"stage {stage.name}: micro_batch: auto needs the available memory, which this system does "
                "not report; set micro_batch to a number"
            )
        logger.warning("stage %s: available memory unknown; the memory check is skipped", stage.name)
        return MemoryPlan(sizes)
    available //= machine.local_processes()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # A moving average of the weights is a second copy of every parameter and buffer.
    averaged = (
        sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        if stage.ema_decay > 0
        else 0
    )
    plan = MemoryPlan(
        sizes,
        measure_footprints(model, config, stage, samples, device),
        fixed_bytes=trainable * OPTIMISER_BYTES_PER_PARAMETER + averaged,
        available_bytes=available,
        memory_fraction=config.runtime.memory_fraction,
    )
    if auto:
        plan.micro_batch = _auto_sizes(plan, device)
    refusals = [
        _refusal(stage, plan, task, size, auto)
        for task, size in plan.micro_batch.items()
        if plan.need(task, size) > plan.budget_bytes
    ]
    # Every rank stops when one does (the others would wait for it at the next collective).
    if int(dist_utils.all_reduce_min(torch.tensor(int(not refusals), device=device))) == 0:
        raise InsufficientMemoryError(
            refusals[0]
            if refusals
            else f"stage {stage.name}: another process of the run has too little memory"
        )
    return plan


def _auto_sizes(plan: MemoryPlan, device: torch.device) -> dict[Task, int]:
    """Per task, the passes of the largest size that fits the budget (at least 1), evened out over the
    same number of passes (32 images at most 17 per pass: 2 passes of 16); the same on every rank."""
    room = plan.budget_bytes - plan.fixed_bytes
    sizes = {}
    for task, footprint in plan.footprints.items():
        largest = max(1, min(footprint.batch_images, room // max(1, footprint.bytes_per_image)))
        sizes[task] = math.ceil(footprint.batch_images / math.ceil(footprint.batch_images / largest))
    agreed = dist_utils.all_reduce_min(torch.tensor(list(sizes.values()), device=device)).tolist()
    return {task: int(size) for task, size in zip(sizes, agreed)}


def _refusal(stage: StageConfig, plan: MemoryPlan, task: Task, size: int, auto: bool) -> str:
    footprint = plan.footprints[task]
    amounts = (
        f"need about {_gb(plan.need(task, size))} GB, {_gb(plan.available_bytes or 0)} GB are available "
        f"({_gb(plan.budget_bytes)} GB usable at runtime.memory_fraction {plan.memory_fraction:g})"
    )
    if auto or size == 1:
        return (
            f"stage {stage.name}: even a pass of {footprint.describe(size)} would {amounts}; use smaller "
            "inputs (data.transforms), fewer trainable groups or a machine with more memory"
        )
    if size == footprint.batch_images:
        return f"stage {stage.name}: {footprint.describe(size)} per step {amounts}; set micro_batch or k_per_task"
    return (
        f"stage {stage.name}: micro-batches of {footprint.describe(size)} {amounts}; set a smaller "
        f"micro_batch or micro_batch: {AUTO_MICRO_BATCH}"
    )


def _gb(count: int) -> str:
    value = count / GB
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"
