"""The paper's metrics, computed with the field's libraries.

| task | metric | library |
|---|---|---|
| detection | COCO mAP at IoU 0.5 (and 0.5:0.95) | faster-coco-eval |
| FoV morphology | mean over attributes of per-attribute macro F1, on detections matched to cells | scikit-learn |
| segmentation | mean per-image Dice | numpy |
| single-cell classification | weighted F1 (also macro F1 and accuracy) | scikit-learn |
| cell morphology (WBCAtt) | mean over the 11 attributes of per-attribute macro F1 | scikit-learn |
| VQA / MLM | corpus BLEU-4 (0-100), lower-cased | sacrebleu |

Differences from the authors' evaluation code, on purpose (see upstream notes, section 6):
- COCO evaluation gets every kept detection (no 0.1 score cut before COCO eval);
- FoV morphology is scored on detections matched to ground-truth cells by IoU >= 0.5 among the model's
  own confident boxes, not on queries picked by the training matcher with ground truth, and unknown
  attribute values are dropped per entry without misaligning rows;
- Dice is averaged per image at any batch size.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sacrebleu
from sklearn.metrics import accuracy_score, f1_score

UNKNOWN = -1
MATCH_IOU = 0.5


@dataclass(frozen=True)
class DetectionPrediction:
    """Detections for one image: ``boxes`` (N, 4) xyxy pixels, ``scores`` (N,), ``labels`` (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class DetectionTarget:
    """Ground truth for one image: ``boxes`` (M, 4) xyxy pixels, ``labels`` (M,), image ``size`` (h, w)."""

    boxes: np.ndarray
    labels: np.ndarray
    size: tuple[int, int]


def _coco_dicts(
    predictions: Sequence[DetectionPrediction], targets: Sequence[DetectionTarget]
) -> tuple[dict, list[dict]]:
    images, annotations, detections = [], [], []
    labels_seen: set[int] = set()
    for image_id, (prediction, target) in enumerate(zip(predictions, targets, strict=True), start=1):
        height, width = target.size
        images.append({"id": image_id, "height": int(height), "width": int(width)})
        for box, label in zip(np.asarray(target.boxes).reshape(-1, 4), np.asarray(target.labels).reshape(-1)):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            })  # fmt: skip
            labels_seen.add(int(label))
        boxes = np.asarray(prediction.boxes).reshape(-1, 4)
        for box, score, label in zip(boxes, np.asarray(prediction.scores), np.asarray(prediction.labels)):
            x0, y0, x1, y1 = (float(v) for v in box)
            detections.append({
                "image_id": image_id, "category_id": int(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
            })  # fmt: skip
            labels_seen.add(int(label))
    categories = [{"id": label + 1, "name": str(label)} for label in sorted(labels_seen)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def detection_map(
    predictions: Sequence[DetectionPrediction], targets: Sequence[DetectionTarget]
) -> dict[str, float | dict[int, float]]:
    """COCO box mAP. Returns ``map50`` (the paper's metric), ``map`` (AP@[.5:.95]) and ``map50_per_class``.

    Classes with no ground truth in ``targets`` are ignored, as in COCO evaluation. With no ground truth
    at all the result is 0.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    ground_truth, detections = _coco_dicts(predictions, targets)
    if not ground_truth["annotations"] or not detections:
        return {"map50": 0.0, "map": 0.0, "map50_per_class": {}}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *_: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    # precision: [iou thresholds, recall points, categories, area ranges, max detections]; -1 = no data.
    precision = np.asarray(evaluator.eval["precision"])[0, :, :, 0, -1]
    per_class: dict[int, float] = {}
    for column, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, column]
        values = values[values > -1]
        if values.size:
            per_class[int(category_id) - 1] = float(values.mean())
    # COCO stats use -1 when nothing could be evaluated: report 0 instead.
    return {
        "map50": max(float(stats[1]), 0.0),
        "map": max(float(stats[0]), 0.0),
        "map50_per_class": per_class,
    }


def box_iou_numpy(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, shape (len(a), len(b))."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_detections(
    pred_boxes: np.ndarray, target_boxes: np.ndarray, iou_threshold: float = MATCH_IOU
) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by IoU (predictions are assumed sorted by score, best first)."""
    iou = box_iou_numpy(pred_boxes, target_boxes)
    matches: list[tuple[int, int]] = []
    taken: set[int] = set()
    for pred_index in range(iou.shape[0]):
        order = np.argsort(-iou[pred_index])
        for target_index in order:
            if iou[pred_index, target_index] < iou_threshold:
                break
            if int(target_index) not in taken:
                taken.add(int(target_index))
                matches.append((pred_index, int(target_index)))
                break
    return matches


def attribute_f1(predicted: np.ndarray, target: np.ndarray) -> dict[str, float | list[float]]:
    """Mean over attributes of the per-attribute macro F1, ignoring ``UNKNOWN`` targets entry by entry.

    ``predicted`` and ``target`` are integer arrays of shape (N, A). Attributes with no known target are
    left out of the mean (their entry in ``per_attribute`` is NaN).
    """
    predicted = np.asarray(predicted).reshape(len(predicted), -1)
    target = np.asarray(target).reshape(len(target), -1)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {predicted.shape} and target {target.shape} shapes differ")
    per_attribute: list[float] = []
    for column in range(target.shape[1]):
        known = target[:, column] != UNKNOWN
        if not known.any():
            per_attribute.append(float("nan"))
            continue
        per_attribute.append(
            float(f1_score(target[known, column], predicted[known, column], average="macro", zero_division=0))
        )
    valid = [value for value in per_attribute if not np.isnan(value)]
    return {"f1": float(np.mean(valid)) if valid else 0.0, "per_attribute": per_attribute}


def dice_scores(predicted: Sequence[np.ndarray], target: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image Dice of boolean masks; two empty masks score 1."""
    if len(predicted) != len(target):
        raise ValueError(f"{len(predicted)} predicted masks for {len(target)} targets")
    scores = []
    for pred_mask, target_mask in zip(predicted, target):
        pred_mask = np.asarray(pred_mask, dtype=bool)
        target_mask = np.asarray(target_mask, dtype=bool)
        if pred_mask.shape != target_mask.shape:
            raise ValueError(f"mask shapes differ: {pred_mask.shape} vs {target_mask.shape}")
        total = pred_mask.sum() + target_mask.sum()
        scores.append(1.0 if total == 0 else 2.0 * np.logical_and(pred_mask, target_mask).sum() / total)
    return np.asarray(scores, dtype=np.float64)


def mean_dice(predicted: Sequence[np.ndarray], target: Sequence[np.ndarray]) -> float:
    scores = dice_scores(predicted, target)
    return float(scores.mean()) if len(scores) else 0.0


def classification_scores(predicted: Sequence[int], target: Sequence[int]) -> dict[str, float]:
    """Weighted F1 (the headline number), macro F1 and accuracy."""
    if len(target) == 0:
        return {"f1_weighted": 0.0, "f1_macro": 0.0, "accuracy": 0.0}
    return {
        "f1_weighted": float(f1_score(target, predicted, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(target, predicted, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(target, predicted)),
    }


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 on a 0-100 scale, lower-cased, sacrebleu's 13a tokenisation and exp smoothing."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], lowercase=True).score)
