"""The deformable-attention cores and the allocator setting, side by side on this CPU.

Three comparisons, each measured alternately in one run (A B A B ...), so that the ratio survives the
machine's drift:

1. the sampling core alone, :func:`ms_deform_attn_gather` (inference's) against
   :func:`ms_deform_attn_grid_sample`: a forward at the ``paper`` encoder's shapes for a 800x1066 input
   (every stride-8..64 token a query), and a forward plus backward at the ``tiny`` encoder's training
   shapes (batch 4 of 416x544);
2. the shared analysis pass (``UniHema.forward_fields``: detection, FoV morphology and segmentation) with
   either core swapped in, float32 and bfloat16 autocast;
3. the same pass in child processes with and without :func:`unihema.runtime.keep_freed_memory`
   (rows 1 and 2 run with it, as the ``unihema`` command does).

A 4096x4096 matmul measures the CPU's float32 and bfloat16 peak in the same run.

    python benchmarks/bench_deformable.py --write-doc docs/benchmarks.md

Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from benchmark_doc import add_allocator_option, command_line, matmul_peak, median_seconds, write_section

from unihema.data.schema import Task
from unihema.model import deformable
from unihema.model.unihema import UniHema
from unihema.runtime import keep_freed_memory

SECTION_TITLE = "## Deformable attention cores and the allocator"
CORES = {"gather": deformable.ms_deform_attn_gather, "grid_sample": deformable.ms_deform_attn_grid_sample}
# (preset, height, width) of the shared-pass rows: the paper preset at detection size, tiny on a native field.
MODEL_ROWS = (("paper", 800, 1066), ("tiny", 480, 640))
FIELD_TASKS = (Task.DETECTION, Task.FOV_MORPHOLOGY, Task.SEGMENTATION)
PROMPT = "blood cells"


def level_shapes(
    height: int, width: int, strides: tuple[int, ...] = (8, 16, 32, 64)
) -> list[tuple[int, int]]:
    """(h, w) of each level for a ``height`` x ``width`` input (ceil division, as the backbone's strides)."""
    return [(-(-height // s), -(-width // s)) for s in strides]


def core_inputs(
    shapes: list[tuple[int, int]], batch: int, heads: int, dim: int, points: int, requires_grad: bool
) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    tokens = sum(h * w for h, w in shapes)
    levels = len(shapes)
    value = torch.randn(batch, tokens, heads, dim, generator=generator)
    locations = torch.rand(batch, tokens, heads, levels, points, 2, generator=generator) * 1.2 - 0.1
    weights = torch.rand(batch, tokens, heads, levels, points, generator=generator)
    weights = weights / weights.flatten(-2).sum(-1)[..., None, None]
    spatial = torch.tensor(shapes, dtype=torch.long)
    for tensor in (value, locations, weights):
        tensor.requires_grad_(requires_grad)
    return value, spatial, locations, weights


def alternate(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs called in turn ``repeats`` times after one warm-up each."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def core_rows(repeats: int) -> list[tuple[str, dict[str, float]]]:
    inference = core_inputs(level_shapes(800, 1066), 1, 8, 32, 4, requires_grad=False)
    training = core_inputs(level_shapes(416, 544), 4, 4, 32, 4, requires_grad=True)

    def forward(core: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def run() -> None:
            with torch.no_grad():
                core(*inference)

        return run

    def forward_backward(core: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def run() -> None:
            core(*training).square().mean().backward()

        return run

    rows = [
        ("core forward, `paper` encoder at 800x1066 (17,821 queries, 8 heads)", {n: forward(c) for n, c in CORES.items()}),
        (
            "core forward + backward, `tiny` encoder, batch 4 at 416x544 (4,760 queries, 4 heads)",
            {n: forward_backward(c) for n, c in CORES.items()},
        ),
    ]  # fmt: skip
    results = []
    for label, runs in rows:
        seconds = alternate(runs, repeats)
        print(label, {k: f"{v * 1000:.0f} ms" for k, v in seconds.items()}, flush=True)
        results.append((label, seconds))
    return results


def _shared_pass(
    model: UniHema, images: torch.Tensor, precision: str, core: str | None
) -> Callable[[], object]:
    """One ``forward_fields`` call with the named core swapped in (the attention calls the name at run
    time); ``None`` leaves the package's choice."""

    def run() -> None:
        if core is not None:
            deformable.ms_deform_attn = CORES[core]
        context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else nullcontext()
        with torch.no_grad(), context:
            model.forward_fields(images, [PROMPT], FIELD_TASKS)

    return run


def model_rows(repeats: int) -> list[tuple[str, str, dict[str, float]]]:
    default = deformable.ms_deform_attn
    results = []
    try:
        for preset, height, width in MODEL_ROWS:
            torch.manual_seed(0)
            model = UniHema.from_preset(preset).eval()
            images = torch.randn(1, 3, height, width)
            for precision in ("float32", "bfloat16"):
                runs = {name: _shared_pass(model, images, precision, name) for name in CORES}
                seconds = alternate(runs, repeats)
                label = f"`{preset}` shared pass, {height}x{width}"
                print(label, precision, {k: f"{v * 1000:.0f} ms" for k, v in seconds.items()}, flush=True)
                results.append((label, precision, seconds))
    finally:
        deformable.ms_deform_attn = default
    return results


def run_child(preset: str, height: int, width: int, precision: str, repeats: int) -> float:
    """Median seconds of the shared pass with the default core, in this (fresh) process."""
    torch.manual_seed(0)
    model = UniHema.from_preset(preset).eval()
    return median_seconds(_shared_pass(model, torch.randn(1, 3, height, width), precision, None), repeats)


def _child(preset: str, height: int, width: int, precision: str, repeats: int, keep: bool) -> float:
    """:func:`run_child` in a fresh process of this script, with or without keep_freed_memory."""
    command = [
        sys.executable, __file__, "--child", preset, str(height), str(width), precision,
        "--repeats", str(repeats), "--threads", str(torch.get_num_threads()),
    ]  # fmt: skip
    if not keep:
        command.append("--glibc-default")
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    result = json.loads(out)
    if keep and not result["applied"]:
        raise RuntimeError("keep_freed_memory() was not applied in the child (not glibc, or turned off)")
    return float(result["seconds"])


def allocator_rows(pairs: int, repeats: int) -> list[tuple[str, str, dict[str, float]]]:
    results = []
    for preset, height, width in MODEL_ROWS:
        for precision in ("float32", "bfloat16"):
            kept, default = [], []
            for _ in range(pairs):
                kept.append(_child(preset, height, width, precision, repeats, keep=True))
                default.append(_child(preset, height, width, precision, repeats, keep=False))
            seconds = {"kept": statistics.median(kept), "default": statistics.median(default)}
            label = f"`{preset}` shared pass, {height}x{width}"
            print(label, precision, {k: f"{v * 1000:.0f} ms" for k, v in seconds.items()}, flush=True)
            results.append((label, precision, seconds))
    return results


def markdown(cores, models, allocator, peaks, args, command: str) -> str:
    lines = [
        SECTION_TITLE,
        "",
        f"Command: `{command}`. Medians of {args.repeats} alternating calls after one warm-up each (cores and "
        f"shared passes, in one process); the allocator rows are {args.pairs} alternating pairs of fresh "
        f"processes, each the median of {args.repeats} passes after one warm-up. Random weights, batch 1 for "
        f"the passes; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()} CPU, "
        f"4096² matmul peak {peaks['float32']:.0f} GFLOP/s float32 and {peaks['bfloat16']:.0f} GFLOP/s bfloat16 "
        "in the same run. These rows run with `keep_freed_memory()`, as the `unihema` command does. "
        "ratio = grid_sample / gather time (above 1: the gather core is faster).",
        "",
        "| what | precision | gather (ms) | grid_sample (ms) | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for label, seconds in cores:
        g, s = seconds["gather"], seconds["grid_sample"]
        lines.append(f"| {label} | float32 | {g * 1000:.0f} | {s * 1000:.0f} | {s / g:.2f}x |")
    for label, precision, seconds in models:
        g, s = seconds["gather"], seconds["grid_sample"]
        lines.append(f"| {label} | {precision} | {g * 1000:.0f} | {s * 1000:.0f} | {s / g:.2f}x |")
    lines += [
        "",
        "Both with the gather core; ratio = default / kept time (above 1: keeping freed memory is faster).",
        "",
        "| what | precision | keep_freed_memory (ms) | glibc default (ms) | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for label, precision, seconds in allocator:
        k, d = seconds["kept"], seconds["default"]
        lines.append(f"| {label} | {precision} | {k * 1000:.0f} | {d * 1000:.0f} | {d / k:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--pairs", type=int, default=3, help="alternating process pairs for the allocator rows"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-doc", type=Path, default=None)
    add_allocator_option(parser)
    parser.add_argument(
        "--child",
        nargs=4,
        metavar=("PRESET", "H", "W", "PRECISION"),
        help="(internal) one allocator-row process",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # As the unihema command runs; both arms of the in-process rows share it.
    applied = not args.glibc_default and keep_freed_memory()
    if args.child:
        preset, height, width, precision = args.child
        seconds = run_child(preset, int(height), int(width), precision, args.repeats)
        print(json.dumps({"applied": applied, "seconds": seconds}))
        return 0
    cores = core_rows(args.repeats)
    models = model_rows(args.repeats)
    allocator = allocator_rows(args.pairs, args.repeats)
    peaks = {name: matmul_peak(getattr(torch, name)) for name in ("float32", "bfloat16")}
    text = markdown(cores, models, allocator, peaks, args, command_line(__file__, argv))
    print(text)
    if args.write_doc:
        write_section(args.write_doc, SECTION_TITLE, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
