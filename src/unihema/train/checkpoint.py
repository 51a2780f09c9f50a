"""Training checkpoints: written atomically, the last K kept, enough state to resume a run exactly.

A run directory looks like::

    RUN_DIR/
      config.yaml            the TrainConfig snapshot the run was started with
      run.json               which stages the run covers
      train.log              human-readable log (rank 0)
      metrics.csv            one row per logged step (rank 0)
      tensorboard/           TensorBoard event files (rank 0)
      checkpoints/
        step-00000120/       a periodic checkpoint (the last `keep_last` are kept)
        stage-01-step1_cls/  the result of a finished stage (always kept)
          model/               ``UniHema.save_pretrained`` output (config + safetensors weights)
          training_state.pt    optimiser, scheduler, sampler, RNG states and the progress record
        latest               name of the newest complete checkpoint

``training_state.pt`` holds only tensors and plain containers (dicts, lists, tuples, strings, numbers):
the RNG states are stored as tensors and numbers (:func:`rng_state`), and the file is read with
``torch.load(weights_only=True)``, which refuses anything else without running it. A run directory someone
else wrote therefore cannot make ``--resume`` execute code: a file holding other objects is refused with
:class:`UnsafeCheckpointError`, a truncated or corrupt one with :class:`CheckpointError`, both naming it.

Each checkpoint is written into a temporary folder inside ``checkpoints/`` and renamed into place once
complete, and ``latest`` is replaced atomically afterwards: a process killed at any moment leaves either
the previous or the new checkpoint, never a half-written one that ``latest`` points to.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unihema.atomic import atomic_write_text

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
MODEL_DIR = "model"
STATE_FILE = "training_state.pt"
STATE_VERSION = 2
"""Version 2: every state is tensors and plain containers (version 1 pickled NumPy objects)."""
_ZIP_MAGIC = b"PK\x03\x04"
_STEP_PATTERN = re.compile(r"step-(\d+)")
_TMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (truncated, corrupt, of another version); names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A training state holding objects other than tensors and plain containers (it is not unpickled)."""


@dataclass
class Progress:
    """Where a run stands.

    Attributes:
        stage_index: index (in the configuration's stage list) of the stage in progress or just finished.
        stage_name: its name.
        stage_step: optimiser steps done in that stage (skipped non-finite steps included).
        global_step: optimiser steps done over the whole run.
        epoch: current epoch of the stage's sampler.
        batch_in_epoch: batches of that epoch already consumed.
        stage_done: True once the stage finished (resume then starts the next selected stage).
        nonfinite_streak: consecutive skipped steps at the time of the checkpoint.
        completed_stages: names of the stages finished so far.
        stage_seconds: wall-clock seconds the stage in progress has trained (its ``max_minutes`` budget).
    """

    stage_index: int = 0
    stage_name: str = ""
    stage_step: int = 0
    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    stage_done: bool = False
    nonfinite_streak: int = 0
    completed_stages: list[str] = field(default_factory=list)
    stage_seconds: float = 0.0


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) generator states, as tensors and numbers (so
    that a checkpoint holding them loads with ``weights_only=True``)."""
    version, words, gauss = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(
        (numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
         numpy["cached_gaussian"])
    )  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def step_checkpoint_name(global_step: int) -> str:
    return f"step-{global_step:08d}"


def stage_checkpoint_name(stage_index: int, stage_name: str) -> str:
    return f"stage-{stage_index + 1:02d}-{stage_name}"


def save_checkpoint(
    run_dir: Path,
    name: str,
    model: torch.nn.Module,
    training_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write checkpoint ``name`` atomically, point ``latest`` at it and prune old step checkpoints.

    Args:
        run_dir: the run directory.
        name: folder name (:func:`step_checkpoint_name` or :func:`stage_checkpoint_name`).
        model: the (unwrapped) model; saved with its ``save_pretrained``.
        training_state: optimiser/scheduler/sampler/RNG states and ``progress`` (a :class:`Progress` dict).
        keep_last: step checkpoints to keep (stage checkpoints are never pruned).
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{_TMP_PREFIX}{name}-"))
    try:
        model.save_pretrained(tmp / MODEL_DIR)
        torch.save({"version": STATE_VERSION, **training_state}, tmp / STATE_FILE)
        _fsync_tree(tmp)
        if final.exists():  # a re-run of the same step after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST_FILE, name + "\n")
    prune_checkpoints(run_dir, keep_last)
    return final


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest step checkpoints and any leftover temporary folders."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return
    latest = read_latest_name(run_dir)
    steps = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_PATTERN.fullmatch(p.name))
    )
    for _, path in steps[: max(0, len(steps) - keep_last)]:
        if path.name != latest:
            shutil.rmtree(path, ignore_errors=True)
    for path in root.iterdir():
        if path.name.startswith(_TMP_PREFIX):
            shutil.rmtree(path, ignore_errors=True)


def read_latest_name(run_dir: Path) -> str | None:
    path = checkpoint_root(run_dir) / LATEST_FILE
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    name = read_latest_name(run_dir)
    if name is None:
        return None
    path = checkpoint_root(run_dir) / name
    if not (path / STATE_FILE).is_file() or not (path / MODEL_DIR).is_dir():
        raise FileNotFoundError(
            f"{run_dir}: checkpoint {name!r} named by {LATEST_FILE} is incomplete or missing"
        )
    return path


def load_training_state(checkpoint: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The training state of a checkpoint, read with ``torch.load(weights_only=True)``: nothing in the
    file can run code. Raises :class:`UnsafeCheckpointError` for a file holding other objects (or that is
    not a PyTorch archive at all) and :class:`CheckpointError` for a truncated or corrupt one or another
    version; both name the file."""
    path = Path(checkpoint) / STATE_FILE
    restart = "restart the run, or resume from an earlier checkpoint (edit checkpoints/latest)"
    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        if not head:
            raise CheckpointError(f"{path}: the training state is empty (truncated); {restart}")
        raise UnsafeCheckpointError(
            f"{path}: refused: not a training state written by unihema (not a PyTorch archive; a bare "
            f"pickle could run code when loaded). Nothing in it was read or run; {restart}"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: the training state is truncated or corrupt; {restart}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise UnsafeCheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain containers ({detail}); "
            "loading them could run code, so nothing in it was run. Training states of format version "
            f"{STATE_VERSION} hold none (version 1 pickled NumPy objects); {restart}"
        ) from None
    except (RuntimeError, EOFError, KeyError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read the training state ({error}); {restart}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        version = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: unsupported training-state version {version!r} (expected {STATE_VERSION}); {restart}"
        )
    return state


def progress_from_state(state: dict[str, Any]) -> Progress:
    return Progress(**state["progress"])


def progress_to_state(progress: Progress) -> dict[str, Any]:
    return asdict(progress)
