"""Peak memory of training against corpus size: the synthetic corpus at 1k, 10k and 100k fields, read
through a manifest (``data.manifests``), must cost the same peak RSS: bounded by the batch, not the corpus.

Each corpus size trains the same fixed number of optimiser steps (``tiny`` preset, 128 px detection and
64 px single-cell inputs, 4 images per task per step, detection and classification in turn, no data
workers) in a fresh Python process, whose peak resident set size (``VmHWM`` of ``/proc/self/status``) is
the number reported; the run includes reading the manifest's index, the class masks, the memory estimate,
the checkpoint at the end and the final model.

The manifests are written lazily: rendering 100,000 fields takes about 28 minutes on one core (16.6 ms
per 256 px field, section "Synthetic corpus generation"), so a pool of ``--pool`` fields is rendered and
written once as PNG files, and field ``i`` of an ``N``-field manifest is pool field ``i % pool`` with its own
sample ids: one detection line and its single-cell crops per field, every line a complete sample, as
``unihema data synthetic`` writes them. What grows with ``N`` is everything the corpus costs the trainer
(manifest lines, their index, the samplers' permutations); the images decoded per step do not.

Prediction, written before the first run: the peak is set by the model, its gradients and AdamW state and
one batch's activations, the same at every size. The corpus adds 8 bytes per manifest line for the line
offsets, a transient Python list of line numbers while the index is grouped by task and split (about 36
bytes per line) and 8 bytes per sample for each sampler permutation; at 100k fields (about 600k lines) that
is under 30 MB, so the peak stays within about 30 MB (a few percent) of the 1k-field peak: flat. (The
table calls a growth of up to ``--flat-mb`` 50 MB flat: runs whose batches hold other images differ by about
20 MB either way, as a trial run at 100 and 300 fields showed.)

    python benchmarks/bench_train_memory.py                                 # print the table
    python benchmarks/bench_train_memory.py --write-doc docs/benchmarks.md  # (re)write its section
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmark_doc import command_line, write_section

SECTION_TITLE = "## Training memory against corpus size"
TASKS = ("detection", "classification")
FIELD_SIZE = 128
TRANSFORMS = {
    "det_train_sizes": [128], "det_eval_size": 128, "det_max_size": 128, "seg_size": 64, "cls_size": 64,
    "text_size": 64,
}  # fmt: skip
SYNTHETIC = {
    "image_size": FIELD_SIZE, "rbc_radius": 6.0, "crop_size": 32, "abnormal_rbc_crops_per_field": 2,
    "rbc_crops_per_field": 1, "platelet_crops_per_field": 1, "split_fractions": [1.0, 0.0, 0.0],
}  # fmt: skip


def peak_rss_bytes() -> int:
    """This process's peak resident set size (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def write_pool(folder: Path, pool: int) -> list[list[Any]]:
    """Render ``pool`` fields, write their images, and return each field's detection and classification
    samples pointing at the written file (crops as windows of it)."""
    from PIL import Image

    from unihema.data.schema import FileImage, Task
    from unihema.data.synthetic import SyntheticConfig, SyntheticCorpus

    corpus = SyntheticCorpus(SyntheticConfig(n_images=pool, **SYNTHETIC), cache=False)
    fields = []
    for index in range(pool):
        fov = corpus.field(index)
        path = folder / f"field_{index:05d}.png"
        Image.fromarray(fov.image).save(path)
        samples = []
        for task in (Task(t) for t in TASKS):
            for sample in corpus.field_samples(task, index, fov):
                crop = sample.extra.get("crop")
                sample.image = FileImage(path, tuple(crop) if crop is not None else None)
                samples.append(sample)
        fields.append(samples)
    return fields


def manifest_samples(pool: list[list[Any]], fields: int) -> Iterator[Any]:
    """The samples of a ``fields``-field corpus whose field ``i`` is pool field ``i % len(pool)``."""
    for index in range(fields):
        for sample in pool[index % len(pool)]:
            suffix = sample.sample_id.partition("/")[2]
            sample_id = f"field_{index:06d}" + (f"/{suffix}" if suffix else "")
            yield dataclasses.replace(
                sample, sample_id=sample_id, extra={"split_group": f"field_{index:06d}"}
            )


