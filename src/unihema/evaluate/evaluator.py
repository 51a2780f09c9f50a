"""Run a model over held-out samples of each task and compute the paper's metrics for it.

``evaluate(model, samples_by_task)`` returns one :class:`TaskResult` per task. Predictions are decoded
from the model's typed outputs by :mod:`unihema.inference.postprocess` (the predictor's decoding):

- detection: sigmoid class scores over queries x classes, the best ``max_detections`` pairs kept (COCO's
  per-image cap follows it);
- FoV morphology: the model's cells are its detections at the operating ``score_threshold``, one box per
  query (its best class), best first; each takes the ground-truth cell it overlaps most with IoU >= 0.5
  that no better detection took, and is scored on that cell's attributes (argmax per attribute group);
  cells no detection reaches count as wrong;
- segmentation: sigmoid > ``mask_threshold`` on the unpadded area, after resizing the mask to the padded
  input size; Dice and IoU per image;
- classification: argmax; cell morphology: argmax per attribute group;
- VQA / MLM: text generated from the fused image-and-text states.

A sample whose image or annotation cannot be loaded is left out and named in ``TaskResult.skipped``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_convert

from unihema.data.schema import Sample, Task
from unihema.data.vocab import CELL_ATTRIBUTES, CELL_CLASSES, DETECTION_CLASSES, FOV_ATTRIBUTES
from unihema.evaluate import metrics
from unihema.evaluate.grounding import exact_match_by_question, grounded_answers, shuffled_images
from unihema.evaluate.metrics import exact_match
from unihema.inference.postprocess import decode_attributes, decode_detections, mask_probabilities
from unihema.inference.predictor import DEFAULT_MAX_DETECTIONS, PredictOptions
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
OPERATING_SCORE_THRESHOLD: float = PredictOptions.score_threshold
"""The score from which a detection counts as one of the model's cells (the predictor's default)."""

Progress = Callable[[int], None]
"""Called with the number of samples just processed (a tqdm bar's ``update``)."""


@dataclass
class EvalConfig:
    """Decoding settings for evaluation.

    Attributes:
        batch_size: samples per forward pass.
        max_detections: detections kept per image, also COCO's per-image cap (``maxDets``): the
            predictor's cap (3000), so that dense red-cell fields are not truncated at COCO's 100.
        score_threshold: the operating score threshold: detections scoring at least this are the model's
            cells, matched to ground-truth cells for FoV morphology (mAP uses every kept detection).
        mask_threshold: probability above which a pixel is foreground.
        num_beams: beam width for text generation (1 = greedy).
        max_new_tokens: longest generated answer (:data:`unihema.model.text.MAX_NEW_TOKENS`).
        transforms: input sizes and normalisation (a :class:`unihema.data.transforms.TransformConfig`);
            ``None`` uses its defaults. Use the training run's so evaluation sees the same scale.
        pad_to_multiple: batches are padded to a multiple of this many pixels (as in training).
        shuffled_image_check: also answer every VQA question with another sample's image and report the
            exact-match rate (``exact_match_shuffled_images``) and the share of answers that changed: the
            gap to ``exact_match`` shows how much the answers depend on the image. Where every question
            is a template question about a known cell, ``exact_match_shuffled_grounded`` is what a
            perfectly grounded model would score with the same shuffled images
            (:func:`~unihema.evaluate.grounding.grounded_answers`).
        overlay_images: segmentation images kept (the first ones) for TP/FP/FN overlays.
        cell_classes: indices into :data:`~unihema.data.vocab.CELL_CLASSES` of the classes the evaluated
            dataset labels: single-cell classification predicts the most likely of these, as a dataset's
            own classifier would (a model trained on several datasets' classes otherwise loses a PBC
            neutrophil to a red-cell class no PBC crop can have). ``None`` or empty: any class of the
            vocabulary. The accuracy over the whole vocabulary is reported beside it either way.
    """

    batch_size: int = 8
    max_detections: int = DEFAULT_MAX_DETECTIONS
    score_threshold: float = OPERATING_SCORE_THRESHOLD
    mask_threshold: float = 0.5
    num_beams: int = 1
    max_new_tokens: int = MAX_NEW_TOKENS
    transforms: Any = None
    pad_to_multiple: int = 32
    shuffled_image_check: bool = True
    overlay_images: int = 4
    cell_classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.cell_classes is not None:
            classes = tuple(self.cell_classes)
            require(
                all(is_int(c) and 0 <= c < len(CELL_CLASSES) for c in classes), "EvalConfig.cell_classes",
                f"must be indices into CELL_CLASSES (0 to {len(CELL_CLASSES) - 1})", self.cell_classes,
            )  # fmt: skip
            self.cell_classes = classes or None
        for name in ("batch_size", "max_detections", "num_beams", "max_new_tokens", "pad_to_multiple"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"EvalConfig.{name}", "must be an integer >= 1", value)
        require(is_int(self.overlay_images) and self.overlay_images >= 0, "EvalConfig.overlay_images",
                "must be an integer >= 0", self.overlay_images)  # fmt: skip
        for name in ("score_threshold", "mask_threshold"):
            value = getattr(self, name)
            require(
                is_number(value) and 0.0 <= value <= 1.0, f"EvalConfig.{name}", "must be in [0, 1]", value
            )


@dataclass
class TaskResult:
    """The headline metric of one task plus secondary numbers, a few example predictions, the samples that
    could not be loaded and the data behind the plots.

    Attributes:
        task: the task scored.
        metric: name of the headline metric (:data:`TASK_METRICS`).
        value: the headline metric.
        details: secondary numbers (JSON-ready).
        examples: a few predictions next to their references.
        skipped: ``{"sample": "<dataset>/<sample id>", "reason": ...}`` per sample left out.
        evaluated: number of samples scored.
        artifacts: what the plots are drawn from: ``pr_curves``, ``confusion_matrix``, ``per_image``
            (JSON-ready), ``overlays`` and ``tsne`` (arrays).
    """

    task: Task
    metric: str
    value: float
    details: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    evaluated: int = 0
    artifacts: dict[str, Any] = field(default_factory=dict)


class _SkippingDataset(Dataset):
    """The evaluation samples of one task; one that cannot be loaded or transformed becomes a record
    naming it, so that a bad file costs that sample only."""

    def __init__(self, samples: Sequence[Sample], task: Task, config: EvalConfig) -> None:
        from unihema.data.loader import SampleDataset
        from unihema.data.transforms import build_transforms

        transforms = {task: build_transforms(task, train=False, config=config.transforms)}
        self.inner = SampleDataset(list(samples), transforms)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self.inner[index]
        except Exception as error:  # an unreadable image, a bad mask or annotation: name it, go on
            sample = self.inner.samples[index]
            reason = f"{type(error).__name__}: {error}"
            return {"skipped": {"sample": f"{sample.dataset}/{sample.sample_id}", "reason": reason}}


def _collate_loaded(items: Sequence[dict[str, Any]], pad_to_multiple: int) -> tuple[Any, list[dict]]:
    from unihema.data.loader import collate

    loaded = [item for item in items if "skipped" not in item]
    failed = [item["skipped"] for item in items if "skipped" in item]
    return (collate(loaded, pad_to_multiple) if loaded else None), failed


@dataclass
class EvalRun:
    """One evaluation pass: the settings, the device, the progress callback and the samples skipped.

    Attributes:
        config: decoding settings.
        device: where the model runs.
        progress: called with the number of samples of each batch (loaded or skipped), or ``None``.
        skipped: the samples left out so far (see :attr:`TaskResult.skipped`).
        evaluated: the samples batched so far.
    """

    config: EvalConfig
    device: torch.device
    progress: Progress | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    evaluated: int = 0

    def batches(self, samples: Sequence[Sample], task: Task) -> Iterator[dict[str, Any]]:
        """Contract batches of ``samples`` (see :func:`unihema.data.loader.collate`), in order, without the
        samples that fail to load; raises ``ValueError`` at the end when every sample failed."""
        loader = DataLoader(
            _SkippingDataset(samples, task, self.config), batch_size=self.config.batch_size, shuffle=False,
            num_workers=0, collate_fn=partial(_collate_loaded, pad_to_multiple=self.config.pad_to_multiple),
        )  # fmt: skip
        for batch, failed in loader:
            self.skipped.extend(failed)
            loaded = 0 if batch is None else len(batch["samples"])
            self.evaluated += loaded
            if self.progress is not None:
                self.progress(loaded + len(failed))
            if batch is not None:
                yield batch
        if self.evaluated == 0 and self.skipped:
            first = self.skipped[0]
            raise ValueError(
                f"none of the {len(self.skipped)} {task.value} samples could be loaded; first: "
                f"{first['sample']}: {first['reason']}"
            )

    def inputs(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's images and padding mask on the device."""
        mask = batch.get("image_mask")
        return batch["images"].to(self.device), None if mask is None else mask.to(self.device)


def evaluation_steps(task: Task | str, count: int, config: EvalConfig | None = None) -> int:
    """How many samples :func:`evaluate_task` reports to its progress callback for ``count`` samples."""
    config = config or EvalConfig()
    return count * (2 if Task(task) is Task.VQA and config.shuffled_image_check else 1)


@torch.no_grad()
def evaluate_task(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    task: Task | str,
    config: EvalConfig | None = None,
    progress: Progress | None = None,
) -> TaskResult:
    """Evaluate one task on ``samples`` (all of that task); ``progress`` gets the samples processed."""
    task = Task(task)
    config = config or EvalConfig()
    if not samples:
        raise ValueError(f"no samples to evaluate for task {task.value!r}")
    was_training = model.training
    model.eval()
    run = EvalRun(config, next(model.parameters()).device, progress)
    try:
        result = _COLLECTORS[task](model, samples, task, run)
    finally:
        model.train(was_training)
    result.skipped, result.evaluated = run.skipped, run.evaluated
    return result


def _target_in_pixels(target: Mapping[str, torch.Tensor]) -> metrics.DetectionTarget:
    height, width = (float(v) for v in target["size"])
    scale = torch.tensor([width, height, width, height])
    boxes = (box_convert(target["boxes"].float().cpu(), "cxcywh", "xyxy") * scale).numpy()
    return metrics.DetectionTarget(boxes=boxes, labels=target["labels"].cpu().numpy(),
                                   size=(int(height), int(width)))  # fmt: skip


def _match_cell_attributes(
    cells: Any, truth: metrics.DetectionTarget, gt_attributes: np.ndarray, pairs: list[tuple[Any, Any]]
) -> tuple[int, int]:
    """Append (predicted, true) attribute rows of the model's cells matched to ground-truth cells to
    ``pairs``; returns (matched cells with attributes, cells with attributes)."""
    if cells.attributes is None:
        raise ValueError("fov_morphology: the model's detections carry no FoV attributes")
    matches = metrics.match_detections(cells.boxes.cpu().numpy(), truth.boxes)
    predicted = cells.attributes.cpu().numpy()
    pairs.extend((predicted[p], gt_attributes[g]) for p, g in matches)
    has_attributes = (gt_attributes != metrics.UNKNOWN).any(axis=1)
    return sum(1 for _, g in matches if has_attributes[g]), int(has_attributes.sum())


def _collect_detection(model, samples, task, run: EvalRun) -> TaskResult:
    config = run.config
    predictions, targets, examples = [], [], []
    attribute_pairs: list[tuple[Any, Any]] = []
    matched_cells = total_cells = 0
    for batch in run.batches(samples, task):
        images, image_mask = run.inputs(batch)
        outputs = model(images, task, prompts=batch["prompts"], image_mask=image_mask)
        sizes = torch.stack([t["size"] for t in batch["targets"]]).float()
        decoded = decode_detections(outputs, sizes, config.max_detections)
        cells = None
        if task is Task.FOV_MORPHOLOGY:
            # One box per query (its best class): a query's other classes would let one box claim two cells.
            cells = decode_detections(
                outputs, sizes, config.max_detections, score_threshold=config.score_threshold,
                one_per_query=True, attribute_schema=FOV_ATTRIBUTES,
            )  # fmt: skip
        for i, (detections, target) in enumerate(zip(decoded, batch["targets"])):
            truth = _target_in_pixels(target)
            prediction = metrics.DetectionPrediction(
                boxes=detections.boxes.cpu().numpy(), scores=detections.scores.cpu().numpy(),
                labels=detections.labels.cpu().numpy(),
            )  # fmt: skip
            predictions.append(prediction)
            targets.append(truth)
            if cells is not None:
                gt_attributes = target["attributes"].cpu().numpy()
                matched, with_attributes = _match_cell_attributes(
                    cells[i], truth, gt_attributes, attribute_pairs
                )
                matched_cells += matched
                total_cells += with_attributes
            if len(examples) < 4:
                examples.append(
                    {
                        "sample_id": batch["samples"][i].sample_id,
                        "num_detections_over_0.5": int((prediction.scores > 0.5).sum()),
                        "num_cells": len(truth.boxes),
                    }
                )
    detection = metrics.detection_map(predictions, targets, config.max_detections)
    details = {
        "mAP50": detection["map50"], "mAP50_95": detection["map"], "images": len(targets),
        "AP50_per_class": _named(detection["map50_per_class"], DETECTION_CLASSES),
        "AP_per_class": _named(detection["map_per_class"], DETECTION_CLASSES),
        "max_detections": detection["max_detections"],
    }  # fmt: skip
    recall = detection["recall_thresholds"].tolist()
    artifacts = {
        "pr_curves": {
            _name(label, DETECTION_CLASSES): {"recall": recall, "precision": curve.tolist(),
                                              "AP50": detection["map50_per_class"][label]}
            for label, curve in detection["pr_curves"].items()
        }
    }  # fmt: skip
    if task is Task.DETECTION:
        return TaskResult(
            task, TASK_METRICS[task], detection["map50"], details, examples, artifacts=artifacts
        )
    if attribute_pairs:
        predicted, expected = (np.stack(column) for column in zip(*attribute_pairs))
        scored = metrics.attribute_f1(predicted, expected)
    else:
        scored = {"f1": 0.0, "per_attribute": [float("nan")] * len(FOV_ATTRIBUTES)}
    details.update({
        "per_attribute_F1": dict(zip((n for n, _ in FOV_ATTRIBUTES), scored["per_attribute"])),
        "cells_matched": matched_cells, "cells_with_attributes": total_cells,
        "score_threshold": config.score_threshold,
    })  # fmt: skip
    # Cells the detector missed cannot be scored: count them as wrong so a blind model can't score high.
    coverage = matched_cells / total_cells if total_cells else 0.0
    details["attribute_F1_on_matched"] = scored["f1"]
    details["coverage"] = coverage
    return TaskResult(
        task, TASK_METRICS[task], scored["f1"] * coverage, details, examples, artifacts=artifacts
    )


def _name(index: int, vocabulary: Sequence[str]) -> str:
    return vocabulary[index] if 0 <= index < len(vocabulary) else str(index)


def _named(values: Mapping[int, float], vocabulary: Sequence[str]) -> dict[str, float]:
    return {_name(int(k), vocabulary): float(v) for k, v in values.items()}


def _display_image(image: torch.Tensor, transforms: Any, height: int, width: int) -> np.ndarray:
    """The unpadded (H, W, 3) uint8 picture of a normalised input image."""
    from unihema.data.transforms import TransformConfig

    transforms = transforms or TransformConfig()
    mean = torch.tensor(transforms.mean).view(3, 1, 1)
    std = torch.tensor(transforms.std).view(3, 1, 1)
    pixels = (image[:, :height, :width].float().cpu() * std + mean).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(1, 2, 0).numpy()


def _collect_segmentation(model, samples, task, run: EvalRun) -> TaskResult:
    config = run.config
    predicted, expected, ids, overlays = [], [], [], []
    for batch in run.batches(samples, task):
        images, image_mask = run.inputs(batch)
        outputs = model(images, task, prompts=batch["prompts"], image_mask=image_mask)
        sizes = [tuple(t["mask"].shape[-2:]) for t in batch["targets"]]
        probabilities = mask_probabilities(outputs.masks, images.shape[-2:], sizes)
        for i, (probability, target) in enumerate(zip(probabilities, batch["targets"])):
            predicted.append((probability > config.mask_threshold).cpu().numpy())
            expected.append(target["mask"].cpu().numpy() > 0.5)
            ids.append(batch["samples"][i].sample_id)
            if len(overlays) < config.overlay_images:
                image = _display_image(batch["images"][i], config.transforms, *sizes[i])
                overlays.append({"sample_id": ids[-1], "image": image, "predicted": predicted[-1],
                                 "target": expected[-1]})  # fmt: skip
    dice, iou = metrics.mask_overlaps(predicted, expected)
    per_image = [{"sample_id": s, "dice": float(d), "iou": float(j)} for s, d, j in zip(ids, dice, iou)]
    details = {"Dice": float(dice.mean()), "IoU": float(iou.mean()), "images": len(dice)}
    artifacts = {"per_image": per_image, "overlays": overlays}
    return TaskResult(
        task, TASK_METRICS[task], float(dice.mean()), details, per_image[:4], artifacts=artifacts
    )


def _collect_classification(model, samples, task, run: EvalRun) -> TaskResult:
    predicted, expected, anywhere = [], [], []
    allowed: torch.Tensor | None = None
    num_classes = len(CELL_CLASSES)
    for batch in run.batches(samples, task):
        images, image_mask = run.inputs(batch)
        outputs = model(images, task, prompts=batch["prompts"], image_mask=image_mask)
        if task is Task.CLASSIFICATION:
            logits = outputs.class_logits
            num_classes = logits.shape[-1]
            anywhere.extend(logits.argmax(-1).cpu().tolist())
            if run.config.cell_classes:
                if allowed is None:  # once: the size of the model's logits
                    allowed = torch.zeros(num_classes, dtype=torch.bool, device=logits.device)
                    allowed[list(run.config.cell_classes)] = True
                logits = logits.masked_fill(~allowed, float("-inf"))
            predicted.extend(logits.argmax(-1).cpu().tolist())
            expected.extend(int(t["cell_class"]) for t in batch["targets"])
        else:
            predicted.append(decode_attributes(outputs.attribute_logits, CELL_ATTRIBUTES)[0].cpu().numpy())
            expected.append(torch.stack([t["cell_attributes"] for t in batch["targets"]]).cpu().numpy())
    if task is Task.CLASSIFICATION:
        scores = metrics.classification_scores(predicted, expected)
        scores["accuracy_any_class"] = metrics.classification_scores(anywhere, expected)["accuracy"]
        scores["classes_scored"] = int(allowed.sum()) if allowed is not None else num_classes
        labels, matrix = metrics.confusion(predicted, expected)
        artifacts = {"confusion_matrix": {"labels": [_name(v, CELL_CLASSES) for v in labels],
                                          "matrix": matrix.tolist()}}  # fmt: skip
        return TaskResult(task, TASK_METRICS[task], scores["f1_weighted"], scores, artifacts=artifacts)
    scored = metrics.attribute_f1(np.concatenate(predicted), np.concatenate(expected))
    details = {"per_attribute_F1": dict(zip((n for n, _ in CELL_ATTRIBUTES), scored["per_attribute"]))}
    return TaskResult(task, TASK_METRICS[task], scored["f1"], details)


def _generate(model, samples, task, run: EvalRun) -> tuple[list[str], list[str], list[str], list[Sample]]:
    """Answers, references, prompts and the samples answered (those that loaded)."""
    hypotheses, references, prompts, answered = [], [], [], []
    for batch in run.batches(samples, task):
        images, image_mask = run.inputs(batch)
        answers = model.generate_text(
            images, batch["prompts"], image_mask=image_mask, num_beams=run.config.num_beams,
            max_new_tokens=run.config.max_new_tokens,
        )  # fmt: skip
        hypotheses.extend(answers)
        references.extend(t["text"] for t in batch["targets"])
        prompts.extend(batch["prompts"])
        answered.extend(batch["samples"])
    return hypotheses, references, prompts, answered


def _collect_text(model, samples, task, run: EvalRun) -> TaskResult:
    hypotheses, references, prompts, answered = _generate(model, samples, task, run)
    examples = [
        {"prompt": p, "answer": h, "reference": r}
        for p, h, r in list(zip(prompts, hypotheses, references))[:6]
    ]
    details: dict[str, Any] = {
        "exact_match": exact_match(hypotheses, references),
        "BLEU4_words": metrics.bleu4_words(hypotheses, references),
        "ROUGE_L": metrics.rouge_l(hypotheses, references),
        "one_word_references": metrics.one_word_share(references),
    }
    if task is Task.VQA and run.config.shuffled_image_check:
        # Only the samples that loaded, so that every answer has its reference (same progress bar).
        second = EvalRun(run.config, run.device, run.progress)
        shuffled = _generate(model, shuffled_images(answered), task, second)[0]
        if run.progress is not None and len(answered) < len(samples):
            run.progress(len(samples) - len(answered))  # the skipped samples have no second pass
        details["exact_match_shuffled_images"] = exact_match(shuffled, references)
        details["answers_changed_by_shuffling"] = 1.0 - exact_match(shuffled, hypotheses)
        grounded = grounded_answers(answered)
        if all(answer is not None for answer in grounded):
            details["exact_match_shuffled_grounded"] = exact_match(grounded, references)
        else:
            grounded = None  # some questions are not the templates': no ceiling to compare with
        details["exact_match_by_question"] = exact_match_by_question(
            prompts, hypotheses, shuffled, references, grounded
        )
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
    progress: Progress | None = None,
) -> dict[Task, TaskResult]:
    """Evaluate every task that has samples; returns results keyed by task."""
    return {
        Task(task): evaluate_task(model, samples, task, config, progress)
        for task, samples in samples_by_task.items()
        if samples
    }


__all__ = [
    "TASK_METRICS",
    "EvalConfig",
    "EvalRun",
    "TaskResult",
    "evaluate",
    "evaluate_task",
    "evaluation_steps",
    "exact_match",
    "exact_match_by_question",
    "shuffled_images",
]
