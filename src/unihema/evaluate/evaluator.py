"""Run a model over held-out samples of each task and compute the paper's metric for it.

``evaluate(model, samples_by_task)`` returns one :class:`TaskResult` per task. Predictions are decoded
from the model's typed outputs by :mod:`unihema.inference.postprocess` (the predictor's decoding):

- detection: sigmoid class scores over queries x classes, the best ``max_detections`` pairs kept;
- FoV morphology: each cell takes the attributes of the best-scoring detection that overlaps it with
  IoU >= 0.5 (among detections scoring at least ``attribute_score_threshold``), argmax per attribute
  group; cells no detection reaches count as wrong;
- segmentation: sigmoid > 0.5 on the unpadded area, after resizing the mask to the padded input size;
- classification: argmax; cell morphology: argmax per attribute group;
- VQA / MLM: text generated from the fused image-and-text states.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_convert

from unihema.data.schema import Sample, Task
from unihema.data.vocab import CELL_ATTRIBUTES, FOV_ATTRIBUTES
from unihema.evaluate import metrics
from unihema.inference.postprocess import decode_attributes, decode_detections, mask_probabilities
from unihema.model.text import MAX_NEW_TOKENS
from unihema.validation import is_int, is_number, require

TASK_METRICS: dict[Task, str] = {
    Task.DETECTION: "mAP50",
    Task.FOV_MORPHOLOGY: "attribute_F1",
    Task.SEGMENTATION: "Dice",
    Task.CLASSIFICATION: "F1_weighted",
    Task.CELL_MORPHOLOGY: "attribute_F1",
    Task.VQA: "BLEU4",
    Task.MLM: "BLEU4",
}


@dataclass
class EvalConfig:
    """Decoding settings for evaluation.

    Attributes:
        batch_size: samples per forward pass.
        max_detections: detections kept per image (COCO's default maximum is 100).
        attribute_score_threshold: minimum detection score for a box to carry FoV attributes (0 = any
            of the ``max_detections`` kept boxes; the best-scoring overlap wins).
        mask_threshold: probability above which a pixel is foreground.
        num_beams: beam width for text generation (1 = greedy).
        max_new_tokens: longest generated answer (:data:`unihema.model.text.MAX_NEW_TOKENS`).
        transforms: input sizes and normalisation (a :class:`unihema.data.transforms.TransformConfig`);
            ``None`` uses its defaults. Use the training run's so evaluation sees the same scale.
        pad_to_multiple: batches are padded to a multiple of this many pixels (as in training).
        shuffled_image_check: also answer every VQA question with another sample's image and report the
            exact-match rate (``exact_match_shuffled_images``) and the share of answers that changed: the
            gap to ``exact_match`` shows how much the answers depend on the image.
    """

    batch_size: int = 8
    max_detections: int = 100
    attribute_score_threshold: float = 0.0
    mask_threshold: float = 0.5
    num_beams: int = 1
    max_new_tokens: int = MAX_NEW_TOKENS
    transforms: Any = None
    pad_to_multiple: int = 32
    shuffled_image_check: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_detections", "num_beams", "max_new_tokens"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"EvalConfig.{name}", "must be an integer >= 1", value)
        for name in ("attribute_score_threshold", "mask_threshold"):
            value = getattr(self, name)
            require(
                is_number(value) and 0.0 <= value <= 1.0, f"EvalConfig.{name}", "must be in [0, 1]", value
            )


@dataclass
class TaskResult:
    """The headline metric of one task plus secondary numbers and a few example predictions."""

    task: Task
    metric: str
    value: float
    details: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)


def _batches(samples: Sequence[Sample], task: Task, config: EvalConfig) -> Iterable[dict[str, Any]]:
    from unihema.data.loader import build_loader

    return build_loader(
        list(samples), task, batch_size=config.batch_size, train=False, num_workers=0,
        transform_config=config.transforms, pad_to_multiple=config.pad_to_multiple,
    )  # fmt: skip


def _to_device(batch: Mapping[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    images = batch["images"].to(device)
    mask = batch.get("image_mask")
    return images, None if mask is None else mask.to(device)


@torch.no_grad()
def evaluate_task(
    model: torch.nn.Module, samples: Sequence[Sample], task: Task | str, config: EvalConfig | None = None
) -> TaskResult:
    """Evaluate one task on ``samples`` (all of that task)."""
    task = Task(task)
    config = config or EvalConfig()
    if not samples:
        raise ValueError(f"no samples to evaluate for task {task.value!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        collected = _COLLECTORS[task](model, samples, task, config, device)
    finally:
        model.train(was_training)
    return collected


def _collect_detection(model, samples, task, config, device) -> TaskResult:
    predictions, targets, attribute_pred, attribute_true, examples = [], [], [], [], []
    matched_cells = total_cells = 0
    for batch in _batches(samples, task, config):
        images, image_mask = _to_device(batch, device)
        outputs = model(images, task, prompts=batch["prompts"], image_mask=image_mask)
        sizes = torch.stack([t["size"] for t in batch["targets"]]).float()
        decoded = decode_detections(outputs, sizes, config.max_detections)
        attribute_values = None
        if task is Task.FOV_MORPHOLOGY:
            attribute_values = decode_attributes(outputs.attributes, FOV_ATTRIBUTES)[0].cpu().numpy()
        for i, (detections, target) in enumerate(zip(decoded, batch["targets"])):
            height, width = (float(v) for v in target["size"])
            scale = torch.tensor([width, height, width, height])
            gt_boxes = (box_convert(target["boxes"].float().cpu(), "cxcywh", "xyxy") * scale).numpy()
            gt_labels = target["labels"].cpu().numpy()
            prediction = metrics.DetectionPrediction(
                boxes=detections.boxes.cpu().numpy(), scores=detections.scores.cpu().numpy(),
                labels=detections.labels.cpu().numpy(),
            )  # fmt: skip
            predictions.append(prediction)
            targets.append(
                metrics.DetectionTarget(boxes=gt_boxes, labels=gt_labels, size=(int(height), int(width)))
            )
            if task is Task.FOV_MORPHOLOGY:
                confident = (detections.scores >= config.attribute_score_threshold).cpu().numpy()
                # One box per query (its best class): a query's other classes would let one box claim
                # two overlapping cells.
                queries = detections.queries.cpu().numpy()
                best_class_of_query = np.zeros(len(queries), dtype=bool)
                best_class_of_query[np.unique(queries, return_index=True)[1]] = True
                confident &= best_class_of_query
                kept_queries = queries[confident]
                matches = metrics.match_detections(prediction.boxes[confident], gt_boxes)
                decoded_attributes = attribute_values[i]
                gt_attributes = target["attributes"].cpu().numpy()
                for pred_index, gt_index in matches:
                    attribute_pred.append(decoded_attributes[kept_queries[pred_index]])
                    attribute_true.append(gt_attributes[gt_index])
                has_attributes = (gt_attributes != metrics.UNKNOWN).any(axis=1)
                matched_cells += sum(1 for _, g in matches if has_attributes[g])
                total_cells += int(has_attributes.sum())
            if len(examples) < 4:
                examples.append(
                    {
                        "sample_id": batch["samples"][i].sample_id,
                        "num_detections_over_0.5": int((prediction.scores > 0.5).sum()),
                        "num_cells": len(gt_boxes),
                    }
                )
    detection = metrics.detection_map(predictions, targets)
    details = {"mAP50": detection["map50"], "mAP50_95": detection["map"], "images": len(targets)}
    if task is Task.DETECTION:
        return TaskResult(task, TASK_METRICS[task], detection["map50"], details, examples)
    if attribute_true:
        scored = metrics.attribute_f1(np.stack(attribute_pred), np.stack(attribute_true))
    else:
        scored = {"f1": 0.0, "per_attribute": []}
    details.update({
        "per_attribute_F1": dict(zip((n for n, _ in FOV_ATTRIBUTES), scored["per_attribute"])),
        "cells_matched": matched_cells, "cells_with_attributes": total_cells,
    })  # fmt: skip
    # Cells the detector missed cannot be scored: count them as wrong so a blind model can't score high.
    coverage = matched_cells / total_cells if total_cells else 0.0
    details["attribute_F1_on_matched"] = scored["f1"]
    return TaskResult(task, TASK_METRICS[task], scored["f1"] * coverage, details, examples)


def _collect_segmentation(model, samples, task, config, device) -> TaskResult:
    predicted, expected, examples = [], [], []
    for batch in _batches(samples, task, config):
        images, image_mask = _to_device(batch, device)
        outputs = model(images, task, prompts=batch["prompts"], image_mask=image_mask)
        sizes = [tuple(t["mask"].shape[-2:]) for t in batch["targets"]]
        probabilities = mask_probabilities(outputs.masks, images.shape[-2:], sizes)
        for probability, target in zip(probabilities, batch["targets"]):
            predicted.append((probability > config.mask_threshold).cpu().numpy())
            expected.append(target["mask"].cpu().numpy() > 0.5)
    scores = metrics.dice_scores(predicted, expected)
    examples = [{"sample_id": s.sample_id, "dice": float(d)} for s, d in zip(samples[:4], scores[:4])]
    return TaskResult(task, TASK_METRICS[task], float(scores.mean()), {"images": len(scores)}, examples)


def _collect_classification(model, samples, task, config, device) -> TaskResult:
    predicted, expected = [], []
    for batch in _batches(samples, task, config):
        images, image_mask = _to_device(batch, device)
        outputs = model(images, task, prompts=batch["prompts"], image_mask=image_mask)
        if task is Task.CLASSIFICATION:
            predicted.extend(outputs.class_logits.argmax(-1).cpu().tolist())
            expected.extend(int(t["cell_class"]) for t in batch["targets"])
        else:
            predicted.append(decode_attributes(outputs.attribute_logits, CELL_ATTRIBUTES)[0].cpu().numpy())
            expected.append(torch.stack([t["cell_attributes"] for t in batch["targets"]]).cpu().numpy())
    if task is Task.CLASSIFICATION:
        scores = metrics.classification_scores(predicted, expected)
        return TaskResult(task, TASK_METRICS[task], scores["f1_weighted"], scores)
    scored = metrics.attribute_f1(np.concatenate(predicted), np.concatenate(expected))
    details = {"per_attribute_F1": dict(zip((n for n, _ in CELL_ATTRIBUTES), scored["per_attribute"]))}
    return TaskResult(task, TASK_METRICS[task], scored["f1"], details)


def _generate(model, samples, task, config, device) -> tuple[list[str], list[str], list[str]]:
    hypotheses, references, prompts = [], [], []
    for batch in _batches(samples, task, config):
        images, image_mask = _to_device(batch, device)
        answers = model.generate_text(
            images, batch["prompts"], image_mask=image_mask, num_beams=config.num_beams,
            max_new_tokens=config.max_new_tokens,
        )  # fmt: skip
        hypotheses.extend(answers)
        references.extend(t["text"] for t in batch["targets"])
        prompts.extend(batch["prompts"])
    return hypotheses, references, prompts


def shuffled_images(samples: Sequence[Sample], seed: int = 0) -> list[Sample]:
    """The same questions, each paired with the image of another sample (a random derangement).

    Scoring a model on these tells whether its answers depend on the image: a model that has learned
    only the answer prior of each question scores the same with and without the right image.
    """
    count = len(samples)
    if count < 2:
        return list(samples)
    order = np.random.default_rng(seed).permutation(count)
    donors = np.roll(order, 1)  # order[i] takes the image of order[i - 1]: nobody keeps its own
    paired = [None] * count
    for receiver, donor in zip(order, donors):
        paired[receiver] = dataclasses.replace(
            samples[receiver], image=samples[donor].image, image_size=samples[donor].image_size
        )
    return paired


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of answers equal to the reference, ignoring case and surrounding space."""
    if not references:
        return 0.0
    return float(np.mean([h.strip().lower() == r.strip().lower() for h, r in zip(hypotheses, references)]))


def _collect_text(model, samples, task, config, device) -> TaskResult:
    hypotheses, references, prompts = _generate(model, samples, task, config, device)
    examples = [
        {"prompt": p, "answer": h, "reference": r}
        for p, h, r in list(zip(prompts, hypotheses, references))[:6]
    ]
    details: dict[str, Any] = {"exact_match": exact_match(hypotheses, references)}
    if task is Task.VQA and config.shuffled_image_check:
        shuffled, _, _ = _generate(model, shuffled_images(samples), task, config, device)
        details["exact_match_shuffled_images"] = exact_match(shuffled, references)
        details["answers_changed_by_shuffling"] = 1.0 - exact_match(shuffled, hypotheses)
    return TaskResult(task, TASK_METRICS[task], metrics.bleu4(hypotheses, references), details, examples)


_COLLECTORS = {
    Task.DETECTION: _collect_detection,
    Task.FOV_MORPHOLOGY: _collect_detection,
    Task.SEGMENTATION: _collect_segmentation,
    Task.CLASSIFICATION: _collect_classification,
    Task.CELL_MORPHOLOGY: _collect_classification,
    Task.VQA: _collect_text,
    Task.MLM: _collect_text,
}


def evaluate(
    model: torch.nn.Module,
    samples_by_task: Mapping[Task | str, Sequence[Sample]],
    config: EvalConfig | None = None,
) -> dict[Task, TaskResult]:
    """Evaluate every task that has samples; returns results keyed by task."""
    return {
        Task(task): evaluate_task(model, samples, task, config)
        for task, samples in samples_by_task.items()
        if samples
    }