def child(manifest: Path, steps: int, run_dir: Path) -> dict[str, Any]:
    """Train ``steps`` steps from ``manifest`` in this process; its peak RSS and timings."""
    import torch

    from unihema.train.stages import TrainConfig
    from unihema.train.trainer import run_training

    torch.set_num_threads(1)
    start_rss = peak_rss_bytes()
    config = TrainConfig.from_dict(
        {
            "seed": 0,
            "model": {"preset": "tiny"},
            "data": {"manifests": {"smears": str(manifest)}, "num_workers": 0, "transforms": TRANSFORMS},
            "runtime": {"device": "cpu", "log_every": 1, "checkpoint_every": 0, "tensorboard": False},
            "stages": [
                {
                    "name": "bench",
                    "tasks": {t: ["smears"] for t in TASKS},
                    "k_per_task": 4,
                    "max_steps": steps,
                    "train": ["B", "E_I", "D_I", "TGVR", "SCFE", "heads"],
                    "lr": 1e-4,
                }
            ],
        }  # fmt: skip
    )
    began = time.perf_counter()
    run_training(config, run_dir, progress=False)
    return {"peak_rss": peak_rss_bytes(), "start_rss": start_rss, "seconds": time.perf_counter() - began}


def measure(fields: int, pool: list[list[Any]], work: Path, steps: int) -> dict[str, Any]:
    from unihema.data.manifest import write_manifest

    manifest = work / f"manifest-{fields}.jsonl"
    began = time.perf_counter()
    lines = write_manifest(manifest_samples(pool, fields), manifest)
    written = time.perf_counter() - began
    command = [sys.executable, __file__, "--child", str(manifest), "--steps", str(steps), "--run-dir", str(work / f"run-{fields}")]  # fmt: skip
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    size = manifest.stat().st_size
    manifest.unlink()
    return {"fields": fields, "lines": lines, "manifest_bytes": size, "write_seconds": written, **measured}


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    import torch

    base = rows[0]["peak_rss"]
    lines = [
        SECTION_TITLE,
        "",
        f"Command: `{command}`",
        "",
        f"Peak resident memory of a training run of {args.steps} optimiser steps (`tiny` preset, detection "
        "128 px and classification 64 px in turn, 4 images per task per step, no data workers, one thread) "
        "against the size of the synthetic corpus it reads through a manifest (`data.manifests`), each in a "
        "fresh process. Field `i` of a manifest is field `i % "
        f"{args.pool}` of a pool of {args.pool} rendered {FIELD_SIZE} px fields (rendering 100k fields one by one "
        "takes about 28 minutes at 256 px); every line is a complete sample with its own id. "
        f"torch {torch.__version__}, {platform.machine()} CPU, {os.cpu_count()} cores.",
        "",
        "| fields | manifest lines | manifest size | peak RSS | vs. smallest | RSS after imports | training time |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['fields']:,} | {row['lines']:,} | {row['manifest_bytes'] / 1e6:.1f} MB "
            f"| {row['peak_rss'] / 1e6:.0f} MB | {(row['peak_rss'] - base) / 1e6:+.0f} MB "
            f"| {row['start_rss'] / 1e6:.0f} MB | {row['seconds']:.1f} s |"
        )
    growth = (rows[-1]["peak_rss"] - base) / 1e6
    verdict = "flat" if abs(growth) <= args.flat_mb else "NOT flat"
    lines += [
        "",
        "Prediction (in the script's docstring, written before the first run): within about 30 MB of the "
        f"smallest corpus, plus about 20 MB either way between runs that draw other batches. Measured: {growth:+.0f} MB from {rows[0]['fields']:,} to {rows[-1]['fields']:,} "
        f"fields ({verdict} at a {args.flat_mb:.0f} MB tolerance). The training time grows with the corpus "
        "only through the one pass that indexes the manifest by task and split and the one that collects "
        "the detection classes its boxes use.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--pool", type=int, default=64, help="rendered fields the manifests reuse")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--flat-mb", type=float, default=50.0, help="growth still called flat")
    parser.add_argument("--write-doc", type=Path, help="Markdown file whose section is (re)written")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.steps, args.run_dir)))
        return 0
    command = command_line(__file__, argv)
    with tempfile.TemporaryDirectory(prefix="bench-train-memory-") as tmp:
        work = Path(tmp)
        pool = write_pool(work, args.pool)
        rows = []
        for fields in sorted(args.fields):
            rows.append(measure(fields, pool, work, args.steps))
            row = rows[-1]
            print(
                f"{fields:>8,} fields  {row['lines']:>9,} lines  peak RSS {row['peak_rss'] / 1e6:7.0f} MB  "
                f"{row['seconds']:6.1f} s (manifest written in {row['write_seconds']:.1f} s)",
                flush=True,
            )
    section = markdown(rows, args, command)
    print(section)
    if args.write_doc:
        write_section(args.write_doc, SECTION_TITLE, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
