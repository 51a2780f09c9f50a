"""Writes one benchmark's section into ``docs/benchmarks.md``, leaving the other sections as they are."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from unihema.atomic import atomic_write_text

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
