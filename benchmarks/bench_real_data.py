"""Unified against single-dataset training on the real datasets, with the peers a user would pick instead,
every model trained from random weights for a fixed CPU time budget.

Three arms, run one after another in one process (``--minutes`` M is the budget of each arm):

1. **unified**: one ``tiny`` UniHema trained once on all ten datasets with the package's trainer, through
   a six-stage curriculum like the paper's (section 4.2), whose stages share M by the fractions in
   ``UNIFIED_STAGES`` (each stage's ``max_minutes``), and evaluated on every dataset's test split;
2. **single**: the same architecture trained on each dataset alone (its tasks together, every module
   group trained), M / 10 minutes each, so the arm's total is M too;
3. **peers**, each given a single model's share (M / 10) on the same training split: torchvision's Faster
   R-CNN MobileNetV3-FPN on bccd and txl_pbc detection, a plain U-Net on the three segmentation datasets,
   a torchvision ResNet-18 on pbc classification (``real_data_peers.py``).

UniHema models are scored by ``unihema eval`` (its JSON), the peers by the same metric functions. Datasets
without a published split are split as the trainer splits them (``SplitConfig()``); images one dataset
re-publishes from another get one split in both (``leak_action: align``, the evaluation dataset's own split
wins) and the unified run's log says what moved. UniHema's budget is wall-clock time of its stages' loops
(data loading included), the peers' is time in their optimiser steps (data loading excluded), which if
anything favours the peers.

    python benchmarks/bench_real_data.py --minutes 24 --write-doc docs/benchmarks.md

Run it alone on the machine (two torch processes on the same cores ruin both timings).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from benchmark_doc import command_line, write_section

from unihema.atomic import atomic_write_text

SECTION_TITLE = "## Real data: unified against single-dataset training"
PEER_ROWS = "peers.jsonl"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# The tasks each dataset is trained and scored on (WBCAtt: its cell attributes and the text generated from
# them; its cell classes are PBC's and are scored there).
DATASET_TASKS: dict[str, tuple[str, ...]] = {
    "bccd": ("detection",),
    "txl_pbc": ("detection",),
    "fiocruz_malaria_thick": ("detection",),
    "bccd_nucleus_masks": ("segmentation",),
    "segmentation_wbc": ("segmentation", "classification"),
    "erythrocytesidb1": ("segmentation", "classification"),
    "pbc": ("classification",),
    "wbcatt": ("cell_morphology", "vqa", "mlm"),
    "bccd_wbc_crops": ("classification",),
    "chula_rbc12": ("classification",),
}
READER_OPTIONS = {"wbcatt": {"tasks": ["cell_morphology", "vqa", "mlm"]}}

# The paper's numbers for the same datasets (Uni-Hema, pretrained, GPUs): Table 1 (BCCD, TXL-PBC
# detection, WBCAtt-VQA BLEU-4) and Table 2 (PBC = Acevedo single-cell probe F1, WBCAtt single-cell
# morphology macro F1); the others are not in the paper.
PAPER = {
    ("bccd", "detection"): "87.8 mAP50",
    ("txl_pbc", "detection"): "94.0 mAP50",
    ("pbc", "probe"): "98.1 F1 (probe)",
    ("wbcatt", "cell_morphology"): "91.6 macro F1",
    ("wbcatt", "vqa"): "56.4 BLEU-4",
}

DETECTION = ["bccd", "txl_pbc", "fiocruz_malaria_thick"]
SEGMENTATION = ["bccd_nucleus_masks", "segmentation_wbc", "erythrocytesidb1"]
CLASSIFICATION = ["pbc", "bccd_wbc_crops", "chula_rbc12", "erythrocytesidb1", "segmentation_wbc"]

# The unified curriculum: (stage, tasks, trained groups, mode, share of the budget). The paper's order
# with the demo's measured changes (docs/training.md): step 4 trains the backbone and encoder with the
# detector, step 5 re-fits the single-cell heads on the final features beside the mask former.
UNIFIED_STAGES: list[tuple[str, dict[str, list[str]], list[str], str, float]] = [
    ("step1_cell_classification", {"classification": CLASSIFICATION, "cell_morphology": ["wbcatt"]},
     ["B", "E_I", "SCFE", "heads"], "round_robin", 0.15),
    ("step2_text_pretraining", {"mlm": ["wbcatt"], "vqa": ["wbcatt"]}, ["E_T", "D_T"], "round_robin", 0.05),
    ("step3_joint_vision", {"classification": CLASSIFICATION, "segmentation": SEGMENTATION, "detection": DETECTION},
     ["B", "E_I", "D_I", "TGVR", "SCFE", "QGMF", "heads"], "joint", 0.15),
    ("step4_detection_finetune", {"detection": DETECTION}, ["B", "E_I", "D_I", "TGVR", "heads"], "round_robin", 0.35),
    ("step5_mask_former", {"segmentation": SEGMENTATION, "classification": CLASSIFICATION,
                           "cell_morphology": ["wbcatt"]}, ["QGMF", "SCFE", "heads"], "joint", 0.15),
    ("step6_cross_modal_text", {"vqa": ["wbcatt"], "mlm": ["wbcatt"]}, ["CMF", "D_T"], "round_robin", 0.15),
]  # fmt: skip
BATCH = {"detection": 4, "segmentation": 4, "classification": 16, "cell_morphology": 16, "vqa": 8, "mlm": 8}
TRANSFORMS = {
    "det_train_sizes": [320, 352, 384, 416], "det_eval_size": 416, "det_max_size": 554,
    "seg_size": 256, "cls_size": 128, "text_size": 128,
}  # fmt: skip
MODEL = {
    "preset": "tiny",
    "overrides": {
        "vision": {"num_queries": 300},
        "hemaformer": {"scfe_inputs": "encoder_mean+backbone_c5", "cmf_cell_feature": "add"},
    },
}
# The demo's recipe (constant lr 5e-4 with the backbone at the full rate, clip 1.0), which also gave the best
# BCCD result from scratch (docs/benchmarks.md); the text stages at the demo's 1e-3.
LR = {"vqa": 1e-3, "mlm": 1e-3}
BASE_LR = 5e-4


def stage(name: str, tasks: dict[str, list[str]], train: list[str], mode: str, minutes: float) -> dict:
    text_only = set(tasks) <= {"vqa", "mlm"}
    return {
        "name": name, "tasks": tasks, "train": train, "mode": mode,
        "k_per_task": {task: BATCH[task] for task in tasks},
        "max_steps": 1_000_000, "max_minutes": round(minutes, 4),
        "lr": LR["vqa"] if text_only else BASE_LR, "backbone_lr_scale": 1.0, "grad_clip": 1.0,
        "scheduler": {"name": "constant"},
    }  # fmt: skip


def train_config(root: Path, stages: list[dict], seed: int) -> dict:
    return {
        "seed": seed, "model": MODEL,
        "data": {"root": str(root), "leak_action": "align", "reader_options": READER_OPTIONS,
                 "transforms": TRANSFORMS, "num_workers": 0, "pad_to_multiple": 32},
        "runtime": {"device": "cpu", "precision": "float32", "log_every": 25, "checkpoint_every": 0,
                    "keep_last": 1, "tensorboard": False},
        "stages": stages,
    }  # fmt: skip


def unified_stages(minutes: float) -> list[dict]:
    return [stage(n, t, g, m, minutes * share) for n, t, g, m, share in UNIFIED_STAGES]


def single_stages(dataset: str, minutes: float) -> list[dict]:
    tasks = {task: [dataset] for task in DATASET_TASKS[dataset]}
    return [stage(f"{dataset}_alone", tasks, ["all"], "round_robin", minutes)]


def train_unihema(
    root: Path, stages: list[dict], run_dir: Path, seed: int, reuse: bool
) -> tuple[Path, float]:
    """The final model folder of a run and the seconds its stages trained; ``reuse`` takes a finished run
    of ``run_dir`` (``--eval-only``) instead of training."""
    from unihema.train.stages import TrainConfig
    from unihema.train.trainer import run_training

    if reuse:
        if not (run_dir / "final").is_dir():
            raise FileNotFoundError(f"{run_dir}: no finished run to evaluate again (train it first)")
    else:
        run_training(TrainConfig.from_dict(train_config(root, stages, seed)), run_dir, progress=False)
    return run_dir / "final", trained_seconds(run_dir)


def trained_seconds(run_dir: Path) -> float:
    """Seconds in the stages' training loops, from the ``stage ... finished after N steps in S s`` log lines."""
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    return sum(float(v) for v in re.findall(r"finished after \d+ steps in ([\d.]+) s", log))


