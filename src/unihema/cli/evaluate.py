"""``unihema eval``: evaluate a saved model on a dataset folder or on the synthetic corpus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from unihema.data.schema import SYNTHETIC_DATASET


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a saved model, one metric per task")
    parser.add_argument("--model", required=True, type=Path, help="folder written by save_pretrained")
    parser.add_argument(
        "--data", default=SYNTHETIC_DATASET,
        help=f"a dataset folder in a native format, or {SYNTHETIC_DATASET!r} for the built-in corpus (default)",
    )  # fmt: skip
    parser.add_argument("--format", help="dataset format (detected when omitted)")
    parser.add_argument("--split", default="test", help="which split to evaluate (default: test)")
    parser.add_argument("--task", action="append", help="task(s) to evaluate (default: every task present)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many samples per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def _samples_by_task(args: argparse.Namespace, preprocessor: Any = None) -> dict:
    from unihema.data.schema import Task

    if args.data == SYNTHETIC_DATASET:
        from unihema.data.synthetic import SyntheticConfig, SyntheticCorpus

        # The corpus the model was trained on, when its folder records one.
        recorded = None if preprocessor is None else preprocessor.synthetic_config()
        corpus = SyntheticCorpus(recorded or SyntheticConfig())
        grouped = {task: corpus.samples(task, args.split) for task in Task}
    else:
        from unihema.data.formats import detect_format, get_reader

        root = Path(args.data)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset folder not found")
        result = get_reader(args.format or detect_format(root)).read(root)
        grouped = {}
        for sample in result.samples:
            if sample.split in (args.split, None):
                grouped.setdefault(sample.task, []).append(sample)
    if args.task:
        wanted = {Task(name) for name in args.task}
        grouped = {task: samples for task, samples in grouped.items() if task in wanted}
    if args.limit is not None:
        grouped = {task: samples[: args.limit] for task, samples in grouped.items()}
    grouped = {task: samples for task, samples in grouped.items() if samples}
    if not grouped:
        raise ValueError(f"no samples of split {args.split!r} for the requested task(s) in {args.data}")
    return grouped


def run(args: argparse.Namespace) -> int:
    import torch

    from unihema.evaluate.evaluator import EvalConfig, evaluate
    from unihema.model.unihema import UniHema

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = UniHema.from_pretrained(args.model).to(device)
    # Input sizes and padding the model was trained with (preprocessor_config.json), else the defaults.
    preprocessor = model.preprocessor
    recorded = (
        {}
        if preprocessor is None
        else {"transforms": preprocessor.transforms, "pad_to_multiple": preprocessor.pad_to_multiple}
    )
    config = EvalConfig(batch_size=args.batch_size, **recorded)
    results = evaluate(model, _samples_by_task(args, preprocessor), config)
    rows = {
        task.value: {"metric": r.metric, "value": r.value, "details": r.details}
        for task, r in results.items()
    }
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=float)
        print()
    else:
        for task, row in rows.items():
            print(f"{task:16s} {row['metric']:14s} {row['value']:.4f}")
    return 0
