"""Command-line values shared by the commands: positive integers, ``--data NAME=PATH`` and the ``--device``
to run on.

Both fail with a message naming the option and the value, so that a mistyped option ends in one line
(``unihema eval: error: argument --limit: must be a positive integer, got '-1'``), not a traceback or a
silently wrong run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from unihema.data.schema import SYNTHETIC_DATASET


def positive_int(text: str) -> int:
    """``argparse`` type of options that count things (``--limit``, ``--batch-size``): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_data_spec(value: str) -> tuple[str, str | None]:
    """``(name, path)`` of a ``--data`` value; ``path`` is ``None`` for the built-in corpus."""
    if value == SYNTHETIC_DATASET:
        return SYNTHETIC_DATASET, None
    name, separator, path = value.partition("=")
    if separator and name and path and not any(c in name for c in "/\\"):
        return name, path
    return Path(value).name or value, value


def resolve_device(value: str | None, option: str = "--device") -> Any:
    """The ``torch.device`` named by ``value`` (``None`` or ``"auto"``: CUDA when available, else CPU).

    Raises:
        ValueError: ``value`` is not a device name, or names a device this machine does not have (CUDA
            without a usable GPU, a GPU index past the last one, MPS without Apple's GPU backend).
    """
    import torch

    if value in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"{option} {value!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{option} {value}: no usable CUDA GPU on this machine (torch.cuda.is_available() is False); "
                f"use {option} cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"{option} {value}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{option} {value}: the MPS backend is not available here; use {option} cpu")
    elif device.type != "cpu":
        raise ValueError(f"{option} {value}: unsupported device type {device.type!r}; use cpu or cuda")
    return device
