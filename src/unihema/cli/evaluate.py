"""``unihema eval``: evaluate a saved model on datasets and tasks; print the numbers or write a report.

Examples::

    unihema eval --model runs/demo/final                          # the built-in corpus recorded in the model
    unihema eval --model runs/demo/final --data ../shared/datasets/bccd --json
    unihema eval --model runs/paper/final --data segmentation_wbc --data pbc   # staged catalog datasets
    unihema eval --model runs/paper/final --data synthetic --data bccd=../shared/datasets/bccd \\
        --data pbc=../shared/datasets/pbc --task detection --task classification --task probe \\
        --out reports/paper

A bare catalog NAME (``unihema data list``) that is not a folder here reads the staged dataset as training
reads it: with the catalog's reader and options (segmentation_wbc's cell classes, bccd_nucleus_masks'
images in the bccd folder), unless its ``unihema.yaml``, ``--format`` or ``--option`` choose otherwise.
A NAME=PATH folder is read with the reader its layout shows, as ``unihema data check`` reads it.

``--out DIR`` writes a Table 1 / Table 2 style report (``report.md``, ``report.csv``, ``report.json`` and
``plots/``, see :mod:`unihema.evaluate.tables`); datasets the model folder's training record does not list
are marked unseen. A seen dataset without a split of its own is split as training split it (the recorded
split settings and split overrides), so only its held-out samples are scored; an unseen one is scored whole.

``--split`` must name a split (``train``, ``val``, ``test``, or one the dataset's samples carry): any other
name is an error listing the splits present. A detection or FoV-morphology task whose samples hold no box
annotation at all is not scored (its mAP would be 0.0 for want of annotations, not for the model's sake):
it is named on stderr, and when nothing else is left the command fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from unihema.cli._options import parse_data_spec, positive_int, resolve_device
from unihema.data.schema import SPLITS, SYNTHETIC_DATASET, Task

PROBE_CHOICE = "probe"
TASK_CHOICES: tuple[str, ...] = tuple(task.value for task in Task)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a saved model on datasets and tasks; write a Table 1 / Table 2 style report",
        description="Evaluate a saved model on any mix of datasets and tasks. Without --out the numbers are "
        "printed; with --out a report (Markdown, CSV, JSON and plots) is written, datasets not seen in "
        "training (per the model folder's training record) marked unseen. Unreadable samples are named and "
        "skipped.",
    )
    parser.add_argument("--model", required=True, type=Path, help="folder written by save_pretrained")
    parser.add_argument(
        "--data", action="append", metavar="NAME=PATH",
        help=f"a dataset: NAME=PATH (a folder in a native format), a PATH (named after its folder), the "
        f"NAME of a staged catalog dataset (read from $UNIHEMA_DATASETS or ../shared/datasets as training "
        f"reads it) or {SYNTHETIC_DATASET!r} (the built-in corpus the model folder records); repeat for "
        f"several (default: {SYNTHETIC_DATASET})",
    )  # fmt: skip
    parser.add_argument("--format", help="dataset format of the folders (detected per folder when omitted)")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="reader option for the dataset folders (repeatable; values are YAML), over their unihema.yaml",
    )  # fmt: skip
    parser.add_argument("--split", default="test", help="which split to evaluate (default: test)")
    parser.add_argument(
        "--task", action="append", choices=(*TASK_CHOICES, PROBE_CHOICE),
        help="task(s) to evaluate (default: every task present); 'probe' runs the DinoBloom single-cell "
        "probe on the classification crops of every split",
    )  # fmt: skip
    parser.add_argument(
        "--limit", type=positive_int, default=None,
        help="evaluate at most this many samples per task (the probe: per split), evenly spread over the "
        "dataset's samples",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument(
        "--any-class", action="store_true",
        help="single-cell classification predicts any class of the vocabulary, not only the classes the "
        "dataset labels (its crops of every split)",
    )  # fmt: skip
    parser.add_argument(
        "--max-detections", type=positive_int, default=None, help="detections kept per image (3000)"
    )
    parser.add_argument(
        "--score-threshold", type=float, default=None,
        help="operating score threshold of the model's cells for FoV morphology (default 0.3)",
    )  # fmt: skip
    parser.add_argument(
        "--probe-backbone", action="store_true",
        help="probe: concatenate the mean-pooled backbone features to the SCFE features",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="write the report into this folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _probe_subset(samples: list[Any], limit: int | None) -> list[Any]:
    from unihema.evaluate.suite import spread_subset

    by_split: dict[Any, list[Any]] = {}
    for sample in samples:
        by_split.setdefault(sample.split, []).append(sample)
    return [s for split_samples in by_split.values() for s in spread_subset(split_samples, limit)]


def _check_split(split: str, name: str, present: list[str]) -> None:
    """``ValueError`` listing the splits present when ``split`` is neither a split name nor one of them."""
    if split not in SPLITS and split not in present:
        listed = (
            ", ".join(present) if present else f"none (unsplit samples are scored under {', '.join(SPLITS)})"
        )
        raise ValueError(f"--split {split!r}: no such split in {name}; its splits: {listed}")


def _load(name: str, path: str | None, args: argparse.Namespace, preprocessor: Any, record: Any, wanted: Any):
    """One :class:`~unihema.evaluate.suite.EvalDataset` (tasks not filtered or limited yet) and the splits
    its samples carry."""
    from unihema.evaluate.suite import EvalDataset, seen_in_training

    seen = seen_in_training(record, name)
    trained = list(record["datasets"].get(name, [])) if record is not None else []
    probe = PROBE_CHOICE in wanted
    if path is None:
        from unihema.data.synthetic import SyntheticConfig, SyntheticCorpus

        # The corpus the model was trained on, when its folder records one.
        recorded = None if preprocessor is None else preprocessor.synthetic_config()
        corpus = SyntheticCorpus(recorded or SyntheticConfig())
        _check_split(args.split, name, list(SPLITS))
        grouped = {task: corpus.samples(task, args.split) for task in Task if task.value in wanted}
        every_crop = corpus.samples(Task.CLASSIFICATION, None)
        dataset = EvalDataset(name, grouped, every_crop if probe else [], seen, "built-in synthetic corpus", [],
                              trained, _cell_classes(every_crop, args))  # fmt: skip
        return dataset, list(SPLITS)
    from unihema.data.formats import parse_option_pairs, read_dataset

    root, default_format, default_options = _folder_of(name, path)
    # The folder's unihema.yaml (if any) gives its format and reader options; --option overrides them.
    # Samples are named after NAME, as training names them, so both hash the same splits.
    result = read_dataset(
        root, args.format, parse_option_pairs(args.option or []), dataset=name,
        default_format=default_format, default_options=default_options,
    )  # fmt: skip
    samples = result.samples
    if seen:
        samples = _training_splits(samples, name, record)
    present = sorted({s.split for s in samples if s.split is not None})
    _check_split(args.split, name, present)
    grouped: dict[Task, list[Any]] = {}
    for sample in samples:
        if sample.split in (args.split, None) and sample.task.value in wanted:
            grouped.setdefault(sample.task, []).append(sample)
    every_crop = [s for s in samples if s.task is Task.CLASSIFICATION]
    skipped = [{"sample": item.path, "reason": item.reason} for item in result.skipped]
    dataset = EvalDataset(name, grouped, every_crop if probe else [], seen, str(root), skipped, trained,
                          _cell_classes(every_crop, args))  # fmt: skip
    return dataset, present


def _cell_classes(crops: Any, args: argparse.Namespace) -> tuple[int, ...]:
    """The classes a dataset's crops of every split carry, which classification predicts among (none with
    ``--any-class``)."""
    from unihema.evaluate.suite import labelled_cell_classes

    return () if args.any_class else labelled_cell_classes(crops)


def _folder_of(name: str, path: str) -> tuple[Path, str | None, dict[str, Any] | None]:
    """The folder of a ``--data`` value and the reader and options to fall back on. A bare name that is no
    folder but a staged catalog dataset reads that dataset under the datasets root as training reads it
    (the catalog's reader and options, unless the folder's ``unihema.yaml``, ``--format`` or ``--option``
    say otherwise); any other value is a folder, read with the reader its layout shows."""
    root = Path(path)
    if root.is_dir():
        return root, None, None
    if path == name:
        from unihema.data.catalog import get_dataset
        from unihema.train.data import DATASETS_ENV, datasets_root

        try:
            entry = get_dataset(name)
        except KeyError:
            entry = None
        if entry is not None and entry.kind == "staged" and entry.reader is not None:
            folder = datasets_root(None) / entry.name
            if folder.is_dir():
                return folder, entry.reader, dict(entry.options)
            raise FileNotFoundError(
                f"{name}: not a folder here, and the staged dataset of that name is not under {folder.parent} "
                f"(set ${DATASETS_ENV} to the folder of the staged datasets, or pass NAME=PATH)"
            )
    raise FileNotFoundError(f"{root}: dataset folder not found")


def _training_splits(samples: list[Any], name: str, record: dict[str, Any]) -> list[Any]:
    """``samples`` of the seen dataset ``name`` with the splits training gave them, so that only held-out
    ones count: the recorded hash split for those without a split of their own, then the record's
    ``split_overrides`` (hash-split images that another dataset of the run publishes in another split, e.g.
    for training). A record without overrides (older runs) leaves the hash splits as they are."""
    import dataclasses

    from unihema.data.splits import SplitConfig, assign_splits, is_hash_split

    samples = assign_splits(samples, SplitConfig(**record.get("splits", {})))
    overrides = record.get("split_overrides", {}).get(name, {})
    return [
        dataclasses.replace(s, split=overrides[s.sample_id])
        if is_hash_split(s) and s.sample_id in overrides
        else s
        for s in samples
    ]


def _datasets(args: argparse.Namespace, preprocessor: Any, record: Any) -> list[Any]:
    from unihema.evaluate.suite import spread_subset

    wanted = set(args.task) if args.task else set(TASK_CHOICES)
    datasets = []
    unscored: list[str] = []
    for value in args.data or [SYNTHETIC_DATASET]:
        dataset, present = _load(*parse_data_spec(value), args, preprocessor, record, wanted)
        if args.limit is not None:
            # Spread over the split: class-folder datasets list their samples class by class.
            dataset.samples = {
                task: spread_subset(samples, args.limit) for task, samples in dataset.samples.items()
            }
            dataset.probe_samples = _probe_subset(dataset.probe_samples, args.limit)
        dataset.samples = {task: samples for task, samples in dataset.samples.items() if samples}
        for task in [t for t, samples in dataset.samples.items() if t.has_boxes and not _any_box(samples)]:
            count = len(dataset.samples.pop(task))
            unscored.append(
                f"{dataset.name} {task.value}: none of its {count} samples holds a box annotation, so its mAP "
                "would say nothing about the model; not evaluated (are the annotations missing?)"
            )
            print(f"unihema eval: {unscored[-1]}", file=sys.stderr)
        if dataset.samples or dataset.probe_samples:
            datasets.append(dataset)
        else:
            splits = ", ".join(present) if present else "none"
            message = (
                f"{dataset.name}: no samples of split {args.split!r} for the requested task(s) "
                f"(its splits: {splits})"
            )
            print(f"unihema eval: {message}", file=sys.stderr)
    if not datasets:
        if unscored:
            raise ValueError(f"nothing to evaluate: {unscored[0]}")
        names = ", ".join(args.data or [SYNTHETIC_DATASET])
        raise ValueError(f"no samples of split {args.split!r} for the requested task(s) in {names}")
    return datasets


def _any_box(samples: list[Any]) -> bool:
    return any(len(sample.box_labels) for sample in samples)


def _command(args: argparse.Namespace) -> str:
    parts = ["unihema eval --model", str(args.model)]
    parts += [f"--data {value}" for value in args.data or []]
    parts += [f"--task {task}" for task in args.task or []]
    parts += [f"--split {args.split}"] + ([f"--limit {args.limit}"] if args.limit is not None else [])
    parts += ["--any-class"] if args.any_class else []
    return " ".join(parts + ([f"--out {args.out}"] if args.out else []))


def run(args: argparse.Namespace) -> int:
    import torch

    from unihema.data.formats._common import canonical_split
    from unihema.evaluate.evaluator import EvalConfig
    from unihema.evaluate.probe import ProbeConfig
    from unihema.evaluate.suite import evaluate_datasets, read_training_record
    from unihema.model.unihema import UniHema

    started = time.perf_counter()
    device = resolve_device(args.device)
    args.split = canonical_split(args.split) or args.split  # "valid" and "testing" name val and test
    model = UniHema.from_pretrained(args.model).to(device)
    # Input sizes and padding the model was trained with (preprocessor_config.json), else the defaults.
    preprocessor = model.preprocessor
    recorded = (
        {}
        if preprocessor is None
        else {"transforms": preprocessor.transforms, "pad_to_multiple": preprocessor.pad_to_multiple}
    )
    chosen = {"max_detections": args.max_detections, "score_threshold": args.score_threshold}
    config = EvalConfig(
        batch_size=args.batch_size, **recorded, **{k: v for k, v in chosen.items() if v is not None}
    )
    probe_config = ProbeConfig(
        batch_size=args.batch_size, with_backbone=args.probe_backbone, test_split=args.split,
        transforms=config.transforms, pad_to_multiple=config.pad_to_multiple,
    )  # fmt: skip
    record = read_training_record(args.model)
    datasets = _datasets(args, preprocessor, record)
    results = evaluate_datasets(model, datasets, config, probe_config, progress=not args.no_progress)
    for result in results:
        for key, task_result in result.results.items():
            for item in task_result.skipped:
                print(f"unihema eval: skipped {item['sample']} ({key}): {item['reason']}", file=sys.stderr)
        for key, why in result.failed.items():
            print(f"unihema eval: {result.dataset.name} {key} not evaluated: {why}", file=sys.stderr)
    if args.out is not None:
        from unihema.evaluate.tables import write_evaluation_report

        meta = {
            "command": _command(args), "model": str(args.model), "model_preset": model.config.preset,
            "split": args.split, "device": str(device),
            "training_record": "found" if record is not None else "none (seen/unseen not known)",
            "max_detections": config.max_detections, "score_threshold": config.score_threshold,
            "seconds": round(time.perf_counter() - started, 1), "torch_threads": torch.get_num_threads(),
        }  # fmt: skip
        paths = write_evaluation_report(args.out, results, meta)
        print(f"report: {paths['markdown']}", file=sys.stderr if args.json else sys.stdout)
    rows = {
        result.dataset.name: {
            key: {"metric": r.metric, "value": r.value, "details": r.details}
            for key, r in result.results.items()
        }
        for result in results
    }
    single = len(rows) == 1
    if args.json:
        json.dump(next(iter(rows.values())) if single else rows, sys.stdout, indent=2, default=float)
        print()
    else:
        for name, tasks in rows.items():
            for task, row in tasks.items():
                prefix = "" if single else f"{name:20s} "
                print(f"{prefix}{task:16s} {row['metric']:14s} {row['value']:.4f}")
    return 0
