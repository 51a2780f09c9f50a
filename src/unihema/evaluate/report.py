"""Before/after evaluation reports: ``report.json``, a readable ``report.md`` and overlay images.

``report.json`` layout::

    {
      "tasks": {
        "<task>": {"metric": "mAP50", "before": 0.01, "after": 0.42, "improved": true,
                   "details_before": {...}, "details_after": {...}, "examples": [...]}
      },
      "meta": {...}          # corpus, preset, timings, command
    }
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unihema.atomic import atomic_write_text
from unihema.data.schema import Task
from unihema.evaluate.evaluator import TaskResult


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays made plain, tuples lists, non-finite floats ``None``."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


BLEU_ONE_WORD_NOTE = (
    "BLEU-4 is 0 on one-word answers (they have no 2-, 3- or 4-grams to match): read the exact-match "
    "accuracy for short answers."
)


def build_report(
    before: Mapping[Task, TaskResult], after: Mapping[Task, TaskResult], meta: Mapping[str, Any]
) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for task, result_after in after.items():
        result_before = before.get(task)
        value_before = None if result_before is None else result_before.value
        tasks[Task(task).value] = {
            "metric": result_after.metric,
            "before": value_before,
            "after": result_after.value,
            "improved": value_before is not None and result_after.value > value_before,
            "details_before": {} if result_before is None else result_before.details,
            "details_after": result_after.details,
            "examples": result_after.examples,
        }
    return jsonable({"tasks": tasks, "meta": dict(meta)})


def markdown_report(report: Mapping[str, Any], overlays: Sequence[str] = ()) -> str:
    lines = [
        "# UniHema demo report",
        "",
        "| task | metric | before training | after training |",
        "|---|---|---|---|",
    ]
    for task, entry in report["tasks"].items():
        before = "n/a" if entry["before"] is None else f"{entry['before']:.4f}"
        lines.append(f"| {task} | {entry['metric']} | {before} | {entry['after']:.4f} |")
    meta = report.get("meta", {})
    if meta:
        lines += ["", "## Run", ""] + [f"- {key}: {value}" for key, value in meta.items()]
    vqa = report["tasks"].get("vqa", {}).get("details_after", {})
    if "exact_match_shuffled_images" in vqa:
        gap = vqa["exact_match"] - vqa["exact_match_shuffled_images"]
        lines += [
            "",
            "## Does the answer look at the cell? (VQA, after training)",
            "",
            "| images | exact-match accuracy |",
            "|---|---|",
            f"| each question with its own cell | {vqa['exact_match']:.3f} |",
            f"| images shuffled among the questions | {vqa['exact_match_shuffled_images']:.3f} |",
        ]
        grounded = "exact_match_shuffled_grounded" in vqa
        if grounded:
            lines.append(
                "| images shuffled, a perfectly grounded model (the answer about the cell shown) "
                f"| {vqa['exact_match_shuffled_grounded']:.3f} |"
            )
        floor = (
            ", and one that always answered about the cell it is shown would fall to the last row (two cells "
            "often share what is asked)"
            if grounded
            else ""
        )
        lines += [
            "",
            f"Shuffling the images changes {vqa['answers_changed_by_shuffling']:.1%} of the answers and costs "
            f"{gap:.3f} accuracy; a model that ignored the image would lose nothing{floor}. (BLEU-4 rewards "
            "the shared template words, so it hides this.)",
        ]
        rows = vqa.get("exact_match_by_question", [])
        if rows:
            extra_column = all("exact_match_shuffled_grounded" in r for r in rows)
            lines += [
                "",
                "Exact match by kind of question (equal rates: answered from the question alone):",
                "",
                "| asks about | form | questions | own cell | shuffled |"
                + (" shuffled, perfectly grounded |" if extra_column else ""),
                "|---|---|---:|---:|---:|" + ("---:|" if extra_column else ""),
            ]
            lines += [
                f"| {r['topic']} | {r['form']} | {r['questions']} | {r['exact_match']:.3f} "
                f"| {r['exact_match_shuffled_images']:.3f} |"
                + (f" {r['exact_match_shuffled_grounded']:.3f} |" if extra_column else "")
                for r in rows
            ]
    if any(task in report["tasks"] for task in ("vqa", "mlm")):
        lines += ["", BLEU_ONE_WORD_NOTE]
    for task in ("vqa", "mlm"):
        examples = report["tasks"].get(task, {}).get("examples", [])
        if examples:
            lines += [
                "",
                f"## Sample answers ({task})",
                "",
                "| prompt | answer | reference |",
                "|---|---|---|",
            ]
            lines += [f"| {e['prompt']} | {e['answer']} | {e['reference']} |" for e in examples]
    if overlays:
        lines += ["", "## Overlays", ""] + [f"![{Path(p).stem}]({p})" for p in overlays]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: Mapping[str, Any], overlays: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` atomically into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(md_path, markdown_report(report, overlays))
    return json_path, md_path
