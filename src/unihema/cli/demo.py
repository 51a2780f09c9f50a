"""``unihema demo``: the main job on the built-in synthetic corpus (see :mod:`unihema.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="train and evaluate every task on the synthetic corpus; write a before/after report",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)"
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="training curriculum YAML (default: the packaged demo.yaml)"
    )
    parser.add_argument(
        "--eval-per-task",
        type=int,
        default=64,
        help="held-out samples evaluated per field and text task, spread over the test split (default: 64); "
        "every single-cell crop is scored",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed of the run (default: the curriculum's `seed`)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unihema.demo import format_summary, improved_everywhere, run_demo

    report = run_demo(
        args.out, config_path=args.config, eval_per_task=args.eval_per_task, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    print(format_summary(report))
    print(f"report: {args.out / 'report.md'}  model: {args.out / 'model'}")
    if not improved_everywhere(report):
        print("warning: some task did not improve over the untrained model (see report.json)")
    return 0
