"""No code runs from a file: a training state holds only tensors and plain containers and is read with
``torch.load(weights_only=True)``; a crafted pickle in a run directory is refused (naming the file) without
running anything, a truncated state names its path, and ``src/`` never unpickles."""

from __future__ import annotations

import ast
import pathlib
import pickle
from pathlib import Path

import pytest
import torch

from support.paths import REPO_ROOT
from support.training import mini_config
from unihema.cli import main
from unihema.train.checkpoint import (
    STATE_FILE,
    CheckpointError,
    UnsafeCheckpointError,
    latest_checkpoint,
    load_training_state,
)
from unihema.train.stages import TrainConfig
from unihema.train.trainer import run_training

STAGE = {
    "name": "cls",
    "tasks": {"classification": ["synthetic"]},
    "k_per_task": 2,
    "train": ["heads"],
    "max_steps": 2,
}


class _TouchOnLoad:
    """Unpickling this creates ``marker``: what a crafted training state would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "run"
    run_training(TrainConfig.from_dict(mini_config([STAGE], checkpoint_every=1)), run_dir, progress=False)
    return run_dir


def _copy_of(run_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "final")
    state = latest_checkpoint(copy) / STATE_FILE
    return copy, state


def test_the_training_state_holds_only_tensors_and_plain_containers(finished_run: Path) -> None:
    path = latest_checkpoint(finished_run) / STATE_FILE
    state = torch.load(path, weights_only=True)  # would raise on any other object
    assert {"optimizer", "scheduler", "sampler", "rng", "progress", "world_size", "version"} <= state.keys()
    assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)
    assert load_training_state(path.parent)["progress"]["stage_done"] is True


@pytest.mark.parametrize("form", ["torch_archive", "bare_pickle"])
def test_a_crafted_pickle_is_refused_and_runs_nothing(
    finished_run: Path, tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The payload works: unpickling it the usual way creates its marker.
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_TouchOnLoad(control)))
    assert control.exists()

    run_dir, state = _copy_of(finished_run, tmp_path)
    marker = tmp_path / "marker"
    payload = {"version": 2, "optimizer": _TouchOnLoad(marker)}
    if form == "torch_archive":
        torch.save(payload, state)
    else:
        state.write_bytes(pickle.dumps(payload))
    config = TrainConfig.load(run_dir / "config.yaml")
    with pytest.raises(UnsafeCheckpointError, match="refused") as error:
        run_training(config, run_dir, resume=True, progress=False)
    assert str(state) in str(error.value) and "nothing in it was" in str(error.value).lower()
    assert not marker.exists()
    # The command line says the same and exits with an error status.
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) != 0
    assert str(state) in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_training_state_names_its_path(finished_run: Path, tmp_path: Path, keep: float) -> None:
    run_dir, state = _copy_of(finished_run, tmp_path)
    data = state.read_bytes()
    state.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated") as error:
        run_training(TrainConfig.load(run_dir / "config.yaml"), run_dir, resume=True, progress=False)
    assert str(state) in str(error.value)
    assert not isinstance(error.value, UnsafeCheckpointError)


def _unpickling_calls(path: Path) -> list[str]:
    """``torch.load`` calls without ``weights_only=True`` and any ``pickle``/``dill`` load, in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        safe = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        if owner == "torch" and node.func.attr == "load" and not safe:
            found.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
        if owner in ("pickle", "dill", "cloudpickle") and node.func.attr in ("load", "loads", "Unpickler"):
            found.append(f"{path}:{node.lineno}: {owner}.{node.func.attr}")
    return found


def test_nothing_in_src_unpickles() -> None:
    offenders = [hit for path in sorted((REPO_ROOT / "src").rglob("*.py")) for hit in _unpickling_calls(path)]
    assert not offenders, offenders
