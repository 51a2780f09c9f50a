"""Where one detection training step's time goes: the forward of each top-level module, the loss, the
backward and the optimiser, for each preset, on random fields with 30 boxes each.

    python benchmarks/bench_training_profile.py --presets tiny fast --size 416 544 --write-doc docs/benchmarks.md

Module times are wall-clock times of each module's ``forward`` (nested calls belong to their caller). The
backward is not split by module: autograd runs it as one graph. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from benchmark_doc import command_line, write_section

from unihema.data.schema import Task
from unihema.model.presets import PRESETS
from unihema.model.unihema import UniHema
from unihema.train.losses import UniHemaCriterion

SECTION_TITLE = "## Training step profile"
MODULES = ("backbone", "input_proj", "image_encoder", "tgvr", "image_decoder")
PHASES = (*MODULES, "forward (all)", "loss", "backward", "optimiser")


def timed_modules(model: UniHema, times: dict[str, list[float]]) -> None:
    """Wrap each of ``MODULES``' forward so that its wall time is appended to ``times``."""
    for name in MODULES:
        module = getattr(model, name)
        inner = module.forward

        def forward(*args: Any, _inner: Any = inner, _name: str = name, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = _inner(*args, **kwargs)
            times[_name].append(time.perf_counter() - start)
            return result

        module.forward = forward


def profile(preset: str, height: int, width: int, batch: int, steps: int) -> dict[str, float]:
    """Median milliseconds of each phase over ``steps`` steps (after one warm-up step)."""
    torch.manual_seed(0)
    model = UniHema.from_preset(preset).train()
    criterion = UniHemaCriterion()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)  # as unihema.train.optim on CPU
    images = torch.randn(batch, 3, height, width)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    targets = [
        {
            "boxes": torch.cat([torch.rand(30, 2) * 0.8 + 0.1, torch.rand(30, 2) * 0.1 + 0.05], 1),
            "labels": torch.randint(0, 3, (30,)),
            "size": torch.tensor([height, width]),
        }
        for _ in range(batch)
    ]
    times: dict[str, list[float]] = defaultdict(list)
    timed_modules(model, times)
    for step in range(steps + 1):
        if step == 1:
            times.clear()
        start = time.perf_counter()
        outputs = model(images, Task.DETECTION, ["blood cells"] * batch, targets, mask)
        forward_done = time.perf_counter()
        loss = criterion(outputs, targets, Task.DETECTION)["loss"]
        loss_done = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward_done = time.perf_counter()
        optimizer.step()
        times["forward (all)"].append(forward_done - start)
        times["loss"].append(loss_done - forward_done)
        times["backward"].append(backward_done - loss_done)
        times["optimiser"].append(time.perf_counter() - backward_done)
    return {phase: statistics.median(times[phase]) * 1000 for phase in PHASES if times[phase]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "fast"], choices=PRESETS)
    parser.add_argument("--size", type=int, nargs=2, default=[416, 544], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    results = {preset: profile(preset, *args.size, args.batch, args.steps) for preset in args.presets}
    header = "| phase | " + " | ".join(f"{p} (ms)" for p in results) + " |"
    lines = [header, "|---|" + "---:|" * len(results)]
    for phase in PHASES:
        cells = [f"{results[p][phase]:.0f}" if phase in results[p] else "-" for p in results]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    totals = [
        results[p]["forward (all)"] + results[p]["loss"] + results[p]["backward"] + results[p]["optimiser"]
        for p in results
    ]
    lines.append("| step | " + " | ".join(f"{t:.0f}" for t in totals) + " |")
    table = "\n".join(lines)
    print(table)
    if args.write_doc:
        command = command_line(__file__, argv)
        section = (
            f"{SECTION_TITLE}\n\nCommand: `{command}`. Detection, batch {args.batch} of {args.size[0]}x{args.size[1]} "
            f"random fields with 30 boxes each, every parameter trainable, fused AdamW, median of {args.steps} steps "
            f"after one warm-up; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()} "
            "CPU, no other job running. Module rows are forward times only (they sum to about the forward); "
            "the backward is one autograd graph, not split by module.\n\n" + table + "\n"
        )
        write_section(args.write_doc, SECTION_TITLE, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
