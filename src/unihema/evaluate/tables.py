"""The evaluation report of several datasets, laid out like the paper's Table 1 (datasets seen in training)
and Table 2 (datasets not seen in training): ``report.md``, ``report.csv``, ``report.json`` and ``plots/``.

``report.json`` layout::

    {"meta": {...},                                   # model, split, command, timings
     "datasets": {
       "<name>": {"seen": true | false | null,        # null: the model folder records no training data
                  "source": "...", "trained_tasks": [...],
                  "read_skipped": [{"sample": path, "reason": ...}],
                  "not_evaluated": {"<task or probe>": "why"},
                  "tasks": {"<task or probe>": {"metric": "mAP50", "value": 0.42, "details": {...},
                                                "samples": 40, "skipped": [...], "plots": [...],
                                                "examples": [...], "pr_curves" | "confusion_matrix" |
                                                "per_image": ...}}}}}

``report.csv`` has one row per number: ``dataset, seen, task, metric, value, headline, samples, skipped``
(raw values: fractions in [0, 1], BLEU-4 in [0, 100]). ``report.md`` shows fractions as percentages, as
the paper's tables do.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unihema.atomic import atomic_save_image, atomic_write_text
from unihema.evaluate import plots
from unihema.evaluate.report import BLEU_ONE_WORD_NOTE, jsonable
from unihema.evaluate.suite import PROBE_TASK, DatasetResult

PLOTS_DIR = "plots"
JSON_ARTIFACTS = ("pr_curves", "confusion_matrix", "per_image")
"""Artifacts of a :class:`~unihema.evaluate.evaluator.TaskResult` copied into ``report.json``."""
SKIPPED_LISTED = 10
"""Skipped samples named in ``report.md`` per dataset (``report.json`` names them all)."""


@dataclass(frozen=True)
class Column:
    """A column of a task table: its header, the key of the number (``"value"`` for the headline, else a
    ``details`` key) and whether the number is a fraction shown as a percentage."""

    header: str
    key: str
    percent: bool = True


_TEXT = (
    Column("BLEU-4", "value", percent=False),
    Column("BLEU-4 (word-level, paper)", "BLEU4_words", percent=False),
    Column("ROUGE-L", "ROUGE_L"),
    Column("exact match", "exact_match"),
    Column("one-word references", "one_word_references"),
)
SECTIONS: dict[str, tuple[str, tuple[Column, ...]]] = {
    "detection": ("Cell detection", (Column("mAP50", "value"), Column("mAP50:95", "mAP50_95"))),
    "classification": (
        "Single-cell classification (classification head, predicting among the dataset's classes unless "
        "--any-class): F1 = weighted F1",
        (Column("F1 (weighted)", "value"), Column("F1 (macro)", "f1_macro"), Column("accuracy", "accuracy")),
    ),
    PROBE_TASK: (
        "Single-cell classification (frozen features, DinoBloom probe): F1 = weighted F1",
        (
            Column("F1 (weighted), logistic regression", "value"),
            Column("F1 (macro), logistic regression", "logreg_f1_macro"),
            Column("accuracy, logistic regression", "logreg_accuracy"),
            Column("F1 (weighted), kNN k=1", "knn1_f1_weighted"),
            Column("F1 (weighted), kNN k=20", "knn20_f1_weighted"),
        ),
    ),
    "segmentation": ("Segmentation", (Column("Dice", "value"), Column("IoU", "IoU"))),
    "fov_morphology": (
        "Cell morphology (FoV): F1 = mean of per-attribute macro F1",
        (
            Column("F1 (missed cells count as wrong)", "value"),
            Column("F1 on matched cells", "attribute_F1_on_matched"),
            Column("cells matched", "coverage"),
            Column("mAP50", "mAP50"),
        ),
    ),
    "cell_morphology": (
        "Cell morphology (single cell, WBCAtt protocol): F1 = mean of per-attribute macro F1",
        (Column("F1", "value"),),
    ),
    "vqa": ("Single-cell visual QA", _TEXT),
    "mlm": ("Masked language modelling", _TEXT),
}
TABLES: tuple[tuple[bool | None, str], ...] = (
    (True, "Table 1: datasets seen in training"),
    (False, "Table 2: datasets not seen in training"),
    (None, "Datasets whose training status is not recorded (the model folder has no training record)"),
)
NOTES = (
    "Values in the tables are percentages (fractions x 100), as in the paper's tables; BLEU-4 is on its own "
    "0-100 scale. report.csv and report.json hold the raw values.",
    "Classification tables show the weighted F1 first (DinoBloom's headline metric, the probable F1 of the "
    "paper's tables), with the macro F1 and the accuracy beside it.",
    BLEU_ONE_WORD_NOTE + " The share of one-word references is `one_word_references` in report.json. "
    "'BLEU-4' is sacrebleu's corpus BLEU (lower-cased, 13a tokens); 'BLEU-4 "
    "(word-level, paper)' is the authors' variant (lower-cased words, NLTK corpus BLEU, smoothing method 4).",
    "Cell detection: COCO AP (faster-coco-eval) over every kept detection, at most `max_detections` per "
    "image (COCO's maxDets follows it).",
    "FoV morphology: the model's own cells (detections at the operating score threshold) are matched to "
    "ground-truth cells by IoU >= 0.5; cells no detection reaches count as wrong in the headline F1.",
    "DinoBloom probe: frozen SCFE features, logistic regression with C = feature dimension x classes / 100, "
    "kNN with k = 1 and 20; the dataset's train/test split, else 5-fold stratified cross-validation.",
)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "dataset"


def _write_plots(out_dir: Path, dataset: str, task: str, artifacts: Mapping[str, Any]) -> list[str]:
    """Draw the task's plots into ``out_dir/plots/<dataset>/``; returns their paths relative to it."""
    folder = f"{PLOTS_DIR}/{_safe(dataset)}"
    drawn: list[tuple[str, Any]] = []
    if artifacts.get("pr_curves"):
        title = f"{dataset} {task}: precision-recall at IoU 0.5"
        drawn.append((f"{folder}/{task}_pr.png", plots.pr_curve_plot(artifacts["pr_curves"], title)))
    if artifacts.get("confusion_matrix"):
        matrix = artifacts["confusion_matrix"]
        image = plots.confusion_matrix_plot(matrix["matrix"], matrix["labels"], f"{dataset} {task}")
        drawn.append((f"{folder}/{task}_confusion.png", image))
    for index, overlay in enumerate(artifacts.get("overlays", ())):
        image = plots.segmentation_overlay(overlay["image"], overlay["predicted"], overlay["target"])
        drawn.append((f"{folder}/{task}_overlay_{index}.png", image))
    tsne = artifacts.get("tsne") or {}
    if len(tsne.get("labels", ())):
        image = plots.scatter_plot(tsne["points"], tsne["labels"], f"{dataset}: t-SNE of the probe features")
        drawn.append((f"{folder}/{task}_tsne.png", image))
    for relative, image in drawn:
        atomic_save_image(image, out_dir / relative)
    return [relative for relative, _ in drawn]


