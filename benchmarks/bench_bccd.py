"""BCCD from random weights in a fixed wall-clock budget: UniHema's ``tiny`` and ``fast`` presets against
torchvision's Faster R-CNN MobileNetV3-FPN, trained one after another in one run on the same images and
scored the same way.

Data: ``../shared/datasets/bccd`` (or ``--data``), read with the package's Pascal VOC reader. Training uses
the ``train`` and ``val`` lists (292 images, as the peers in the issue tracker), scoring the ``test`` list
(72 images) with the package's COCO evaluation (faster-coco-eval): mAP@0.5, mAP@[.5:.95] and AP50 per class.
Both models train on multi-scale resized images (shorter side drawn from ``--train-sizes``), horizontal
and vertical flips, batch 4, and are evaluated at ``--eval-size`` (the size they were trained around).

    python benchmarks/bench_bccd.py --minutes 15 --write-doc docs/benchmarks.md

Run it alone on the machine (two torch processes on the same cores ruin both timings).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from benchmark_doc import command_line, write_section
from real_data_peers import eval_batches, score, targets_in_pixels, train_faster_rcnn
from timed_training import train_for

from unihema.data.loader import build_loader
from unihema.data.schema import Sample, Task
from unihema.data.transforms import TransformConfig
from unihema.data.vocab import DETECTION_CLASSES, detection_index
from unihema.evaluate import metrics
from unihema.evaluate.evaluator import EvalConfig
from unihema.inference.postprocess import decode_detections
from unihema.model.config_sections import BACKBONE_NORMS
from unihema.model.unihema import UniHema
from unihema.train.ema import WeightEMA
from unihema.train.losses import CLASS_LOSSES, LossConfig, UniHemaCriterion

SECTION_TITLE = "## BCCD from scratch"
BCCD_CLASSES = ("rbc", "wbc", "platelet")
BATCH = 4


def read_bccd(root: Path) -> tuple[list[Sample], list[Sample]]:
    from unihema.data.catalog import get_dataset
    from unihema.data.formats.base import get_reader

    entry = get_dataset("bccd")
    result = get_reader(entry.reader).read(root, dataset=entry.name, **entry.options)
    train = [s for s in result.samples if s.split in ("train", "val")]
    test = [s for s in result.samples if s.split == "test"]
    if not train or not test:
        raise SystemExit(
            f"{root}: expected BCCD's train/val/test lists, found {len(train)} train, {len(test)} test"
        )
    return train, test


def class_mask() -> torch.Tensor:
    mask = torch.zeros(len(DETECTION_CLASSES), dtype=torch.bool)
    for name in BCCD_CLASSES:
        mask[detection_index(name)] = True
    return mask


def bccd_row(result: dict[str, Any]) -> dict[str, Any]:
    """The columns this benchmark prints and tabulates, from a row in the evaluator's names."""
    return {
        "model": result["model"], "steps": result["steps"], "mAP50": result["mAP50"],
        "mAP": result["mAP50_95"], "AP50": result["AP50_per_class"],
    }  # fmt: skip


