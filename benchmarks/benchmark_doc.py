"""Pieces the benchmark scripts share: writing one section of ``docs/benchmarks.md`` (the other sections
stay as they are), the allocator option, and the CPU's matmul peak."""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from unihema.atomic import atomic_write_text
from unihema.runtime import keep_freed_memory

DOC_HEADER = "# Benchmarks\n"


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that ran ``script`` (a benchmark's ``__file__``) with ``argv`` (``None``: this process's
    arguments), as a docs section quotes it: ``python benchmarks/NAME.py ARGS``."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{Path(script).name}", *(shlex.quote(a) for a in args)])


def write_section(path: Path, title: str, section: str) -> None:
    """Replace the section starting with ``title`` up to the next ``## `` heading, or append it."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else DOC_HEADER
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text.rstrip("\n") + "\n")


def add_allocator_option(parser: argparse.ArgumentParser) -> None:
    """``--glibc-default``: measure without :func:`unihema.runtime.keep_freed_memory`."""
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's allocator as it is (default: keep_freed_memory(), as the unihema command runs; "
        "it is process-wide)",
    )


def apply_allocator(args: argparse.Namespace) -> str:
    """Apply the allocator setting ``args`` asks for; returns how a docs section names it."""
    if args.glibc_default or not keep_freed_memory():
        return "glibc's default allocator"
    return "`keep_freed_memory()` for the whole process (as the `unihema` command runs)"


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``run`` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, size: int = 4096) -> float:
    """GFLOP/s of one large square matmul in ``dtype`` (the CPU's peak, measured in the same run)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / median_seconds(lambda: a @ b, 3) / 1e9
