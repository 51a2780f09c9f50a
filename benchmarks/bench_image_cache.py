"""A training step (forward, backward, optimiser) with the frozen image path run every step against the
same step reading its cached output (``StageConfig.image_cache``), side by side in one run.

    python benchmarks/bench_image_cache.py --batch 8 --size 96 --write-doc docs/benchmarks.md
    python benchmarks/bench_image_cache.py --task classification --batch 16 --size 96 --write-doc docs/benchmarks.md

The model is the demo's (``tiny`` with three levels, SCFE reading the last backbone level, CMF adding the
cell feature). ``--task vqa`` trains it as the demo's step 6 does (CMF and D_T; the cache holds the image
memory CMF reads); ``--task classification`` as its step 5 fits the cell heads (SCFE and the heads; the
cache holds what SCFE reads, ``UniHema.cell_inputs``). Everything else is frozen in eval mode. Run it alone
on the machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from benchmark_doc import command_line, write_section

from unihema.data.schema import Task
from unihema.model.unihema import UniHema
from unihema.train.image_cache import ImageMemoryCache
from unihema.train.losses import UniHemaCriterion

SECTION_TITLES = {
    "vqa": "## Text steps with a cached image memory",
    "classification": "## Single-cell steps with cached SCFE inputs",
}
TRAINED = {"vqa": {"CMF", "D_T"}, "classification": {"SCFE", "heads"}}
PROMPT = "What is the colour of the cytoplasm?"
ANSWER = "The cytoplasm is light blue."


def step_ms(batch: int, size: int, steps: int, cached: bool, task: str = "vqa") -> float:
    """Median milliseconds of one optimiser step over ``steps`` steps (after one warm-up step)."""
    torch.manual_seed(0)
    model = UniHema.from_preset(
        "tiny",
        vision={"num_levels": 3, "num_queries": 100},
        hemaformer={"scfe_inputs": "encoder_mean+backbone_c5", "cmf_cell_feature": "add"},
    )
    trained = TRAINED[task]
    model.train()
    for group, module in model.module_groups().items():
        module.requires_grad_(group in trained)
        module.train(group in trained)
    criterion = UniHemaCriterion()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    images = torch.randn(batch, 3, size, size)
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    if task == "vqa":
        prompts, targets = [PROMPT] * batch, [{"text": ANSWER} for _ in range(batch)]
        cache, key = ImageMemoryCache(model.image_memory, 2**30), "image_memory"
    else:
        prompts, targets = None, [{"cell_class": torch.tensor(i % 5)} for i in range(batch)]
        cache, key = ImageMemoryCache(model.cell_inputs, 2**30), "cell_inputs"
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        rows = {key: cache.lookup(images, mask)} if cached else {}
        out = model(images, Task(task), prompts, targets, mask, **rows)
        loss = criterion(out, targets, Task(task))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(SECTION_TITLES), default="vqa")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    plain = step_ms(args.batch, args.size, args.steps, cached=False, task=args.task)
    cached = step_ms(args.batch, args.size, args.steps, cached=True, task=args.task)
    title = SECTION_TITLES[args.task]
    trained = " and ".join(sorted(TRAINED[args.task]))
    what = "image memory" if args.task == "vqa" else "SCFE inputs"
    lines = [
        title,
        "",
        f"`{command_line(__file__, argv)}`; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.steps} steps, "
        f"batch {args.batch}, {args.size} px crops, the demo's model ({trained} trained, {args.task}).",
        "",
        "| image path | ms per step | speed-up |",
        "|---|---:|---:|",
        f"| run every step | {plain:.1f} | 1.00x |",
        f"| cached {what} | {cached:.1f} | {plain / cached:.2f}x |",
    ]
    print("\n".join(lines))
    if args.write_doc is not None:
        write_section(args.write_doc, title, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