def evaluate(model_dir: Path, root: Path, dataset: str, tasks: list[str], limit: int) -> dict[str, Any]:
    """``unihema eval --json`` of one dataset: task -> {metric, value, details}, or {"error": ...}."""
    from unihema.data.catalog import get_dataset

    command = [sys.executable, "-m", "unihema", "eval", "--model", str(model_dir), "--data",
               f"{dataset}={root / dataset}", "--json", "--no-progress", "--limit", str(limit)]  # fmt: skip
    # Read as training read it: the catalog's reader and options, then this benchmark's.
    entry = get_dataset(dataset)
    command += ["--format", entry.reader]
    for key, value in {**entry.options, **READER_OPTIONS.get(dataset, {})}.items():
        command += ["--option", f"{key}={json.dumps(value)}"]
    for task in tasks:
        command += ["--task", task]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout)


def headline(result: dict[str, Any]) -> str:
    """The figure a table cell shows: the task's headline metric, accuracy beside a weighted F1."""
    if "value" not in result:
        return "-"
    text = f"{result['value']:.3f}"
    details = result.get("details", {})
    if "accuracy" in details:
        text += f" (acc {details['accuracy']:.3f})"
    if "exact_match" in details:
        text += f" (EM {details['exact_match']:.3f})"
    return text