def build_evaluation_report(
    results: Sequence[DatasetResult],
    meta: Mapping[str, Any],
    plot_paths: Mapping[tuple[str, str], list[str]] | None = None,
) -> dict[str, Any]:
    """The ``report.json`` dictionary (see the module docstring); ``plot_paths[(dataset, task)]`` lists the
    plots drawn for a task."""
    plot_paths = plot_paths or {}
    datasets: dict[str, Any] = {}
    for result in results:
        dataset = result.dataset
        tasks = {}
        for key, task_result in result.results.items():
            entry = {
                "metric": task_result.metric, "value": task_result.value, "details": task_result.details,
                "samples": task_result.evaluated, "skipped": task_result.skipped,
                "plots": list(plot_paths.get((dataset.name, key), [])), "examples": task_result.examples,
            }  # fmt: skip
            entry.update({k: task_result.artifacts[k] for k in JSON_ARTIFACTS if k in task_result.artifacts})
            tasks[key] = entry
        datasets[dataset.name] = {
            "seen": dataset.seen, "source": dataset.source, "trained_tasks": dataset.trained_tasks,
            "read_skipped": dataset.read_skipped, "tasks": tasks, "not_evaluated": dict(result.failed),
        }  # fmt: skip
    return jsonable({"meta": dict(meta), "datasets": datasets})


def _number(entry: Mapping[str, Any], column: Column) -> float | None:
    value = entry["value"] if column.key == "value" else entry["details"].get(column.key)
    return None if value is None or not isinstance(value, int | float) else float(value)


def _cell(value: float | None, percent: bool) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value * 100:.1f}" if percent else f"{value:.1f}"


def _task_table(rows: Sequence[tuple[str, Mapping[str, Any]]], columns: Sequence[Column]) -> list[str]:
    header = ["Dataset", *(c.header for c in columns), "samples", "skipped"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in rows:
        cells = [_cell(_number(entry, c), c.percent) for c in columns]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {entry['samples']} | {len(entry['skipped'])} |"
        )
    if len(rows) > 1:
        means = []
        for column in columns:
            values = [v for v in (_number(e, column) for _, e in rows) if v is not None and np.isfinite(v)]
            means.append(_cell(float(np.mean(values)) if values else None, column.percent))
        lines.append("| Mean | " + " | ".join(means) + " | | |")
    return lines


