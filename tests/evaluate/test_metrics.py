import numpy as np
import pytest

from unihema.evaluate.metrics import (
    DetectionPrediction,
    DetectionTarget,
    attribute_f1,
    bleu4,
    bleu4_words,
    classification_scores,
    confusion,
    detection_map,
    dice_scores,
    exact_match,
    iou_scores,
    mask_overlaps,
    match_detections,
    mean_dice,
    one_word_share,
    rouge_l,
    words,
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


def test_classification_scores_and_confusion_of_a_two_class_case_by_hand():
    # true 0 0 0 1, predicted 0 0 1 1: class 0 P=1 R=2/3 F1=0.8, class 1 P=1/2 R=1 F1=2/3.
    truth, predicted = [0, 0, 0, 1], [0, 0, 1, 1]
    scores = classification_scores(predicted, truth)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert scores["f1_weighted"] == pytest.approx((3 * 0.8 + 1 * 2 / 3) / 4)
    labels, matrix = confusion(predicted, truth)
    assert labels == [0, 1] and matrix.tolist() == [[2, 1], [0, 1]]


def test_precision_recall_curve_of_three_detections_by_hand():
    # Two cells; detections at 0.9 (hit), 0.8 (miss), 0.7 (hit): precision 1 up to recall 0.5, then 2/3.
    target = _target(labels=(0, 0))
    boxes = np.array([[10, 10, 50, 50], [100, 0, 120, 20], [60, 60, 90, 100]], dtype=np.float32)
    prediction = DetectionPrediction(boxes=boxes, scores=np.array([0.9, 0.8, 0.7]), labels=np.zeros(3, int))
    result = detection_map([prediction], [target])
    recall, curve = result["recall_thresholds"], result["pr_curves"][0]
    assert len(recall) == 101 and curve.shape == (101,)
    np.testing.assert_allclose(curve[recall <= 0.5 + 1e-9], 1.0)
    np.testing.assert_allclose(curve[recall > 0.5 + 1e-9], 2 / 3)
    assert result["map50"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert result["map50_per_class"][0] == pytest.approx(result["map50"])


def _dense_field(rng, cells: int, size: int = 512):
    corners = rng.uniform(0, size - 30, size=(cells, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(8, 30, size=(cells, 2))], axis=1)
    return boxes.astype(np.float32)


def test_the_detection_cap_follows_max_detections_instead_of_cocos_100():
    # A dense red-cell field: 150 cells, all found. COCO's default of 100 detections would cap recall at 2/3.
    rng = np.random.default_rng(0)
    boxes = _dense_field(rng, 150)
    target = DetectionTarget(boxes=boxes, labels=np.zeros(150, int), size=(512, 512))
    found = DetectionPrediction(boxes=boxes, scores=np.linspace(0.99, 0.5, 150), labels=np.zeros(150, int))
    assert detection_map([found], [target])["map50"] == pytest.approx(1.0)
    assert detection_map([found], [target], max_detections=300)["max_detections"] == 300
    assert detection_map([found], [target], max_detections=100)["map50"] < 0.7


def test_faster_coco_eval_agrees_with_pycocotools():
    pycocotools = pytest.importorskip("pycocotools.coco")
    from pycocotools.cocoeval import COCOeval

    from unihema.evaluate.metrics import coco_dicts, coco_max_dets

    rng = np.random.default_rng(1)
    predictions, targets = [], []
    for _ in range(4):
        boxes = _dense_field(rng, 60)
        labels = rng.integers(0, 3, size=60)
        targets.append(DetectionTarget(boxes=boxes, labels=labels, size=(512, 512)))
        # 130 detections per image (more than COCO's 100): jittered true boxes, some relabelled, plus noise.
        jittered = boxes + rng.normal(0, 1.5, size=boxes.shape).astype(np.float32)
        noise = _dense_field(rng, 70)
        predictions.append(
            DetectionPrediction(
                boxes=np.concatenate([jittered, noise]), scores=rng.uniform(0, 1, size=130),
                labels=np.concatenate([np.where(rng.uniform(size=60) < 0.2, (labels + 1) % 3, labels),
                                       rng.integers(0, 3, size=70)]),
            )
        )  # fmt: skip
    cap = 130
    ours = detection_map(predictions, targets, max_detections=cap)
    ground_truth, detections = coco_dicts(predictions, targets)
    coco_gt = pycocotools.COCO()
    coco_gt.dataset = ground_truth
    coco_gt.createIndex()
    reference = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
    reference.params.maxDets = coco_max_dets(cap)
    reference.evaluate()
    reference.accumulate()
    # pycocotools' summarize() reads AP@[.5:.95] at a hard-coded maxDets of 100 (-1 for another cap), so the
    # reference numbers are taken from its precision table the way summarize() averages it.
    precision = reference.eval["precision"][:, :, :, 0, -1]
    assert ours["map"] == pytest.approx(precision[precision > -1].mean(), abs=1e-6)
    assert ours["map50"] == pytest.approx(precision[0][precision[0] > -1].mean(), abs=1e-6)
    assert 0.2 < ours["map50"] < 0.95
    for column, category_id in enumerate(reference.params.catIds):
        assert ours["map50_per_class"][category_id - 1] == pytest.approx(
            precision[0, :, column].mean(), abs=1e-6
        )
        assert ours["map_per_class"][category_id - 1] == pytest.approx(
            precision[:, :, column].mean(), abs=1e-6
        )


def test_dice_and_iou_of_tiny_masks_by_hand():
    a = np.zeros((2, 3), bool)
    a[0] = True  # 3 pixels
    b = np.zeros((2, 3), bool)
    b[:, 0] = True  # 2 pixels, 1 shared with a
    dice, iou = mask_overlaps([a, a, np.zeros((2, 2), bool)], [b, a, np.zeros((2, 2), bool)])
    np.testing.assert_allclose(dice, [2 * 1 / 5, 1.0, 1.0])
    np.testing.assert_allclose(iou, [1 / 4, 1.0, 1.0])
    np.testing.assert_allclose(iou_scores([a], [b]), [0.25])


def test_rouge_l_of_known_strings():
    # LCS("the cat on the mat", "the cat sat on the mat") = 5: P = 5/5, R = 5/6, F = 2PR / (P + R) = 10/11.
    assert rouge_l(["the cat on the mat"], ["The cat sat on the mat."]) == pytest.approx(10 / 11)
    assert rouge_l(["a b c d"], ["d c b a"]) == pytest.approx(0.25)  # LCS 1 of 4 and 4
    assert rouge_l(["", "round"], ["round", "round"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        rouge_l(["a", "b"], ["a"])


def test_bleu_is_zero_on_one_word_answers_and_the_paper_variant_smooths_them():
    hypotheses, references = ["yes", "no"], ["yes", "yes"]
    assert bleu4(hypotheses, references) == 0.0
    assert one_word_share(references) == 1.0
    assert exact_match(hypotheses, references) == 0.5
    # NLTK corpus BLEU, method 4: p1 = 1/2; p2..p4 have 0 matches of 2 counted n-grams (at least 1 per
    # sentence) and get 1 / (2^i * 5 / ln 2) matches for i = 1, 2, 3; hypotheses as long as references.
    smoothed = [1 / (2**i * 5 / np.log(2)) / 2 for i in (1, 2, 3)]
    expected = 100 * np.exp(np.mean(np.log([0.5, *smoothed])))
    assert bleu4_words(hypotheses, references) == pytest.approx(expected)
    sentence = "the nucleus is segmented-bilobed, with coarse chromatin"
    assert words(sentence)[3:5] == ["segmented-bilobed", ","]
    assert bleu4_words([sentence], [sentence.upper()]) == pytest.approx(100.0)
    assert bleu4_words(["x y"], ["a b"]) == 0.0
