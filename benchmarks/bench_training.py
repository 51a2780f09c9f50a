"""Training throughput (images/s) of every task, float32 vs bfloat16 autocast, on the synthetic corpus.

One training step = forward, the task's loss (:class:`unihema.train.losses.UniHemaCriterion`), backward,
gradient clipping and an AdamW update of every parameter the model leaves trainable (no group frozen: the
slowest case of a stage). Batches are prepared before the clock starts, so the numbers are model + loss +
optimiser time without data loading. Sizes are those of ``src/unihema/configs/demo.yaml`` by default.

    python benchmarks/bench_training.py                                # print the table
    python benchmarks/bench_training.py --presets tiny fast --det-sizes 128 416 --write-doc docs/benchmarks.md

``--write-doc`` replaces (or appends) the "Training throughput" section of the Markdown file and leaves the
rest of the file untouched.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from benchmark_doc import add_allocator_option, apply_allocator, command_line, write_section

from unihema.data.loader import build_loader
from unihema.data.schema import Task
from unihema.data.synthetic import SyntheticConfig, SyntheticCorpus
from unihema.data.transforms import TransformConfig
from unihema.model.presets import PRESETS
from unihema.model.unihema import UniHema
from unihema.train.losses import UniHemaCriterion
from unihema.train.trainer import _to_device

SECTION_TITLE = "## Training throughput"
PRECISIONS = ("float32", "bfloat16")
GRAD_CLIP = 0.1
LEARNING_RATE = 1e-4


def prepare_batches(
    task: Task, batch_size: int, count: int, args: argparse.Namespace, det_size: int
) -> list[dict[str, Any]]:
    corpus = SyntheticCorpus(
        SyntheticConfig(n_images=args.fields, image_size=args.field_size, crop_size=args.crop_size)
    )
    samples = corpus.samples(task, "train")
    transforms = TransformConfig(
        det_train_sizes=(det_size,), det_eval_size=det_size, det_max_size=det_size,
        seg_size=args.seg_size, cls_size=args.cls_size, text_size=args.text_size,
    )  # fmt: skip
    loader = build_loader(
        samples, task, batch_size, train=True, transform_config=transforms, pad_to_multiple=32
    )
    batches = []
    while len(batches) < count:
        for batch in loader:
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


def measure(model: UniHema, task: Task, batches: list[dict[str, Any]], precision: str, warmup: int) -> float:
    """Images per second over the timed steps (after ``warmup`` untimed ones)."""
    criterion = UniHemaCriterion()
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel, as unihema.train.optim.build_optimizer uses on CPU and CUDA.
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else nullcontext()
    model.train()
    timed_images, start = 0, 0.0
    for step, batch in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        targets = _to_device(batch["targets"], torch.device("cpu"))
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            outputs = model(batch["images"], task, batch["prompts"], targets, batch["image_mask"])
        loss = criterion(outputs, targets, task, padded_size=tuple(batch["images"].shape[-2:]))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        if step >= warmup:
            timed_images += batch["images"].shape[0]
    return timed_images / (time.perf_counter() - start)


def markdown(
    rows: list[tuple[str, str, int, str, float, float]], args: argparse.Namespace, command: str
) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        SECTION_TITLE,
        "",
        f"Command: `{command}`",
        "",
        f"Images per second of full training steps (forward, loss, backward, gradient clipping {GRAD_CLIP}, AdamW) "
        f"with every trainable parameter of the preset updated (fused AdamW), batch {args.batch_size}, "
        f"{args.warmup} warm-up step(s) then {args.steps} timed steps, batches prepared in advance (no data "
        f"loading); inputs: detection {' and '.join(map(str, args.det_sizes))} px, segmentation {args.seg_size} px, "
        f"single-cell {args.cls_size} px, text {args.text_size} px (128 px fields and these single-cell and text "
        f"sizes are those of `src/unihema/configs/demo.yaml`; 416 px is the BCCD benchmark's size). Presets of "
        f"a task run one after another on the same batches; {args.allocator}. torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()} CPU, load average "
        f"{load:.1f} when the table was written (above the core count means other work shared the CPU; "
        "float32 and bfloat16 of a row run back to back, so their ratio is the robust number).",
        "",
        "| preset | task | batch | input | float32 (img/s) | bfloat16 autocast (img/s) |",
        "|---|---|---:|---|---:|---:|",
    ]
    for preset, task, batch, size, fp32, bf16 in rows:
        lines.append(f"| {preset} | {task} | {batch} | {size} | {fp32:.2f} | {bf16:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny"], choices=PRESETS)
    parser.add_argument(
        "--tasks", nargs="+", default=[t.value for t in Task], choices=[t.value for t in Task]
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fields", type=int, default=24, help="synthetic fields to draw batches from")
    parser.add_argument("--field-size", type=int, default=128)
    parser.add_argument("--crop-size", type=int, default=48)
    parser.add_argument("--det-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--seg-size", type=int, default=128)
    parser.add_argument("--cls-size", type=int, default=64)
    parser.add_argument("--text-size", type=int, default=64)
    add_allocator_option(parser)
    parser.add_argument(
        "--write-doc", type=Path, help="Markdown file whose training-throughput section is (re)written"
    )
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)
    args.allocator = apply_allocator(args)

    models = {}
    for preset in args.presets:
        torch.manual_seed(0)
        model = UniHema.from_preset(preset)
        models[preset] = (model, {k: v.clone() for k, v in model.state_dict().items()})
    rows = []
    sizes = {"segmentation": args.seg_size, "classification": args.cls_size, "cell_morphology": args.cls_size,
             "vqa": args.text_size, "mlm": args.text_size}  # fmt: skip
    for name in args.tasks:
        task = Task(name)
        for det_size in args.det_sizes if name in ("detection", "fov_morphology") else [None]:
            batches = prepare_batches(task, args.batch_size, args.warmup + args.steps, args, det_size or 128)
            for preset, (model, initial) in models.items():
                rates = []
                for precision in PRECISIONS:
                    model.load_state_dict(initial)  # every measurement starts from the same weights
                    rates.append(measure(model, task, batches, precision, args.warmup))
                    print(f"{preset:6s} {name:16s} {precision:9s} {rates[-1]:8.2f} img/s", flush=True)
                size = det_size or sizes[name]
                rows.append((preset, name, args.batch_size, f"{size} px", rates[0], rates[1]))
    section = markdown(rows, args, command)
    print(section)
    if args.write_doc:
        write_section(args.write_doc, SECTION_TITLE, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
