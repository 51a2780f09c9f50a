"""The main job: train and evaluate every task on the built-in synthetic corpus, before/after report.

``run_demo(out_dir)``:

1. builds the synthetic corpus and the model exactly as the training run will start from them;
2. evaluates that untrained model on the held-out synthetic test split (every task);
3. runs the six-stage curriculum of the packaged ``demo.yaml`` (tiny preset) with
   :func:`unihema.train.trainer.run_training` in ``out_dir/run``;
4. evaluates the trained model the same way, and writes ``out_dir/report.json``, ``out_dir/report.md``,
   overlays under ``out_dir/overlays/`` and the model under ``out_dir/model`` (``UniHema.from_pretrained``).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from unihema.atomic import atomic_save_image
from unihema.data.schema import SPLITS, Sample, Task
from unihema.evaluate.evaluator import EvalConfig, TaskResult, evaluate
from unihema.evaluate.report import build_report, write_report
from unihema.evaluate.suite import labelled_cell_classes, spread_subset

DEMO_CONFIG = "demo.yaml"
DETECTION_OVERLAY_SCORE = 0.3
"""Minimum score of a detection drawn on the overlay image."""


def default_config_path() -> Path:
    """The packaged demo curriculum (``unihema/configs/demo.yaml``)."""
    return Path(str(importlib.resources.files("unihema") / "configs" / DEMO_CONFIG))


SCORED_IN_FULL = (Task.CLASSIFICATION, Task.CELL_MORPHOLOGY)
"""Tasks whose every held-out sample the demo scores: a crop costs milliseconds, and 64 crops of a dozen
unbalanced classes move the weighted F1 by more than a tenth from one subset to another."""


def _eval_samples(corpus: Any, per_task: int | None) -> dict[Task, list[Sample]]:
    """The test split, ``per_task`` samples of each field and text task spread over it (its first samples
    come from a few fields only), every single-cell crop."""
    grouped = {task: corpus.samples(task, "test") for task in Task}
    grouped = {
        task: samples if task in SCORED_IN_FULL else spread_subset(samples, per_task)
        for task, samples in grouped.items()
    }
    return {task: samples for task, samples in grouped.items() if samples}


def _overlays(
    model: torch.nn.Module, samples: Mapping[Task, list[Sample]], eval_config: EvalConfig, out_dir: Path
) -> list[str]:
    """Detection boxes and segmentation mask of the trained model on one test field each, drawn from the
    predictor's results (the same decoding as ``unihema predict``)."""
    from unihema.inference.predictor import Predictor

    predictor = Predictor(model)
    written: list[str] = []
    for task in (Task.DETECTION, Task.SEGMENTATION):
        if task not in samples:
            continue
        (result,) = predictor.predict(
            samples[task][0].load_image(), tasks=[task], score_threshold=DETECTION_OVERLAY_SCORE,
            max_detections=eval_config.max_detections, mask_threshold=eval_config.mask_threshold,
            tiling={"mode": "never"},
        )  # fmt: skip
        relative = f"overlays/{task.value}.png"
        atomic_save_image(result.plot(), out_dir / relative)
        written.append(relative)
    return written


def run_demo(
    out_dir: Path,
    *,
    config_path: Path | None = None,
    eval_per_task: int | None = 64,
    seed: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the main job into ``out_dir``; returns the report dictionary (also written to disk). ``seed``
    replaces the curriculum's ``seed`` (model initialisation, sampling and augmentation)."""
    from unihema.data.synthetic import SyntheticCorpus
    from unihema.train.history import write_training_record
    from unihema.train.stages import TrainConfig
    from unihema.train.trainer import build_model, run_training, seed_everything

    started = time.perf_counter()
    out_dir = Path(out_dir)
    config_path = Path(config_path) if config_path else default_config_path()
    config = TrainConfig.load(config_path)
    if seed is not None:
        config = TrainConfig.from_dict(config.to_dict() | {"seed": seed})
    run_dir = out_dir / "run"
    if run_dir.exists():
        raise FileExistsError(f"{out_dir} already holds a demo run; choose another --out or remove it")
    corpus = SyntheticCorpus(config.data.synthetic_config())
    eval_config = EvalConfig(
        transforms=config.data.transform_config(),
        pad_to_multiple=config.data.pad_to_multiple,
        # Classification predicts among the classes the corpus's crops carry, as `unihema eval` does.
        cell_classes=labelled_cell_classes(
            [s for split in SPLITS for s in corpus.samples(Task.CLASSIFICATION, split)]
        ),
    )
    eval_samples = _eval_samples(corpus, eval_per_task)

    # The same seed and construction as the trainer's, so "before" is the model training starts from.
    # (The report shows the shuffled-image VQA check after training only, so "before" skips it.)
    seed_everything(config.seed)
    untrained = build_model(config)
    before: dict[Task, TaskResult] = evaluate(
        untrained, eval_samples, dataclasses.replace(eval_config, shuffled_image_check=False)
    )
    del untrained
    evaluated_before = time.perf_counter()

    model = run_training(config, run_dir, progress=progress)
    trained = time.perf_counter()
    after = evaluate(model, eval_samples, eval_config)
    model_dir = out_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model.save_pretrained(model_dir)
    write_training_record(model_dir, config, range(len(config.stages)))  # so `eval` marks seen datasets
    overlays = _overlays(model, eval_samples, eval_config, out_dir)
    finished = time.perf_counter()

    meta = {
        "command": f"unihema demo --out {out_dir}",
        "config": str(config_path),
        "model_preset": config.model.preset,
        "synthetic_images": corpus.config.n_images,
        "eval_samples_per_task": {task.value: len(samples) for task, samples in eval_samples.items()},
        "seconds_evaluate_before": round(evaluated_before - started, 1),
        "seconds_train": round(trained - evaluated_before, 1),
        "seconds_total": round(finished - started, 1),
        "model_dir": str(model_dir),
        "torch_threads": torch.get_num_threads(),
    }
    report = build_report(before, after, meta)
    write_report(out_dir, report, overlays)
    return report


def improved_everywhere(report: Mapping[str, Any]) -> bool:
    """True when every task's metric after training beats the untrained model's."""
    return all(entry["improved"] for entry in report["tasks"].values())


def format_summary(report: Mapping[str, Any]) -> str:
    rows = [f"{'task':16s} {'metric':14s} {'before':>8s} {'after':>8s}"]
    for task, entry in report["tasks"].items():
        before = float("nan") if entry["before"] is None else entry["before"]
        rows.append(f"{task:16s} {entry['metric']:14s} {before:8.4f} {entry['after']:8.4f}")
    return "\n".join(rows)


__all__ = ["run_demo", "improved_everywhere", "format_summary", "default_config_path"]
