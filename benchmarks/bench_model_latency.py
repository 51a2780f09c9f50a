"""Forward latency of every UniHema task, per preset and precision, on the CPU.

Runs each task's forward pass (eval mode, no gradients, batch 1, 512x512 input) a few times after a
warm-up and reports the median wall time, in float32 and under bfloat16 autocast. Tasks that share a
path are measured once: cell_morphology runs the classification path, mlm the vqa path. The vqa row is
the teacher-forced forward; ``vqa generate`` is greedy generation of 16 new tokens.

    python benchmarks/bench_model_latency.py                         # print the table
    python benchmarks/bench_model_latency.py --write-doc docs/benchmarks.md

``--write-doc`` replaces (or appends) the "Model forward latency" section of the given Markdown file
and leaves the rest of the file untouched.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from benchmark_doc import add_allocator_option, apply_allocator, command_line, write_section

from unihema.model.unihema import UniHema

SECTION_TITLE = "## Model forward latency"
IMAGE_SIZE = 512
PROMPT_DETECTION = "This image is for the detection of acute myeloid leukemia cells"
PROMPT_VQA = "Q: What is the shape of the nucleus?"
ANSWER = "segmented-bilobed"
GENERATE_TOKENS = 16
TASKS = ("detection", "fov_morphology", "segmentation", "classification", "vqa", "vqa generate")
PRECISIONS = ("float32", "bfloat16")


def _runner(model: UniHema, task: str, images: torch.Tensor) -> Callable[[], object]:
    if task == "vqa generate":
        return lambda: model.generate_text(images, [PROMPT_VQA], max_new_tokens=GENERATE_TOKENS)
    if task == "vqa":
        return lambda: model(images, task, [PROMPT_VQA], targets=[{"text": ANSWER}])
    return lambda: model(images, task, [PROMPT_DETECTION])


def measure(run: Callable[[], object], precision: str, warmup: int, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls."""
    context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else nullcontext()
    times = []
    with torch.no_grad(), context:
        for index in range(warmup + repeats):
            start = time.perf_counter()
            run()
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark(presets: list[str], warmup: int, repeats: int) -> dict[tuple[str, str, str], float]:
    results: dict[tuple[str, str, str], float] = {}
    torch.manual_seed(0)
    images = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    for preset in presets:
        model = UniHema.from_preset(preset).eval()
        for task in TASKS:
            for precision in PRECISIONS:
                seconds = measure(_runner(model, task, images), precision, warmup, repeats)
                results[(preset, task, precision)] = seconds
                print(f"{preset:<6} {task:<16} {precision:<9} {seconds * 1000:10.1f} ms", flush=True)
        del model
    return results


def markdown(
    results: dict[tuple[str, str, str], float],
    presets: list[str],
    warmup: int,
    repeats: int,
    command: str,
    allocator: str,
) -> str:
    lines = [
        SECTION_TITLE,
        "",
        f"Command: `{command}`",
        "",
        f"Median wall time of one forward pass (batch 1, {IMAGE_SIZE}x{IMAGE_SIZE} input, eval mode, no gradients) "
        f"after {warmup} warm-up run(s), {repeats} timed runs; random weights; {allocator}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()} CPU, 1-minute load average "
        f"{os.getloadavg()[0]:.1f} when the table was written (above the core count means other work shared the "
        "CPU and rows may be slower than on an idle machine; float32 and bfloat16 of a row run back to back, "
        "so their ratio is the robust number). cell_morphology "
        "runs the classification path and mlm the vqa path; `vqa` is the teacher-forced forward, "
        f"`vqa generate` greedy generation of {GENERATE_TOKENS} new tokens from the fused image-and-text states.",
        "",
        "| preset | task | float32 (ms) | bfloat16 autocast (ms) |",
        "|---|---|---:|---:|",
    ]
    for preset in presets:
        for task in TASKS:
            f32, bf16 = results[(preset, task, "float32")], results[(preset, task, "bfloat16")]
            lines.append(f"| {preset} | {task} | {f32 * 1000:.0f} | {bf16 * 1000:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-doc", type=Path, help="Markdown file whose latency section is (re)written")
    add_allocator_option(parser)
    args = parser.parse_args()
    allocator = apply_allocator(args)
    results = benchmark(args.presets, args.warmup, args.repeats)
    section = markdown(
        results, args.presets, args.warmup, args.repeats, command_line(__file__, None), allocator
    )
    print()
    print(section)
    if args.write_doc:
        write_section(args.write_doc, SECTION_TITLE, section)


if __name__ == "__main__":
    main()
