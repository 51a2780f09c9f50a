"""``unihema train``: run a training curriculum (all six stages, or some of them), or resume one.

Examples::

    unihema train --config src/unihema/configs/demo.yaml --out runs/demo
    unihema train --config configs/paper.yaml --stages 3-6 --out runs/paper-late
    unihema train --resume runs/demo                      # continue where it stopped
    torchrun --nproc_per_node 2 -m unihema train --config src/unihema/configs/demo.yaml --out runs/ddp
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train UniHema through its curriculum (YAML config), or resume a run",
        description="Train UniHema through the stages of a YAML curriculum. Each stage starts from the "
        "previous stage's weights. A run directory receives the config snapshot, train.log, metrics.csv, "
        "tensorboard/, checkpoints/ and final/ (the trained model). Under torchrun the run is data-parallel.",
    )
    parser.add_argument("--config", type=Path, help="training configuration (YAML); optional with --resume")
    parser.add_argument(
        "--stages", default=None,
        help="stages to run: 1-based numbers or ranges ('3-6', '1,3') or stage names (default: all)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="run directory to create (default: runs/<config name>)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest checkpoint",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logs still go to train.log)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unihema.train.stages import TrainConfig
    from unihema.train.trainer import CONFIG_SNAPSHOT, NonFiniteLossError, run_training

    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise ValueError(
                "--out and --resume name different run directories; --resume continues RUN_DIR in place"
            )
        run_dir = args.resume
        snapshot = run_dir / CONFIG_SNAPSHOT
        if not snapshot.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no {CONFIG_SNAPSHOT} (is this a run directory?)")
        config = TrainConfig.load(args.config if args.config is not None else snapshot)
    else:
        if args.config is None:
            raise ValueError("--config is required (unless --resume RUN_DIR)")
        config = TrainConfig.load(args.config)
        run_dir = args.out if args.out is not None else Path("runs") / args.config.stem
    try:
        run_training(
            config, run_dir, stages=args.stages, resume=args.resume is not None, progress=not args.no_progress
        )
    except FileExistsError as error:
        print(f"unihema: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"unihema: error: {error}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained model: {run_dir / 'final'}")
    return 0
