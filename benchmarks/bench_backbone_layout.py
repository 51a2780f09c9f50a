"""Channels-last against contiguous activations in the ResNet backbone, by input size, on this CPU.

The backbone switches to channels-last above ``unihema.model.backbone.CHANNELS_LAST_MIN_PIXELS``; this
script measures where that pays. Each size runs both layouts alternately in one process (median of the
repeats), training (forward + backward) and inference (forward under ``torch.no_grad``).

    python benchmarks/bench_backbone_layout.py --write-doc docs/benchmarks.md

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

from unihema.model.backbone import CHANNELS_LAST_MIN_PIXELS, ResNetBackbone

SECTION_TITLE = "## Backbone memory layout"
# (batch, height, width, training)
CASES = (
    (16, 64, 64, True),
    (4, 128, 128, True),
    (4, 256, 256, True),
    (4, 416, 544, True),
    (1, 128, 128, False),
    (1, 512, 512, False),
    (1, 800, 1088, False),
)


def run(backbone: ResNetBackbone, images: torch.Tensor, channels_last: bool, training: bool) -> float:
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    if training:
        sum(f.sum() for f in backbone.body(images)).backward()
    else:
        with torch.no_grad():
            backbone.body(images)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    backbone = ResNetBackbone(depth=args.depth)
    lines = [
        "| batch x input | pass | channels-last (ms) | contiguous (ms) | ratio | the backbone uses |",
        "|---|---|---:|---:|---:|---|",
    ]
    for batch, height, width, training in CASES:
        images = torch.randn(batch, 3, height, width)
        times: dict[bool, list[float]] = {True: [], False: []}
        for layout in (True, False):  # warm-up
            run(backbone, images, layout, training)
        for _ in range(args.repeats):
            for layout in (True, False):
                times[layout].append(run(backbone, images, layout, training))
        fast, plain = (statistics.median(times[layout]) * 1000 for layout in (True, False))
        chosen = "channels-last" if height * width > CHANNELS_LAST_MIN_PIXELS else "contiguous"
        lines.append(
            f"| {batch} x {height}x{width} | {'train' if training else 'inference'} | {fast:.0f} | "
            f"{plain:.0f} | {fast / plain:.2f} | {chosen} |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    if args.write_doc:
        command = command_line(__file__, argv)
        section = (
            f"{SECTION_TITLE}\n\nCommand: `{command}`. ResNet-{args.depth} with GroupNorm (the random-init "
            f"default), median of {args.repeats} alternating repeats, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {platform.machine()} CPU, no other job running. ratio = "
            "channels-last / contiguous time.\n\n"
            "Prediction written before the first run: channels-last about 1.2x faster everywhere (a standalone "
            "ResNet-18 at 4x416x544 had measured 1.2x). It is faster only on large inputs and slower on the "
            "demo's 128 px fields and 64 px crops, hence the size threshold "
            f"(`CHANNELS_LAST_MIN_PIXELS` = {CHANNELS_LAST_MIN_PIXELS} pixels per image).\n\n{table}\n"
        )
        write_section(args.write_doc, SECTION_TITLE, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
