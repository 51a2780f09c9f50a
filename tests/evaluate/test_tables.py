"""The Table 1 / Table 2 report: seen and unseen datasets apart, percentages, means, skips, CSV and JSON."""

import csv
import io
import json

import numpy as np
import pytest

from unihema.data.schema import Task
from unihema.evaluate.evaluator import TaskResult
from unihema.evaluate.suite import PROBE_TASK, DatasetResult, EvalDataset
from unihema.evaluate.tables import evaluation_csv, write_evaluation_report


def _results():
    curves = {"rbc": {"recall": np.linspace(0, 1, 101).tolist(), "precision": [0.8] * 101, "AP50": 0.8}}
    detection = TaskResult(
        Task.DETECTION, "mAP50", 0.8, {"mAP50": 0.8, "mAP50_95": 0.5, "AP50_per_class": {"rbc": 0.8},
                                       "AP_per_class": {"rbc": 0.5}},
        evaluated=10, artifacts={"pr_curves": curves},
        skipped=[{"sample": "bccd/BloodImage_7", "reason": "OSError: truncated"}],
    )  # fmt: skip
    overlay = {"sample_id": "s0", "image": np.zeros((8, 8, 3), np.uint8), "predicted": np.eye(8, dtype=bool),
               "target": np.eye(8, dtype=bool)}  # fmt: skip
    segmentation = TaskResult(Task.SEGMENTATION, "Dice", 0.9, {"Dice": 0.9, "IoU": 0.82}, evaluated=4,
                              artifacts={"per_image": [{"sample_id": "s0", "dice": 0.9, "iou": 0.82}],
                                         "overlays": [overlay]})  # fmt: skip
    vqa = TaskResult(Task.VQA, "BLEU4", 0.0, {"BLEU4_words": 12.5, "ROUGE_L": 0.4, "exact_match": 0.6,
                                                "one_word_references": 1.0}, evaluated=5)  # fmt: skip
    probe = TaskResult(Task.CLASSIFICATION, "probe_F1_weighted", 0.7,
                       {"logreg_f1_macro": 0.6, "logreg_accuracy": 0.75, "knn1_f1_weighted": 0.65,
                        "knn20_f1_weighted": 0.55, "protocol": "5-fold stratified CV"}, evaluated=30,
                       artifacts={"tsne": {"points": np.random.default_rng(0).normal(size=(6, 2)),
                                           "labels": ["a", "b"] * 3}})  # fmt: skip
    seen = EvalDataset("bccd", seen=True, source="/data/bccd", trained_tasks=["detection"],
                       read_skipped=[{"sample": "JPEGImages/x.jpg", "reason": "not an image"}])  # fmt: skip
    other = EvalDataset("txl", seen=True)
    unseen = EvalDataset("raabin", seen=False)
    return [
        DatasetResult(seen, {"detection": detection, "segmentation": segmentation}),
        DatasetResult(
            other, {"detection": TaskResult(Task.DETECTION, "mAP50", 0.6, {"mAP50_95": 0.3}, evaluated=3)}
        ),
        DatasetResult(unseen, {PROBE_TASK: probe, "vqa": vqa}),
    ]


def test_report_separates_seen_and_unseen_datasets(tmp_path):
    paths = write_evaluation_report(tmp_path, _results(), {"model": "m", "split": "test"})
    text = paths["markdown"].read_text()
    table1, table2 = (
        text.index("## Table 1: datasets seen in training"),
        text.index("## Table 2: datasets not"),
    )
    assert table1 < text.index("| bccd | 80.0 | 50.0 | 10 | 1 |") < table2
    assert "| txl | 60.0 | 30.0 | 3 | 0 |" in text and "| Mean | 70.0 | 40.0 | | |" in text
    assert table2 < text.index("| raabin | 70.0 | 60.0 | 75.0 | 65.0 | 55.0 | 30 | 0 |")
    assert "| raabin | 0.0 | 12.5 | 40.0 | 60.0 | 100.0 | 5 | 0 |" in text  # BLEU on its own 0-100 scale
    assert "F1 = weighted F1" in text and "BLEU-4 is 0 on one-word answers" in text
    assert (
        "Left out: 1 files or rows the dataset readers could not use, and 1 samples that failed to load"
        in text
    )
    assert "bccd/BloodImage_7 (detection): OSError: truncated" in text and "JPEGImages/x.jpg (read)" in text
    for relative in ("plots/bccd/detection_pr.png", "plots/bccd/segmentation_overlay_0.png",
                     "plots/raabin/probe_tsne.png"):  # fmt: skip
        assert (tmp_path / relative).is_file() and f"({relative})" in text
    report = json.loads(paths["json"].read_text())
    assert report["datasets"]["bccd"]["seen"] is True and report["datasets"]["raabin"]["seen"] is False
    entry = report["datasets"]["bccd"]["tasks"]["detection"]
    assert entry["pr_curves"]["rbc"]["AP50"] == 0.8 and entry["plots"] == ["plots/bccd/detection_pr.png"]
    assert "overlays" not in report["datasets"]["bccd"]["tasks"]["segmentation"]
    assert report["datasets"]["bccd"]["tasks"]["segmentation"]["per_image"][0]["dice"] == 0.9
    assert not list(tmp_path.glob(".*tmp"))


def test_csv_has_one_number_per_row_with_the_headline_marked():
    from unihema.evaluate.tables import build_evaluation_report

    rows = list(csv.DictReader(io.StringIO(evaluation_csv(build_evaluation_report(_results(), {})))))
    headline = [r for r in rows if r["headline"] == "yes"]
    assert [(r["dataset"], r["task"], r["metric"]) for r in headline] == [
        ("bccd", "detection", "mAP50"), ("bccd", "segmentation", "Dice"), ("txl", "detection", "mAP50"),
        ("raabin", "probe", "probe_F1_weighted"), ("raabin", "vqa", "BLEU4"),
    ]  # fmt: skip
    iou = next(r for r in rows if r["metric"] == "IoU")
    assert iou["seen"] == "seen" and float(iou["value"]) == pytest.approx(0.82) and iou["headline"] == "no"
    assert not any(r["metric"] == "protocol" for r in rows)  # numbers only
    assert sum(r["metric"] == "Dice" for r in rows) == 1  # the headline is not repeated as a detail


def test_unknown_training_status_gets_its_own_section(tmp_path):
    results = [DatasetResult(EvalDataset("bccd"), {"detection": TaskResult(Task.DETECTION, "mAP50", 0.5)})]
    text = write_evaluation_report(tmp_path, results, {})["markdown"].read_text()
    assert "Datasets whose training status is not recorded" in text and "Table 1" not in text
    assert "No sample was skipped." in text
