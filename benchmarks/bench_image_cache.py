"""A VQA training step (forward, backward, optimiser) with the image path run every step against the
same step reading a cached image memory (``StageConfig.image_cache``), side by side in one run.

    python benchmarks/bench_image_cache.py --batch 8 --size 96 --write-doc docs/benchmarks.md

The model is the demo's (``tiny`` with three levels, SCFE reading the last backbone level, CMF adding the
cell feature), trained as the demo's step 6 trains it: CMF and D_T, everything else frozen in eval mode.
Run it alone on the machine.
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

SECTION_TITLE = "## Text steps with a cached image memory"
PROMPT = "What is the colour of the cytoplasm?"
ANSWER = "The cytoplasm is light blue."


def step_ms(batch: int, size: int, steps: int, cached: bool) -> float:
    """Median milliseconds of one optimiser step over ``steps`` steps (after one warm-up step)."""
    torch.manual_seed(0)
    model = UniHema.from_preset(
        "tiny",
        vision={"num_levels": 3, "num_queries": 100},
        hemaformer={"scfe_inputs": "encoder_mean+backbone_c5", "cmf_cell_feature": "add"},
    )
    trained = {"CMF", "D_T"}
    model.train()
    for group, module in model.module_groups().items():
        module.requires_grad_(group in trained)
        module.train(group in trained)
    criterion = UniHemaCriterion()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    images = torch.randn(batch, 3, size, size)
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    prompts, targets = [PROMPT] * batch, [{"text": ANSWER} for _ in range(batch)]
    cache = ImageMemoryCache(model.image_memory, 2**30)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        memory = cache.lookup(images, mask) if cached else None
        out = model(images, Task.VQA, prompts, targets, mask, image_memory=memory)
        loss = criterion(out, targets, Task.VQA)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    plain = step_ms(args.batch, args.size, args.steps, cached=False)
    cached = step_ms(args.batch, args.size, args.steps, cached=True)
    lines = [
        SECTION_TITLE,
        "",
        f"`{command_line(__file__, argv)}`; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.steps} steps, "
        f"batch {args.batch}, {args.size} px crops, the demo's step-6 model (CMF and D_T trained).",
        "",
        "| image path | ms per step | speed-up |",
        "|---|---:|---:|",
        f"| run every step | {plain:.1f} | 1.00x |",
        f"| cached image memory | {cached:.1f} | {plain / cached:.2f}x |",
    ]
    print("\n".join(lines))
    if args.write_doc is not None:
        write_section(args.write_doc, SECTION_TITLE, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
