"""Gradient accumulation: one task batch run in micro-batches, with the gradient of the whole batch.

A stage's ``micro_batch`` (see :class:`~unihema.train.stages.StageConfig`) splits each task batch of a step
into passes of at most that many images (:func:`split_batch`); each pass runs forward and backward, the
gradients add up, and one optimiser step follows. What makes the sum equal to the whole batch's gradient is
the normalisation of the losses:

- box losses (detection, FoV morphology), the single-cell class loss, the per-attribute WBCAtt losses and
  the token loss divide a sum by a count (boxes, known labels per attribute, supervised tokens) taken over
  the whole batch and every rank. :func:`whole_batch_counts` counts them for the whole batch before the
  first pass, and :func:`unihema.train.distributed.whole_batch_counts` makes the criterion divide every
  pass's sum by those totals;
- the segmentation losses are means over the batch's images: a pass of ``n`` of ``B`` images is weighted
  by ``n / B`` (:func:`pass_share`).

Each pass keeps the padded height and width of the whole batch (its images are rows of the same padded
tensor), so padding does not change the result either. The gradient then equals the whole batch's up to
float rounding (tested to 1e-5 with PyTorch's own CPU kernels, ``tests/train/test_train_accumulation.py``;
oneDNN's convolutions pick their algorithm by batch shape and round a one-image pass differently, by up to
1e-3 of some backbone gradients, while in float64 every split agrees to 1e-16), with two exceptions that no
normalisation can remove:

- denoising queries (detection in training) are drawn per forward: their number of groups depends on the
  largest box count of the pass and their noise on the random stream, so with micro-batches the denoising
  terms are another, equally valid draw, not the same one;
- batch normalisation in training mode (``backbone_norm: bn``, the mask branch's BatchNorm when QGMF is
  trained) computes its statistics per pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from unihema.data.schema import UNKNOWN, Task
from unihema.data.vocab import CELL_ATTRIBUTES
from unihema.model.outputs import CellInputs, ImageMemory
from unihema.train import distributed as dist_utils
from unihema.train.losses import TEXT_IGNORE_INDEX, UniHemaCriterion


class UntrainedTaskError(ValueError):
    """A task's loss reaches none of the parameters being trained: its batches would cost time and teach
    nothing (for example detection in a stage that freezes ``D_I``, which holds the box and class heads)."""


AutocastFactory = Callable[[], contextlib.AbstractContextManager]
TextLabels = Callable[[Sequence[str]], torch.Tensor]


def autocast_factory(device: torch.device, precision: str) -> AutocastFactory:
    """A factory of the forward's autocast context: bfloat16 autocast, or nothing for float32."""
    if precision == "bfloat16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def split_batch(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """``batch`` (a :func:`unihema.data.loader.collate` batch) as passes of at most ``size`` images, in
    order; the batch itself when it fits one pass. Tensors and lists are sliced along the images."""
    count = int(batch["images"].shape[0])
    if size >= count:
        return [batch]
    return [
        {
            key: value[start : start + size]
            if isinstance(value, torch.Tensor | list | ImageMemory | CellInputs)
            else value
            for key, value in batch.items()
        }
        for start in range(0, count, size)
    ]


def forward_batch(model: nn.Module, batch: dict[str, Any], text_memory: str = "fused") -> Any:
    """The model's forward of one collated batch (or pass); the stage's ``text_memory`` is passed only
    when it is not the default, so models without the option still run, and so is a cached
    ``batch["image_memory"]`` or ``batch["cell_inputs"]`` (:mod:`unihema.train.image_cache`)."""
    options: dict[str, Any] = {} if text_memory == "fused" else {"text_memory": text_memory}
    for key in ("image_memory", "cell_inputs"):
        if batch.get(key) is not None:
            options[key] = batch[key]
    return model(
        batch["images"], batch["task"], batch["prompts"], batch["targets"], batch["image_mask"], **options
    )


def whole_batch_counts(
    task: Task, targets: Sequence[dict[str, Any]], text_labels: TextLabels, device: torch.device
) -> dict[tuple[int, ...], torch.Tensor]:
    """What the criterion divides ``task``'s sums by, counted over the whole batch and summed over ranks,
    keyed by the shape of the count (as :func:`unihema.train.distributed.whole_batch_counts` takes it).

    Boxes for the box tasks; known cell classes (scalar) and known values per WBCAtt attribute (vector)
    for the single-cell tasks; supervised tokens (``text_labels`` of the answers) for the text tasks;
    nothing for segmentation, whose losses are means over images (see :func:`pass_share`). Every rank
    calls this for the same batches (one collective per call).
    """
    if task.has_boxes:
        parts = [torch.tensor([float(sum(len(t["labels"]) for t in targets))])]
    elif task in (Task.CLASSIFICATION, Task.CELL_MORPHOLOGY):
        classes = sum(int(t["cell_class"]) != UNKNOWN for t in targets if "cell_class" in t)
        attributes = torch.zeros(len(CELL_ATTRIBUTES))
        for target in targets:
            if "cell_attributes" in target:
                attributes += (torch.as_tensor(target["cell_attributes"]).cpu() != UNKNOWN).float()
        parts = [torch.tensor([float(classes)]), attributes]
    elif task.is_text:
        labels = text_labels([t["text"] for t in targets])
        parts = [torch.tensor([float((labels != TEXT_IGNORE_INDEX).sum())])]
    else:
        return {}
    totals = dist_utils.all_reduce_sum(torch.cat(parts).to(device))
    counts = {(): totals[0]}
    if len(parts) > 1:
        counts[(len(CELL_ATTRIBUTES),)] = totals[1:]
    return counts


def pass_share(task: Task, pass_images: int, batch_images: int) -> float:
    """Weight of a pass's loss: ``pass_images / batch_images`` for segmentation (a mean over images),
    1 for the tasks normalised by :func:`whole_batch_counts`."""
    return pass_images / batch_images if task is Task.SEGMENTATION else 1.0


def accumulate_gradients(
    model: nn.Module,
    criterion: UniHemaCriterion,
    batch: dict[str, Any],
    micro_batch: int,
    *,
    autocast: AutocastFactory = contextlib.nullcontext,
    synchronise: bool = True,
    touch_outputs: bool = False,
    text_labels: TextLabels | None = None,
    text_memory: str = "fused",
) -> dict[str, torch.Tensor]:
    """Forward and backward of one task batch in passes of at most ``micro_batch`` images; returns the
    batch's losses (``"loss"`` and every weighted term, detached), as one pass over the whole batch gives.

    Args:
        model: what the forward runs through (the model, or its DDP wrapper).
        criterion: the losses.
        batch: one task-homogeneous batch whose tensors and targets are on the model's device (detection
            targets with their ``class_mask``).
        micro_batch: images per pass.
        autocast: factory of the forward's autocast context (:func:`autocast_factory`).
        synchronise: reduce DDP gradients in the last pass (False: every pass runs under ``no_sync``).
        touch_outputs: tie every output into the loss (:func:`unihema.train.distributed.touch_outputs`).
        text_labels: the token labels of answers (``model.text.tokenize_targets``); looked up on the model
            by default.
        text_memory: what the text decoder reads (the stage's ``text_memory``), passed to the model
            when it is not the default ``"fused"``.
    """
    task: Task = batch["task"]
    passes = split_batch(batch, micro_batch)
    counts = None
    if len(passes) > 1:
        labels = text_labels or _text_labels(model)
        counts = whole_batch_counts(task, batch["targets"], labels, batch["images"].device)
    batch_images = int(batch["images"].shape[0])
    padded_size = tuple(batch["images"].shape[-2:])
    summed: dict[str, torch.Tensor] = {}
    for position, piece in enumerate(passes):
        share = pass_share(task, int(piece["images"].shape[0]), batch_images) if counts is not None else 1.0
        last = position == len(passes) - 1
        with dist_utils.sync_context(model, synchronise and last):
            with autocast():
                outputs = forward_batch(model, piece, text_memory)
            with dist_utils.whole_batch_counts(counts):
                losses = criterion(outputs, piece["targets"], task, padded_size=padded_size)
            loss = losses["loss"] * share if share != 1.0 else losses["loss"]
            if touch_outputs:
                loss = dist_utils.touch_outputs(loss, outputs)
            if not loss.requires_grad:
                raise UntrainedTaskError(f"the {task.value} loss depends on no trained parameter")
            loss.backward()
        # The total as back-propagated (a non-finite output poisons it, so the step is skipped).
        weighted = {name: value.detach() * share for name, value in losses.items() if name != "loss"}
        for name, value in {"loss": loss.detach(), **weighted}.items():
            summed[name] = summed[name] + value if name in summed else value
    return summed


def _text_labels(model: nn.Module) -> TextLabels:
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return module.text.tokenize_targets
