"""The paper's metrics, computed with the field's libraries.

| task | metric | library |
|---|---|---|
| detection | COCO box AP at IoU 0.5 and 0.5:0.95, per class, precision-recall curves | faster-coco-eval |
| FoV morphology | mean of per-attribute macro F1, on detections matched to cells | scikit-learn |
| segmentation | Dice and IoU per image, averaged over images | numpy |
| single-cell classification | accuracy, macro F1, weighted F1, confusion matrix | scikit-learn |
| cell morphology (WBCAtt) | mean over the 11 attributes of per-attribute macro F1 | scikit-learn |
| VQA / MLM | corpus BLEU-4 (0-100, lower-cased), the paper's BLEU-4, ROUGE-L, exact match | sacrebleu |

Differences from the authors' evaluation code, on purpose (see upstream notes, section 6):
- COCO evaluation gets every kept detection (no 0.1 score cut before COCO eval), and COCO's per-image cap
  (``maxDets``) is the evaluation's detection cap, not 100, so dense red-cell fields are not truncated;
- FoV morphology is scored on detections matched to ground-truth cells by IoU >= 0.5 among the model's
  own confident boxes, not on queries picked by the training matcher with ground truth, and unknown
  attribute values are dropped per entry without misaligning rows;
- Dice is averaged per image at any batch size.

BLEU-4 is 0 on a corpus of one-word answers (there are no 2-, 3- or 4-grams to match): exact match is the
number to read for short answers. No installed library computes ROUGE-L, so :func:`rouge_l` implements the
LCS-based F-measure of ``rouge-score`` (the package HF ``evaluate`` calls), with its tokenisation.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sacrebleu
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

UNKNOWN = -1
MATCH_IOU = 0.5
COCO_DEFAULT_MAX_DETECTIONS = 100
BLEU_ORDER = 4
NLTK_METHOD4_K = 5
"""The ``k`` of NLTK's smoothing method 4 (Chen and Cherry 2014), its default."""


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


