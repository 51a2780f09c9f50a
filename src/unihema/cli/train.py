"""``unihema train``: run a training curriculum (all six stages, or some of them), or resume one.

Examples::

    unihema train --config src/unihema/configs/demo.yaml --out runs/demo
    unihema train --config configs/paper.yaml --stages 3-6 --out runs/paper-late
    unihema train --resume runs/demo                      # continue where it stopped
    unihema train --config my.yaml --data smears="/data/My smears" --out runs/smears
    torchrun --nproc_per_node 2 -m unihema train --config src/unihema/configs/demo.yaml --out runs/ddp

``--data NAME=PATH`` (repeatable) adds the folder PATH, in any native layout, to the configuration's
``data.folders`` under NAME (a bare PATH is named after its folder, as in ``unihema eval``), and
``--option KEY=VALUE`` (repeatable, the value is YAML) gives a reader option for those folders, over their
``unihema.yaml``, as ``unihema eval`` and ``unihema data check`` take it. The stages name NAME like any
other dataset.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from unihema.data.schema import SYNTHETIC_DATASET

if TYPE_CHECKING:
    from unihema.train.stages import TrainConfig


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
        "--data", action="append", default=[], metavar="NAME=PATH",
        help="a dataset folder in a native layout for data.folders: NAME=PATH, or a PATH (named after its "
        "folder); the stages name it NAME (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="reader option for the --data folders (repeatable; values are YAML), over their unihema.yaml",
    )  # fmt: skip
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
    config = with_folders(config, args.data, args.option)
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


def with_folders(config: TrainConfig, data: list[str], option_pairs: list[str]) -> TrainConfig:
    """``config`` with the ``--data NAME=PATH`` folders added to ``data.folders`` and the ``--option``
    reader options merged over each one's ``data.reader_options``."""
    from unihema.cli._options import parse_data_spec
    from unihema.data.formats import parse_option_pairs
    from unihema.train.stages import TrainConfig

    options = parse_option_pairs(option_pairs)
    if options and not data:
        raise ValueError("--option applies to the --data folders; give --data NAME=PATH too")
    if not data:
        return config
    folders: dict[str, str] = {}
    for value in data:
        name, path = parse_data_spec(value)
        if path is None:
            raise ValueError(
                f"--data {SYNTHETIC_DATASET}: the built-in corpus is not a folder; stages name it as is"
            )
        if name in folders and folders[name] != path:
            raise ValueError(f"--data {value}: dataset {name!r} is given twice ({folders[name]} and {path})")
        folders[name] = path
    plain = config.to_dict()
    plain["data"]["folders"] = {**plain["data"].get("folders", {}), **folders}
    if options:
        readers = plain["data"].setdefault("reader_options", {})
        for name in folders:
            readers[name] = {**readers.get(name, {}), **options}
    return TrainConfig.from_dict(plain, source="--data")
