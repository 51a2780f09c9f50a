"""The predictor's costs: one shared pass against each task alone, and peak memory of tiled large fields.

1. Shared pass: on one 480x640 field (resized as for detection), the time of
   ``forward_fields(detection + fov_morphology + segmentation)`` against ``forward`` of each of the three
   tasks one after another, measured alternately in the same process (random weights, eval mode).
2. Tiling: peak resident memory (``ru_maxrss``) of ``UniHema.predict`` on fields of 1, 4 and 12 megapixels,
   each in a fresh process (so each peak is its own), tiled (the default) and, for comparison, resized
   whole (``tiling="never"``).

Run alone on the machine: ``python benchmarks/bench_predict.py --write-doc docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from benchmark_doc import write_section

from unihema.inference.image_processor import ImageProcessor
from unihema.model.unihema import UniHema

TITLE = "## Predictor: shared pass and large fields"
FIELD_TASKS = ("detection", "fov_morphology", "segmentation")
MEGAPIXEL_SIZES = {1: (866, 1155), 4: (1732, 2309), 12: (3000, 4000)}
PREDICTION = (
    "Prediction written before the first run: the shared pass costs about 0.4 of the three separate "
    "forwards (they repeat the backbone, the encoders and the decoder three times; the shared pass adds "
    "the attribute head and QGMF once), on both presets. Peak memory grows with the tile buffers, not the "
    "field: under 1.5x from 1 to 12 megapixels tiled, the increase being the field's own pixels (36 MB "
    "at 12 MP) and its mask; time grows with the number of tiles."
)


def _field(height: int, width: int) -> np.ndarray:
    return (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)


def shared_pass(preset: str, repeats: int) -> dict[str, float]:
    model = UniHema.from_preset(preset).eval()
    batch = ImageProcessor()([_field(480, 640)], "detection")
    prompts = ["This image is for the detection of blood cells."]
    images, mask = batch.pixel_values, batch.image_mask

    def shared() -> None:
        model.forward_fields(images, prompts, FIELD_TASKS, image_mask=mask)

    def separate() -> None:
        for task in FIELD_TASKS:
            model(images, task, prompts, image_mask=mask)

    times: dict[str, list[float]] = {"shared": [], "separate": []}
    with torch.inference_mode():
        shared(), separate()  # warm-up
        for _ in range(repeats):
            for name, run in (("shared", shared), ("separate", separate)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    return {**medians, "ratio": medians["shared"] / medians["separate"], "input": list(images.shape[-2:])}


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def tiled_memory(megapixels: int, tiling: str) -> dict[str, float]:
    """Child process: one prediction, its wall time and the peak RSS it adds to the loaded model."""
    height, width = MEGAPIXEL_SIZES[megapixels]
    model = UniHema.from_preset("tiny").eval()
    image = _field(height, width)
    gc.collect()
    # Reset the peak (VmHWM) so that building the model does not hide the prediction's own peak.
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_mib("VmRSS")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = model.predict(image, tasks=list(FIELD_TASKS), tiling={"mode": tiling}, score_threshold=0.0)
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    tiles = next((w.split()[2] for w in result.warnings if "tiles" in w), "1")
    return {"peak_mib": peak, "before_mib": baseline, "seconds": seconds, "tiles": int(tiles)}


def _child(megapixels: int, tiling: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", str(megapixels), tiling]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--megapixels", nargs="+", type=int, default=[1, 4, 12])
    parser.add_argument("--whole-up-to", type=int, default=4, help="largest size also run untiled (MP)")
    parser.add_argument("--write-doc", type=Path)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.child:
        print(json.dumps(tiled_memory(int(args.child[0]), args.child[1])))
        return
    lines = [
        TITLE, "",
        f"Command: `python benchmarks/bench_predict.py --presets {' '.join(args.presets)} --repeats "
        f"{args.repeats} --megapixels {' '.join(map(str, args.megapixels))}` (run alone; torch "
        f"{torch.__version__}, 2 threads, {platform.machine()} CPU, random weights).", "",
        "One 480x640 field resized for detection; median of the repeats, shared and separate measured "
        "alternately in one process.", "", PREDICTION, "",
        "| preset | input | shared pass, 3 tasks (ms) | each task alone, summed (ms) | shared / separate |",
        "|---|---|---:|---:|---:|",
    ]  # fmt: skip
    for preset in args.presets:
        row = shared_pass(preset, args.repeats)
        print(preset, row, flush=True)
        size = "x".join(map(str, row["input"]))
        lines.append(
            f"| {preset} | {size} | {row['shared']:.0f} | {row['separate']:.0f} | {row['ratio']:.2f} |"
        )
    lines += [
        "", "Peak resident memory (VmHWM, reset after building the model) of one `UniHema.predict` (tiny "
        "preset, detection + FoV morphology + segmentation, default pre-processing: tiles of 1333 px with a "
        "quarter overlap), each run in a fresh process; `before` is the resident memory with the model built "
        "and the field in memory.", "",
        "| field | tiling | tiles | before (MiB) | peak (MiB) | wall (s) |", "|---|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for megapixels in args.megapixels:
        modes = ["auto", "never"] if megapixels <= args.whole_up_to else ["auto"]
        for mode in modes:
            row = _child(megapixels, mode)
            print(megapixels, mode, row, flush=True)
            height, width = MEGAPIXEL_SIZES[megapixels]
            lines.append(
                f"| {megapixels} MP ({width}x{height}) | {mode} | {row['tiles']} | {row['before_mib']:.0f} | "
                f"{row['peak_mib']:.0f} | {row['seconds']:.1f} |"
            )
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write_doc:
        write_section(args.write_doc, TITLE, section)


if __name__ == "__main__":
    main()