def coco_dicts(
    predictions: Sequence[DetectionPrediction], targets: Sequence[DetectionTarget]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO ground-truth dataset and detection list of ``predictions``/``targets`` (image ids from 1,
    category id = label + 1), as any COCO evaluator (faster-coco-eval, pycocotools) reads them."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    labels_seen: set[int] = set()
    for image_id, (prediction, target) in enumerate(zip(predictions, targets), start=1):
        height, width = target.size
        images.append({"id": image_id, "height": int(height), "width": int(width)})
        boxes = np.asarray(target.boxes, dtype=np.float64).reshape(-1, 4)
        for box, label in zip(boxes.tolist(), np.asarray(target.labels).reshape(-1).tolist()):
            x0, y0, x1, y1 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            })  # fmt: skip
            labels_seen.add(int(label))
        boxes = np.asarray(prediction.boxes, dtype=np.float64).reshape(-1, 4).tolist()
        scores = np.asarray(prediction.scores, dtype=np.float64).reshape(-1).tolist()
        for box, score, label in zip(boxes, scores, np.asarray(prediction.labels).reshape(-1).tolist()):
            x0, y0, x1, y1 = box
            detections.append(
                {"image_id": image_id, "category_id": int(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                 "score": score}
            )  # fmt: skip
            labels_seen.add(int(label))
    categories = [{"id": label + 1, "name": str(label)} for label in sorted(labels_seen)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def coco_max_dets(max_detections: int) -> list[int]:
    """COCO's ``params.maxDets`` for a per-image cap: ``[1, 10, cap]`` (AP reads the last entry)."""
    return [1, min(10, max_detections), max_detections]


def detection_map(
    predictions: Sequence[DetectionPrediction],
    targets: Sequence[DetectionTarget],
    max_detections: int | None = None,
) -> dict[str, Any]:
    """COCO box AP with faster-coco-eval.

    Args:
        predictions, targets: one entry per image.
        max_detections: COCO's per-image cap (``maxDets``); ``None`` = the most detections any image has
            (at least COCO's 100), so nothing is truncated.

    Returns:
        ``map50`` (the paper's metric), ``map`` (AP@[.5:.95]), ``map50_per_class`` and ``map_per_class``
        (label -> AP), ``recall_thresholds`` (COCO's 101 recall points), ``pr_curves`` (label -> the
        interpolated precision at each recall point, IoU 0.5) and ``max_detections`` (the cap used).
        Classes with no ground truth in ``targets`` are ignored, as in COCO evaluation. With no ground
        truth or no detections at all the APs are 0.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    ground_truth, detections = coco_dicts(predictions, targets)
    if max_detections is None:
        most = max((len(np.asarray(p.scores).reshape(-1)) for p in predictions), default=0)
        max_detections = max(COCO_DEFAULT_MAX_DETECTIONS, most)
    recall_thresholds = np.linspace(0.0, 1.0, 101)
    result: dict[str, Any] = {
        "map50": 0.0, "map": 0.0, "map50_per_class": {}, "map_per_class": {},
        "recall_thresholds": recall_thresholds, "pr_curves": {}, "max_detections": int(max_detections),
    }  # fmt: skip
    if not ground_truth["annotations"] or not detections:
        return result
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *_: None)
        evaluator.params.maxDets = coco_max_dets(int(max_detections))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    # precision: [iou thresholds, recall points, categories, area ranges, max detections]; -1 = no data.
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]
    for column, category_id in enumerate(evaluator.params.catIds):
        per_iou = precision[:, :, column]
        if (per_iou[0] > -1).any():
            label = int(category_id) - 1
            result["map50_per_class"][label] = float(per_iou[0][per_iou[0] > -1].mean())
            result["map_per_class"][label] = float(per_iou[per_iou > -1].mean())
            result["pr_curves"][label] = np.clip(per_iou[0], 0.0, None)
    result["recall_thresholds"] = np.asarray(evaluator.params.recThrs, dtype=np.float64)
    # COCO stats use -1 when nothing could be evaluated: report 0 instead.
    result["map50"] = max(float(stats[1]), 0.0)
    result["map"] = max(float(stats[0]), 0.0)
    return result


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
    """Mean over attributes of the per-attribute macro F1, ignoring ``UNKNOWN`` targets entry by entry
    (WBCAtt's protocol).

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


def mask_overlaps(
    predicted: Sequence[np.ndarray], target: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of boolean masks (two empty masks score 1 on both)."""
    if len(predicted) != len(target):
        raise ValueError(f"{len(predicted)} predicted masks for {len(target)} targets")
    dice, iou = [], []
    for pred_mask, target_mask in zip(predicted, target):
        pred_mask = np.asarray(pred_mask, dtype=bool)
        target_mask = np.asarray(target_mask, dtype=bool)
        if pred_mask.shape != target_mask.shape:
            raise ValueError(f"mask shapes differ: {pred_mask.shape} vs {target_mask.shape}")
        intersection = float(np.logical_and(pred_mask, target_mask).sum())
        total = float(pred_mask.sum() + target_mask.sum())
        dice.append(1.0 if total == 0 else 2.0 * intersection / total)
        iou.append(1.0 if total == 0 else intersection / (total - intersection))
    return np.asarray(dice, dtype=np.float64), np.asarray(iou, dtype=np.float64)


def dice_scores(predicted: Sequence[np.ndarray], target: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image Dice of boolean masks; two empty masks score 1."""
    return mask_overlaps(predicted, target)[0]


def iou_scores(predicted: Sequence[np.ndarray], target: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image IoU (Jaccard) of boolean masks; two empty masks score 1."""
    return mask_overlaps(predicted, target)[1]


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


def confusion(predicted: Sequence[int], target: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """The labels seen in either (sorted) and the confusion matrix over them: rows true, columns predicted."""
    labels = sorted({int(v) for v in target} | {int(v) for v in predicted})
    if not labels:
        return [], np.zeros((0, 0), dtype=np.int64)
    return labels, confusion_matrix(target, predicted, labels=labels)


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 on a 0-100 scale, lower-cased, sacrebleu's 13a tokenisation and exp smoothing."""
    _check_pairs(hypotheses, references)
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], lowercase=True).score)


_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[^\sa-z0-9]")
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: words (hyphenated words stay whole) and punctuation marks apart, as NLTK's
    ``word_tokenize`` splits the attribute sentences of VQA and MLM."""
    return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4_words(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """The paper's BLEU-4 on a 0-100 scale: lower-cased word tokens (:func:`words`), NLTK's
    ``corpus_bleu`` with weights (1/4, 1/4, 1/4, 1/4) and smoothing method 4.

    Clipped n-gram matches and n-gram counts (at least 1 per sentence) are summed over the corpus; an order
    with no match gets ``1 / (2^i * k / ln(hypothesis length))`` matches (i = 1, 2, ... over such orders,
    k = 5); the brevity penalty uses the corpus lengths. No unigram match at all scores 0.
    """
    _check_pairs(hypotheses, references)
    matches = [0] * BLEU_ORDER
    counts = [0] * BLEU_ORDER
    hypothesis_length = reference_length = 0
    for hypothesis, reference in zip(hypotheses, references):
        hyp, ref = words(hypothesis), words(reference)
        hypothesis_length += len(hyp)
        reference_length += len(ref)
        for n in range(1, BLEU_ORDER + 1):
            hyp_ngrams, ref_ngrams = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(c, ref_ngrams[g]) for g, c in hyp_ngrams.items())
            counts[n - 1] += max(1, sum(hyp_ngrams.values()))
    if not hypotheses or matches[0] == 0:
        return 0.0
    precisions, smoothed = [], 1
    for match, count in zip(matches, counts):
        if match == 0 and hypothesis_length > 1:
            match = 1 / (2**smoothed * NLTK_METHOD4_K / math.log(hypothesis_length))
            smoothed += 1
        precisions.append(match / count)
    if min(precisions) <= 0:
        return 0.0
    brevity = (
        1.0 if hypothesis_length > reference_length else math.exp(1 - reference_length / hypothesis_length)
    )
    return 100.0 * brevity * math.exp(sum(math.log(p) for p in precisions) / BLEU_ORDER)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean over answers of the ROUGE-L F-measure (0-1): ``2PR / (P + R)`` with P and R the longest
    common subsequence over the answer's and the reference's length, on ``rouge-score`` tokens (lower-cased
    runs of letters and digits, no stemming)."""
    _check_pairs(hypotheses, references)
    scores = []
    for hypothesis, reference in zip(hypotheses, references):
        hyp, ref = _ROUGE_TOKEN.findall(hypothesis.lower()), _ROUGE_TOKEN.findall(reference.lower())
        common = _lcs_length(hyp, ref) if hyp and ref else 0
        scores.append(0.0 if common == 0 else 2.0 * common / (len(hyp) + len(ref)))
    return float(np.mean(scores)) if scores else 0.0


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of answers equal to the reference, ignoring case and surrounding space."""
    if not references:
        return 0.0
    return float(np.mean([h.strip().lower() == r.strip().lower() for h, r in zip(hypotheses, references)]))


def one_word_share(references: Sequence[str]) -> float:
    """Fraction of references of at most one word (where BLEU-4 has nothing to match)."""
    if not references:
        return 0.0
    return float(np.mean([len(words(r)) <= 1 for r in references]))


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