def train_unihema(
    train: list[Sample], test: list[Sample], args: argparse.Namespace, preset: str
) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model = UniHema.from_preset(
        preset, vision={"num_queries": args.queries, "backbone_norm": args.backbone_norm}
    )
    criterion = UniHemaCriterion(
        LossConfig(class_loss=args.class_loss, encoder_one_to_many=args.encoder_one_to_many)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4, fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bfloat16")
    transforms = TransformConfig(
        det_train_sizes=tuple(args.train_sizes),
        det_eval_size=args.eval_size,
        det_max_size=int(args.eval_size * 4 / 3),
    )
    loader = build_loader(
        train,
        Task.DETECTION,
        batch_size=BATCH,
        train=True,
        transform_config=transforms,
        seed=args.seed,
        pad_to_multiple=32,
    )
    mask = class_mask()

    def loss_of(batch: dict[str, Any], step: int) -> torch.Tensor:
        for target in batch["targets"]:
            target["class_mask"] = mask
        with autocast:
            outputs = model(
                batch["images"], Task.DETECTION, batch["prompts"], batch["targets"], batch["image_mask"]
            )
            return criterion(outputs, batch["targets"], Task.DETECTION)["loss"]

    ema = WeightEMA(model, args.ema_decay, args.ema_warmup) if args.ema_decay > 0 else None

    def after_step(steps: int, spent: float) -> None:
        if ema is not None:
            ema.update(model)
        if spent >= args.lr_drop_at:
            for group in optimizer.param_groups:
                group["lr"] = args.lr * args.lr_drop_factor

    model.train()
    steps = train_for(args.minutes, loader, loss_of, optimizer, params, args.clip, after_step)
    if ema is not None:
        model = ema.module
    model.eval()
    predictions, targets = [], []
    eval_config = EvalConfig(transforms=transforms)
    with torch.no_grad():
        for batch in eval_batches(test, transforms, BATCH):
            outputs = model(batch["images"], Task.DETECTION, batch["prompts"], image_mask=batch["image_mask"])
            # Only the classes BCCD annotates can be predicted on BCCD.
            outputs.logits = outputs.logits.masked_fill(~mask, float("-inf"))
            sizes = torch.stack([t["size"] for t in batch["targets"]]).float()
            for found in decode_detections(outputs, sizes, eval_config.max_detections):
                predictions.append(
                    metrics.DetectionPrediction(
                        found.boxes.numpy(), found.scores.numpy(), found.labels.numpy()
                    )
                )
            targets += targets_in_pixels(batch)
    return bccd_row({"model": f"UniHema {preset} (ours)", "steps": steps, **score(predictions, targets)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd"
    )
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each model")
    # The recipe of the latest docs/benchmarks.md table (0.824 for ``fast`` against 0.730 at 320-416 px,
    # float32, GroupNorm, 300 queries): more steps per minute, and BatchNorm learns faster from scratch.
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[256, 288, 320])
    parser.add_argument("--eval-size", type=int, default=320)
    # The demo's detection recipe: 0.730 against 0.661 at 2e-4 / 0.1 for ``fast`` (docs/benchmarks.md).
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--precision", choices=["float32", "bfloat16"], default="bfloat16",
        help="UniHema's training precision (bfloat16: CPU autocast; evaluation runs in float32)",
    )  # fmt: skip
    parser.add_argument(
        "--backbone-norm", choices=list(BACKBONE_NORMS), default="bn",
        help="UniHema's ResNet norm layers (the presets' own default from random weights is GroupNorm)",
    )  # fmt: skip
    parser.add_argument("--class-loss", choices=list(CLASS_LOSSES), default="focal")
    parser.add_argument(
        "--encoder-one-to-many", type=int, default=1,
        help="encoder proposals each target box supervises (LossConfig.encoder_one_to_many)",
    )  # fmt: skip
    parser.add_argument(
        "--ema-decay", type=float, default=0.0,
        help="evaluate a moving average of UniHema's weights with this decay (0: the last weights)",
    )  # fmt: skip
    parser.add_argument("--ema-warmup", type=float, default=100.0, help="the average's ramp, in steps")
    parser.add_argument(
        "--lr-drop-at", type=float, default=1.0,
        help="fraction of the budget after which UniHema's learning rate is multiplied by --lr-drop-factor",
    )  # fmt: skip
    parser.add_argument("--lr-drop-factor", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "fast", "faster_rcnn"], choices=["tiny", "fast", "faster_rcnn"],
        help="UniHema presets (tiny, fast) and the torchvision peer (faster_rcnn)",
    )  # fmt: skip
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: no BCCD copy at {args.data} (pass --data)", file=sys.stderr)
        return 0
    train, test = read_bccd(args.data)
    rows = []
    for name in args.models:
        if name == "faster_rcnn":
            # The plain 100-step warm-up: the recipe of the numbers recorded in docs/benchmarks.md.
            peer = train_faster_rcnn(
                train, test, BCCD_CLASSES, minutes=args.minutes, seed=args.seed,
                train_sizes=tuple(args.train_sizes), eval_size=args.eval_size, batch=BATCH, warmup_fraction=None,
            )  # fmt: skip
            rows.append(bccd_row(peer))
        else:
            rows.append(train_unihema(train, test, args, name))
        print(json.dumps(rows[-1]), flush=True)
    header = "| model | steps | mAP@0.5 | mAP@[.5:.95] | AP50 rbc | AP50 wbc | AP50 platelet |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in rows:
        per = [f"{row['AP50'].get(c, float('nan')):.3f}" for c in BCCD_CLASSES]
        lines.append(
            f"| {row['model']} | {row['steps']} | {row['mAP50']:.3f} | {row['mAP']:.3f} | "
            + " | ".join(per)
            + " |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write_doc:
        command = command_line(__file__, argv)
        section = (
            f"{SECTION_TITLE}\n\nCommand: `{command}`. {len(train)} train+val images, {len(test)} test images, "
            f"{args.minutes:g} training minutes per model (evaluation excluded), random initialisation, batch {BATCH}, "
            f"shorter side {args.train_sizes} in training and {args.eval_size} in evaluation, UniHema at "
            f"learning rate {args.lr:g} with gradient clipping {args.clip:g}, {args.precision} training, "
            f"backbone norm {args.backbone_norm}, {args.queries} queries, class loss "
            f"{args.class_loss}, encoder one-to-many {args.encoder_one_to_many}, weight average decay {args.ema_decay:g} "
            f"(ramp {args.ema_warmup:g} steps), learning rate x{args.lr_drop_factor:g} after {args.lr_drop_at:g} of "
            f"the budget. torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {platform.machine()} CPU, no other job running.\n\n{text}\n"
        )
        write_section(args.write_doc, SECTION_TITLE, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
