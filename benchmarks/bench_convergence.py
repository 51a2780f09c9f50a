"""Learning curves against wall-clock training time: detection mAP@0.5 and single-cell weighted F1.

Each recipe trains the ``tiny`` preset from random weights on one task of the built-in synthetic corpus
(detection alone, single-cell classification alone), and is scored on the held-out synthetic test split
after 1, 2, 5 and 10 minutes of training (the clock stops while it evaluates). Recipes:

- ``before``: the settings of the first demo (four feature levels, 300 queries, gradient clipping 0.1,
  48 px single-cell windows, the paper's mean-pooled SCFE);
- ``three_levels``, ``tight_crops``, ``tight_crops_c5``: one change at a time (see ``RECIPES``);
- ``after``: the second demo's settings (three levels, 100 queries, clipping 1.0, tight single-cell
  windows, SCFE with the raw last backbone level);
- ``large_cells``: ``after`` with today's demo corpus (``src/unihema/configs/demo.yaml``: red cells of
  10 px radius instead of 7 on the same 128 px fields);
- ``fast_encoder``: ``large_cells`` with the ``fast`` preset's encoder (``vision.encoder_skip_levels: 1``).

    python benchmarks/bench_convergence.py --recipes before after --seeds 0 --minutes 1 2 5 10
    python benchmarks/bench_convergence.py --recipes after large_cells --tasks detection --seeds 0 1 2 \
        --minutes 1 2 --write-doc docs/benchmarks.md

Run it alone on the machine: a second torch process on the same cores makes both several times slower
and the curves meaningless. ``--write-doc`` replaces the "Convergence" section of the Markdown file.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from benchmark_doc import command_line, write_section
from timed_training import train_for

from unihema.data.loader import build_loader
from unihema.data.schema import Task
from unihema.data.synthetic import SyntheticConfig, SyntheticCorpus
from unihema.data.transforms import TransformConfig
from unihema.evaluate.evaluator import EvalConfig, evaluate_task
from unihema.model.unihema import UniHema
from unihema.train.losses import UniHemaCriterion

SECTION_TITLE = "## Convergence"
FIELD_SIZE = 128
RBC_RADIUS = 7.0
FIELDS = 600
DETECTION_BATCH = 4
CELL_BATCH = 8
EVAL_DETECTION_FIELDS = 48
EVAL_CELLS = 400


@dataclass(frozen=True)
class Recipe:
    """Model overrides and optimiser settings of one curve."""

    vision: dict[str, Any] = field(default_factory=dict)
    hemaformer: dict[str, Any] = field(default_factory=dict)
    crop_size: int = 48
    crop_scale: float = 1.0
    rbc_radius: float = RBC_RADIUS
    lr_detection: float = 5e-4
    lr_cells: float = 1e-3
    clip_detection: float = 0.1
    clip_cells: float = 1.0


RECIPES = {
    "before": Recipe(),
    # One change at a time on top of "before" (the ablations of docs/training.md).
    "three_levels": Recipe(vision={"num_levels": 3, "num_queries": 100}),
    "tight_crops": Recipe(crop_size=16, crop_scale=1.6),
    "tight_crops_c5": Recipe(
        hemaformer={"scfe_inputs": "encoder_mean+backbone_c5"}, crop_size=16, crop_scale=1.6
    ),
    "after": Recipe(
        vision={"num_levels": 3, "num_queries": 100},
        hemaformer={"scfe_inputs": "encoder_mean+backbone_c5"},
        crop_size=16,
        crop_scale=1.6,
        clip_detection=1.0,
    ),
}
RECIPES["large_cells"] = replace(RECIPES["after"], rbc_radius=10.0)  # today's demo corpus
# The ``fast`` preset's encoder (the finest level's tokens are sampled but not updated) on large_cells.
RECIPES["fast_encoder"] = replace(
    RECIPES["large_cells"], vision={**RECIPES["large_cells"].vision, "encoder_skip_levels": 1}
)


def curve(recipe: Recipe, task: Task, seed: int, minutes: list[float]) -> list[dict[str, float]]:
    """Train ``task`` alone and score it at each budget in ``minutes``; returns one row per budget."""
    torch.manual_seed(seed)
    corpus = SyntheticCorpus(
        SyntheticConfig(
            n_images=FIELDS, image_size=FIELD_SIZE, rbc_radius=recipe.rbc_radius, crop_size=recipe.crop_size,
            crop_scale=recipe.crop_scale,
        )
    )  # fmt: skip
    transforms = TransformConfig(
        det_train_sizes=(FIELD_SIZE,),
        det_eval_size=FIELD_SIZE,
        det_max_size=int(FIELD_SIZE * 1.25),
        cls_size=64,
    )
    detection = task is Task.DETECTION
    test = corpus.samples(task, "test")[: EVAL_DETECTION_FIELDS if detection else EVAL_CELLS]
    model = UniHema.from_preset("tiny", vision=recipe.vision, hemaformer=recipe.hemaformer)
    criterion = UniHemaCriterion()
    params = [p for p in model.parameters() if p.requires_grad]
    lr, clip = (
        (recipe.lr_detection, recipe.clip_detection) if detection else (recipe.lr_cells, recipe.clip_cells)
    )
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    loader = build_loader(
        corpus.samples(task, "train"), task, batch_size=DETECTION_BATCH if detection else CELL_BATCH,
        train=True, transform_config=transforms, seed=seed, pad_to_multiple=32,
    )  # fmt: skip
    eval_config = EvalConfig(transforms=transforms, pad_to_multiple=32, shuffled_image_check=False)

    def loss_of(batch: dict[str, Any], step: int) -> torch.Tensor:
        outputs = model(batch["images"], task, batch["prompts"], batch["targets"], batch["image_mask"])
        return criterion(outputs, batch["targets"], task)["loss"]

    rows: list[dict[str, float]] = []
    steps, trained_minutes = 0, 0.0
    for budget in sorted(minutes):
        model.train()
        steps += train_for(budget - trained_minutes, loader, loss_of, optimizer, params, clip)
        trained_minutes = budget
        result = evaluate_task(model, test, task, eval_config)
        rows.append({"minutes": budget, "steps": steps, "value": result.value})
        print(json.dumps({"task": task.value, "seed": seed, **rows[-1]}), flush=True)
    return rows


def table(results: dict[tuple[str, str], dict[int, list[dict[str, float]]]], minutes: list[float]) -> str:
    header = "| recipe | task | metric | seeds | " + " | ".join(f"{m:g} min" for m in minutes) + " |"
    lines = [header, "|" + "---|" * (4 + len(minutes))]
    for (recipe, task), by_seed in results.items():
        cells = []
        for index in range(len(minutes)):
            values = [rows[index]["value"] for rows in by_seed.values()]
            steps = [rows[index]["steps"] for rows in by_seed.values()]
            spread = f" ± {statistics.pstdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread} ({int(statistics.mean(steps))} steps)")
        metric = "mAP@0.5" if task == Task.DETECTION.value else "weighted F1"
        seeds = ",".join(str(s) for s in by_seed)
        lines.append(f"| {recipe} | {task} | {metric} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["before", "after"], choices=sorted(RECIPES))
    parser.add_argument("--tasks", nargs="+", default=["detection", "classification"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--minutes", nargs="+", type=float, default=[1, 2, 5, 10])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[tuple[str, str], dict[int, list[dict[str, float]]]] = {}
    for name in args.recipes:
        for task in (Task(t) for t in args.tasks):
            for seed in args.seeds:
                results.setdefault((name, task.value), {})[seed] = curve(
                    RECIPES[name], task, seed, args.minutes
                )
    text = table(results, sorted(args.minutes))
    print(text)
    if args.write_doc:
        command = command_line(__file__, argv)
        section = (
            f"{SECTION_TITLE}\n\nCommand: `{command}`. Synthetic test split ({EVAL_DETECTION_FIELDS} fields for "
            f"detection, {EVAL_CELLS} crops for classification), `tiny` preset from random weights, one task per "
            f"curve, {FIELDS} fields of {FIELD_SIZE} px (red-cell radius {RBC_RADIUS:g} px unless the recipe says "
            "otherwise); constant learning rates; time is training time only (evaluation excluded). "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()} CPU, no other "
            "job running. Mean ± population std over the seeds.\n\n" + text + "\n"
        )
        write_section(args.write_doc, SECTION_TITLE, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
