import numpy as np
import pytest

from unihema.evaluate.metrics import (
    DetectionPrediction,
    DetectionTarget,
    attribute_f1,
    bleu4,
    classification_scores,
    detection_map,
    dice_scores,
    match_detections,
    mean_dice,
)

BOXES = np.array([[10, 10, 50, 50], [60, 60, 90, 100]], dtype=np.float32)


def _target(boxes=BOXES, labels=(0, 1)):
    return DetectionTarget(boxes=boxes, labels=np.array(labels), size=(128, 128))


def test_perfect_detections_score_one():
    prediction = DetectionPrediction(boxes=BOXES, scores=np.array([0.9, 0.8]), labels=np.array([0, 1]))
    result = detection_map([prediction], [_target()])
    assert result["map50"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(1.0)
    assert result["map50_per_class"] == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}


def test_wrong_class_and_shifted_box_lower_map():
    wrong_class = DetectionPrediction(boxes=BOXES, scores=np.array([0.9, 0.8]), labels=np.array([1, 0]))
    assert detection_map([wrong_class], [_target()])["map50"] == pytest.approx(0.0)
    half = DetectionPrediction(boxes=BOXES[:1], scores=np.array([0.9]), labels=np.array([0]))
    result = detection_map([half], [_target()])
    assert result["map50"] == pytest.approx(0.5)
    shifted = BOXES + np.array([30, 30, 30, 30], dtype=np.float32)
    far = DetectionPrediction(boxes=shifted, scores=np.array([0.9, 0.8]), labels=np.array([0, 1]))
    assert detection_map([far], [_target()])["map50"] == pytest.approx(0.0)


def test_no_detections_is_zero_not_error():
    empty = DetectionPrediction(boxes=np.zeros((0, 4)), scores=np.zeros(0), labels=np.zeros(0, dtype=int))
    assert detection_map([empty], [_target()])["map50"] == 0.0


def test_attribute_f1_ignores_unknown_entries_without_misaligning_rows():
    target = np.array([[0, 1], [1, -1], [1, 0]])
    predicted = np.array([[0, 1], [1, 0], [1, 0]])
    result = attribute_f1(predicted, target)
    assert result["f1"] == pytest.approx(1.0)
    wrong = np.array([[1, 1], [0, 0], [0, 0]])
    assert attribute_f1(wrong, target)["per_attribute"][0] == pytest.approx(0.0)


def test_dice():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[:1] = True
    assert dice_scores([a], [a])[0] == 1.0
    assert dice_scores([a], [b])[0] == pytest.approx(2 * 4 / (8 + 4))
    assert mean_dice([np.zeros((2, 2), bool)], [np.zeros((2, 2), bool)]) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice_scores([a], [np.zeros((3, 3), bool)])


def test_classification_and_bleu():
    scores = classification_scores([0, 1, 1, 2], [0, 1, 2, 2])
    assert scores["accuracy"] == pytest.approx(0.75)
    assert 0 < scores["f1_macro"] < 1
    assert bleu4(
        ["the nucleus is segmented and bilobed"], ["the nucleus is segmented and bilobed"]
    ) == pytest.approx(100.0)
    assert bleu4(["a b c d"], ["the nucleus is segmented and bilobed"]) < 10


def test_match_detections_one_to_one():
    predictions = np.array([[10, 10, 50, 50], [11, 11, 50, 50], [200, 200, 210, 210]], dtype=float)
    assert match_detections(predictions, BOXES) == [(0, 0)]
