import json

import numpy as np
import pytest
from PIL import Image

from unihema.data.schema import Task
from unihema.evaluate.evaluator import TaskResult
from unihema.evaluate.report import build_report, markdown_report, write_report
from unihema.inference.plotting import draw_detections, draw_mask


def test_report_json_and_markdown(tmp_path):
    before = {Task.DETECTION: TaskResult(Task.DETECTION, "mAP50", 0.01)}
    after = {
        Task.DETECTION: TaskResult(Task.DETECTION, "mAP50", 0.4, {"mAP50_95": 0.2}),
        Task.VQA: TaskResult(
            Task.VQA, "BLEU4", 30.0, examples=[{"prompt": "Q: x?", "answer": "a", "reference": "b"}]
        ),
    }
    report = build_report(before, after, {"preset": "tiny", "nan": float("nan")})
    json_path, md_path = write_report(tmp_path, report, overlays=["overlays/detection.png"])
    loaded = json.loads(json_path.read_text())
    assert loaded["tasks"]["detection"]["before"] == 0.01
    assert loaded["tasks"]["detection"]["improved"] is True
    assert loaded["tasks"]["vqa"]["before"] is None and loaded["tasks"]["vqa"]["improved"] is False
    assert loaded["meta"]["nan"] is None
    text = md_path.read_text()
    assert "| detection | mAP50 | 0.0100 | 0.4000 |" in text
    assert "| Q: x? | a | b |" in text and "overlays/detection.png" in text
    assert not list(tmp_path.glob(".*tmp"))


def test_overlays_change_pixels_where_drawn():
    image = Image.new("RGB", (40, 40), (255, 255, 255))
    boxed = np.asarray(draw_detections(image, np.array([[5, 5, 30, 30]]), [0], [0.9], min_side=40))
    assert boxed.shape == (40, 40, 3)
    assert (boxed[5, 10] != 255).any() and (boxed[20, 20] == 255).all()
    mask = np.zeros((40, 40), bool)
    mask[:10] = True
    blended = np.asarray(draw_mask(image, mask))
    scale = blended.shape[0] // 40
    assert (blended[: 10 * scale] != 255).any() and (blended[10 * scale :] == 255).all()


def test_small_fields_are_upscaled_so_boxes_stay_on_their_cells():
    image = Image.new("RGB", (128, 96), (255, 255, 255))
    boxed = np.asarray(draw_detections(image, np.array([[10, 20, 30, 40]]), [0], None))
    # The shorter side reaches 512 px by an integer factor; the box is drawn at the scaled position.
    assert boxed.shape == (96 * 6, 128 * 6, 3)
    assert (boxed[20 * 6, 15 * 6] != 255).any() and (boxed[30 * 6, 20 * 6] == 255).all()
    with pytest.raises(ValueError, match="mask shape"):
        draw_mask(image, np.zeros((3, 3), bool))


def test_report_shows_the_shuffled_image_check_per_kind_of_question():
    rows = [
        {"topic": "class", "form": "open", "questions": 8, "exact_match": 0.75,
         "exact_match_shuffled_images": 0.25},
        {"topic": "cell_size", "form": "verify", "questions": 4, "exact_match": 0.5,
         "exact_match_shuffled_images": 0.5},
    ]  # fmt: skip
    details = {"exact_match": 0.667, "exact_match_shuffled_images": 0.333,
               "answers_changed_by_shuffling": 0.4, "exact_match_by_question": rows}  # fmt: skip
    after = {Task.VQA: TaskResult(Task.VQA, "BLEU4", 30.0, details)}
    text = markdown_report(build_report({}, after, {}))
    assert "| each question with its own cell | 0.667 |" in text
    assert "| class | open | 8 | 0.750 | 0.250 |" in text
    assert "| cell_size | verify | 4 | 0.500 | 0.500 |" in text


def test_report_shows_what_perfect_grounding_scores_with_shuffled_images():
    rows = [{"topic": "class", "form": "open", "questions": 8, "exact_match": 0.75,
             "exact_match_shuffled_images": 0.5, "exact_match_shuffled_grounded": 0.125}]  # fmt: skip
    details = {"exact_match": 0.75, "exact_match_shuffled_images": 0.5, "exact_match_shuffled_grounded": 0.125,
               "answers_changed_by_shuffling": 0.25, "exact_match_by_question": rows}  # fmt: skip
    text = markdown_report(build_report({}, {Task.VQA: TaskResult(Task.VQA, "BLEU4", 30.0, details)}, {}))
    assert "| images shuffled, a perfectly grounded model (the answer about the cell shown) | 0.125 |" in text
    assert "| class | open | 8 | 0.750 | 0.500 | 0.125 |" in text
    assert "would fall to the last row" in text
    del details["exact_match_shuffled_grounded"], rows[0]["exact_match_shuffled_grounded"]
    text = markdown_report(build_report({}, {Task.VQA: TaskResult(Task.VQA, "BLEU4", 30.0, details)}, {}))
    assert "perfectly grounded" not in text and "| class | open | 8 | 0.750 | 0.500 |\n" in text + "\n"