def leak_summary(run_dir: Path) -> str:
    log = (run_dir / "train.log").read_text(encoding="utf-8") if (run_dir / "train.log").is_file() else ""
    match = re.search(r"cross-dataset duplicates: (.*?)(?=\n\d{4}-\d\d-\d\d |\Z)", log, re.DOTALL)
    return match.group(1).strip() if match else "(no duplicate report in the log)"


def read_split(root: Path, dataset: str) -> tuple[list, list]:
    """A dataset's training and test samples as the trainer splits them (``SplitConfig()``)."""
    from unihema.data.catalog import get_dataset
    from unihema.data.formats.base import get_reader
    from unihema.data.splits import SplitConfig, assign_splits

    entry = get_dataset(dataset)
    samples = assign_splits(get_reader(entry.reader).read(root / dataset, dataset=dataset, **entry.options).samples,
                            SplitConfig())  # fmt: skip
    return [s for s in samples if s.split == "train"], [s for s in samples if s.split == "test"]


def earlier_peer_rows(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The peers' rows (``{"dataset", "task", "model", ...}`` JSON lines) of an earlier run's output."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith('{"dataset"'):
            row = json.loads(line)
            rows[(row["dataset"], row["task"])] = row
    if not rows:
        raise ValueError(f'{path}: no peer rows (JSON lines starting with {{"dataset"}})')
    return rows


def peer_jobs(root: Path, minutes: float, seed: int) -> Iterator[tuple[str, str, Callable[[], dict]]]:
    """``(dataset, task, train)`` per peer; ``train()`` reads its data, trains and scores it."""
    import real_data_peers as peers

    from unihema.data.schema import Task

    def split_of(dataset: str, task: Task) -> tuple[list, list]:
        train, test = read_split(root, dataset)
        return [s for s in train if s.task is task], [s for s in test if s.task is task]

    def detector(dataset: str) -> dict:
        train, test = split_of(dataset, Task.DETECTION)
        return peers.train_faster_rcnn(
            train, test, _box_class_names(train), minutes=minutes, seed=seed,
            train_sizes=TRANSFORMS["det_train_sizes"], eval_size=TRANSFORMS["det_eval_size"],
            max_detections=MODEL["overrides"]["vision"]["num_queries"],
        )  # fmt: skip

    def unet(dataset: str) -> dict:
        train, test = split_of(dataset, Task.SEGMENTATION)
        return peers.train_unet(train, test, minutes=minutes, seed=seed, size=TRANSFORMS["seg_size"])

    def resnet(dataset: str) -> dict:
        train, test = split_of(dataset, Task.CLASSIFICATION)
        return peers.train_resnet18(train, test, minutes=minutes, seed=seed, size=TRANSFORMS["cls_size"])

    for dataset in ("bccd", "txl_pbc"):
        yield dataset, "detection", partial(detector, dataset)
    for dataset in SEGMENTATION:
        yield dataset, "segmentation", partial(unet, dataset)
    yield "pbc", "classification", partial(resnet, "pbc")


def _box_class_names(samples: list) -> list[str]:
    from unihema.data.vocab import DETECTION_CLASSES

    return [DETECTION_CLASSES[k] for k in sorted({int(v) for s in samples for v in s.box_labels})]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder of the staged datasets")
    parser.add_argument("--minutes", type=float, default=24.0, help="training budget of each arm")
    parser.add_argument("--limit", type=int, default=300, help="test samples scored per dataset and task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=["unified", "single", "peers"],
                        choices=["unified", "single", "peers"])  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs/bench_real_data"))
    parser.add_argument(
        "--eval-only", action="store_true",
        help="score the UniHema runs already in --out again instead of training them (after a change to "
        "the evaluation); with --peers-from, the peers' rows of an earlier run too",
    )  # fmt: skip
    parser.add_argument(
        "--peers-from", type=Path, default=None,
        help="take the peers' rows from the JSON lines an earlier run printed (or its peers.jsonl) instead "
        "of training them again",
    )  # fmt: skip
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    missing = [name for name in DATASET_TASKS if not (args.root / name).is_dir()]
    if missing:
        print(f"skipped: datasets not staged under {args.root}: {', '.join(missing)}", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    share = args.minutes / len(DATASET_TASKS)
    scores: dict[tuple[str, str], dict[str, str]] = {}
    timings: dict[str, float] = {}
    leaks = ""

    def score(arm: str, model_dir: Path, dataset: str) -> None:
        tasks = list(DATASET_TASKS[dataset]) + (["probe"] if dataset == "pbc" else [])
        results = evaluate(model_dir, args.root, dataset, tasks, args.limit)
        print(json.dumps({"arm": arm, "dataset": dataset, "results": results}, default=float), flush=True)
        for task in tasks:
            value = results.get(task, {"error": results.get("error", "not evaluated")})
            scores.setdefault((dataset, task), {})[arm] = headline(value)

    def failed(arm: str, cells: list[tuple[str, str]], error: Exception) -> None:
        # One model's failure is written into its cells; the other models still run.
        print(f"{arm}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        for key in cells:
            scores.setdefault(key, {})[arm] = f"failed ({type(error).__name__}: {error})"

    if "unified" in args.arms:
        try:
            model_dir, timings["unified"] = train_unihema(
                args.root, unified_stages(args.minutes), args.out / "unified", args.seed, args.eval_only
            )
            leaks = leak_summary(args.out / "unified")
            for dataset in DATASET_TASKS:
                score("unified", model_dir, dataset)
        except Exception as error:  # noqa: BLE001 - reported in the table
            failed("unified", [(d, t) for d, tasks in DATASET_TASKS.items() for t in tasks], error)
    if "single" in args.arms:
        timings["single"] = 0.0
        for dataset in DATASET_TASKS:
            try:
                model_dir, seconds = train_unihema(
                    args.root,
                    single_stages(dataset, share),
                    args.out / f"single_{dataset}",
                    args.seed,
                    args.eval_only,
                )
                timings["single"] += seconds
                score("single", model_dir, dataset)
            except Exception as error:  # noqa: BLE001 - reported in the table
                failed("single", [(dataset, t) for t in DATASET_TASKS[dataset]], error)
    if "peers" in args.arms:
        earlier = earlier_peer_rows(args.peers_from) if args.peers_from else {}
        peer_lines: list[str] = []
        for dataset, task, train_peer in peer_jobs(args.root, share, args.seed):
            try:
                row = (
                    earlier[(dataset, task)]
                    if earlier
                    else {"dataset": dataset, "task": task, **train_peer()}
                )
            except Exception as error:  # noqa: BLE001 - reported in the table
                failed("peer", [(dataset, task)], error)
                continue
            peer_lines.append(json.dumps(row, default=float))
            print(peer_lines[-1], flush=True)
            metric = {"detection": "mAP50", "segmentation": "Dice", "classification": "f1_weighted"}[task]
            text = f"{row[metric]:.3f}" + (f" (acc {row['accuracy']:.3f})" if "accuracy" in row else "")
            scores.setdefault((dataset, task), {})["peer"] = f"{text}, {row['model']}"

        atomic_write_text(args.out / PEER_ROWS, "".join(line + "\n" for line in peer_lines))

    header = "| dataset | task | unified (one model) | single-dataset models | peer (same budget as one single model) | paper (Uni-Hema, pretrained, GPU) |"
    lines = [header, "|---|---|---|---|---|---|"]
    for (dataset, task), cells in scores.items():
        lines.append(
            f"| {dataset} | {task} | {cells.get('unified', '-')} | {cells.get('single', '-')} | "
            f"{cells.get('peer', '-')} | {PAPER.get((dataset, task), '-')} |"
        )  # fmt: skip
    table = "\n".join(lines)
    print(table)
    if args.write_doc:
        command = command_line(__file__, argv)
        wall = ", ".join(f"{arm} {seconds / 60:.1f} min" for arm, seconds in timings.items())
        section = (
            f"{SECTION_TITLE}\n\nCommand: `{command}`. Budget {args.minutes:g} training minutes per arm: the "
            f"unified `tiny` model over six stages ({', '.join(f'{n} {s:.0%}' for n, _, _, _, s in UNIFIED_STAGES)}), "
            f"ten single-dataset models of {share:g} minutes each, each peer {share:g} minutes. Random "
            f"initialisation everywhere, seed {args.seed}, at most {args.limit} test samples per dataset and task "
            f"(the test split; datasets without one are split by `SplitConfig()`). Time in the UniHema "
            f"models' training loops (from their logs): {wall}. torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {platform.machine()} CPU, no other job running.\n\n"
            f"Cells: the task's headline metric of `unihema eval` (mAP@0.5, Dice, weighted F1, mean attribute F1, "
            f"BLEU-4; accuracy and exact match in brackets); the probe is DinoBloom's protocol on the frozen SCFE "
            f"features (weighted F1 of the logistic regression).\n\n{table}\n\n"
            f"Cross-dataset duplicates in the unified run (`leak_action: align`):\n\n```\n{leaks}\n```\n"
        )
        write_section(args.write_doc, SECTION_TITLE, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
