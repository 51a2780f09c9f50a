"""The ``unihema`` command.

Each command group lives in its own module of this package and exposes ``register(subparsers)``, which
adds its sub-command(s) and sets ``func`` on the parsed namespace. Heavy imports (torch, the model)
happen inside the command functions so that ``unihema --help`` and ``unihema data list`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from unihema.runtime import keep_freed_memory

COMMAND_MODULES = ("data", "model", "train", "evaluate", "predict", "demo", "export", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unihema", description="One model for digital hematopathology.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"unihema.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # large tensors reuse freed memory instead of faulting in fresh pages (runtime.py)
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, KeyError) as error:  # OSError: a missing file, no permission, a full disk
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"unihema: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