def _tables(report: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    datasets = report["datasets"]
    for seen, title in TABLES:
        names = [name for name, d in datasets.items() if d["seen"] is seen]
        if not names:
            continue
        lines += ["", f"## {title}"]
        for task, (heading, columns) in SECTIONS.items():
            rows = [
                (name, datasets[name]["tasks"][task]) for name in names if task in datasets[name]["tasks"]
            ]
            if rows:
                lines += ["", f"### {heading}", "", *_task_table(rows, columns)]
    return lines


def _breakdowns(report: Mapping[str, Any]) -> list[str]:
    """Per-class AP and per-attribute F1 of every dataset."""
    lines: list[str] = []
    for name, dataset in report["datasets"].items():
        for task, entry in dataset["tasks"].items():
            details = entry["details"]
            if "AP50_per_class" in details and details["AP50_per_class"]:
                lines += [
                    "",
                    f"### {name}: {task} AP per class",
                    "",
                    "| class | AP50 | AP50:95 |",
                    "|---|---|---|",
                ]
                for cls, value in details["AP50_per_class"].items():
                    lines.append(
                        f"| {cls} | {_cell(value, True)} | {_cell(details['AP_per_class'].get(cls), True)} |"
                    )
            if "per_attribute_F1" in details:
                lines += ["", f"### {name}: {task} F1 per attribute", "", "| attribute | F1 |", "|---|---|"]
                lines += [f"| {a} | {_cell(v, True)} |" for a, v in details["per_attribute_F1"].items()]
    return (["", "## Per class and per attribute"] + lines) if lines else []


def _skipped(report: Mapping[str, Any]) -> list[str]:
    """Each skipped sample once per dataset, with where it was skipped (``read`` or the tasks)."""
    listed: list[str] = []
    read_total = load_total = 0
    for name, dataset in report["datasets"].items():
        named: dict[str, tuple[str, list[str]]] = {}
        records = [(s, "read") for s in dataset["read_skipped"]]
        records += [(s, task) for task, entry in dataset["tasks"].items() for s in entry["skipped"]]
        for item, where in records:
            named.setdefault(item["sample"], (item["reason"], []))[1].append(where)
        read_total += len(dataset["read_skipped"])
        load_total += sum(1 for _, where in named.values() if where != ["read"])
        if named:
            listed.append(f"- {name}: {len(named)} skipped")
            listed += [
                f"  - {sample} ({', '.join(where)}): {reason}"
                for sample, (reason, where) in list(named.items())[:SKIPPED_LISTED]
            ]
            if len(named) > SKIPPED_LISTED:
                listed.append(f"  - ... and {len(named) - SKIPPED_LISTED} more (report.json names them all)")
    if read_total or load_total:
        summary = (
            f"Left out: {read_total} files or rows the dataset readers could not use, and {load_total} "
            "samples that failed to load during evaluation."
        )
    else:
        summary = "No sample was skipped."
    return ["", "## Skipped samples", "", summary, *([""] + listed if listed else [])]


def evaluation_markdown(report: Mapping[str, Any]) -> str:
    """``report.md`` from the ``report.json`` dictionary."""
    meta = report.get("meta", {})
    lines = ["# UniHema evaluation report", ""] + [f"- {key}: {value}" for key, value in meta.items()]
    lines += _tables(report)
    lines += _breakdowns(report)
    plot_lines = [
        f"![{name} {task}]({path})"
        for name, dataset in report["datasets"].items()
        for task, entry in dataset["tasks"].items()
        for path in entry["plots"]
    ]
    if plot_lines:
        legend = (
            "Segmentation overlays: true positives light yellow, false positives blue, false negatives red "
            "(as in the paper's figure 4a)."
        )
        lines += ["", "## Plots", "", legend, "", *plot_lines]
    failed = [
        f"- {name} {task}: {why}"
        for name, dataset in report["datasets"].items()
        for task, why in dataset.get("not_evaluated", {}).items()
    ]
    if failed:
        lines += ["", "## Not evaluated", "", *failed]
    lines += _skipped(report)
    lines += ["", "## Notes", ""] + [f"- {note}" for note in NOTES]
    return "\n".join(lines) + "\n"


def evaluation_csv(report: Mapping[str, Any]) -> str:
    """``report.csv``: the headline and every scalar detail of each task, one number per row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "seen", "task", "metric", "value", "headline", "samples", "skipped"])
    for name, dataset in report["datasets"].items():
        seen = {True: "seen", False: "unseen", None: "not recorded"}[dataset["seen"]]
        for task, entry in dataset["tasks"].items():
            common = [entry["samples"], len(entry["skipped"])]
            writer.writerow([name, seen, task, entry["metric"], entry["value"], "yes", *common])
            for key, value in entry["details"].items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != entry["metric"]:
                    writer.writerow([name, seen, task, key, value, "no", *common])
    return buffer.getvalue()


def write_evaluation_report(
    out_dir: str | Path, results: Sequence[DatasetResult], meta: Mapping[str, Any]
) -> dict[str, Path]:
    """Draw the plots and write ``report.json``, ``report.md`` and ``report.csv`` into ``out_dir``
    (atomically); returns the paths by kind (``json``, ``markdown``, ``csv``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_paths = {
        (result.dataset.name, key): _write_plots(out_dir, result.dataset.name, key, task_result.artifacts)
        for result in results
        for key, task_result in result.results.items()
    }
    report = build_evaluation_report(results, meta, plot_paths)
    paths = {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "csv": out_dir / "report.csv",
    }
    atomic_write_text(paths["json"], json.dumps(report, indent=2) + "\n")
    atomic_write_text(paths["markdown"], evaluation_markdown(report))
    atomic_write_text(paths["csv"], evaluation_csv(report))
    return paths


__all__ = [
    "SECTIONS",
    "Column",
    "build_evaluation_report",
    "evaluation_csv",
    "evaluation_markdown",
    "write_evaluation_report",
]
