"""Exact resume: a run killed with SIGKILL after a mid-stage checkpoint and resumed ends with the same
weights, bit for bit, as the run that was never interrupted (CPU, ``num_workers: 0``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support.paths import REPO_ROOT
from support.training import mini_config, write_yaml
from unihema.train.checkpoint import LATEST_FILE, read_latest_name
from unihema.train.stages import TrainConfig
from unihema.train.trainer import iter_metrics, run_training

# Periodic checkpoints inside the second stage (global steps 4-11): the run is killed after the first of
# them it is seen to write (usually step 4; a busy machine may let it get further).
KILL_AFTER = ("step-00000004", "step-00000006", "step-00000008", "step-00000010")
POLL_SECONDS = 0.02
SUBPROCESS_TIMEOUT = 300

# The second stage averages its weights: the average must resume from the checkpoint too.
# Augmentation (flips, colour jitter) and denoising noise stay on: the resumed run must replay the same
# random draws, which only works if every RNG state was restored.
STAGES = [
    {"name": "cls", "tasks": {"classification": ["synthetic"]}, "k_per_task": 2, "train": ["B", "E_I", "SCFE", "heads"],
     "max_steps": 3, "lr": 1e-3},
    {"name": "det_seg", "tasks": {"detection": ["synthetic"], "segmentation": ["synthetic"]}, "k_per_task": 2,
     "train": ["E_I", "D_I", "TGVR", "QGMF", "heads"], "max_steps": 8, "lr": 1e-3,
     "scheduler": {"name": "cosine", "warmup_steps": 2}, "ema_decay": 0.9, "ema_warmup_steps": 2.0},
]  # fmt: skip


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _losses_by_step(run_dir: Path) -> dict[int, str]:
    # A killed run may have logged a few steps past its last checkpoint; the resumed rows come later
    # in the file and win.
    return {int(row["global_step"]): row["loss"] for row in iter_metrics(run_dir)}


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_is_bit_exact(tmp_path: Path) -> None:
    data = mini_config(STAGES, checkpoint_every=2, keep_last=2)
    config_path = write_yaml(tmp_path / "config.yaml", data)
    config = TrainConfig.load(config_path)

    reference_dir = tmp_path / "uninterrupted"
    run_training(config, reference_dir, progress=False)
    reference = _weights(reference_dir)

    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "unihema", "train", "--config", str(config_path), "--out", str(run_dir), "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    try:
        while read_latest_name(run_dir) not in KILL_AFTER:
            if process.poll() is not None:
                pytest.fail(
                    f"training exited ({process.returncode}) before a mid-stage checkpoint: {process.stderr.read().decode()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no mid-stage checkpoint within {SUBPROCESS_TIMEOUT} s")
            time.sleep(POLL_SECONDS)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "final").exists(), "the run finished before it was killed; the test proves nothing"

    run_training(TrainConfig.load(run_dir / "config.yaml"), run_dir, resume=True, progress=False)
    _assert_same_weights(reference, _weights(run_dir))
    assert _losses_by_step(run_dir) == _losses_by_step(reference_dir)

    # Resuming from a stage-end checkpoint (the next stage starts from its saved RNG state) is exact too.
    boundary_dir = tmp_path / "boundary"
    shutil.copytree(reference_dir, boundary_dir)
    shutil.rmtree(boundary_dir / "final")
    for path in (boundary_dir / "checkpoints").iterdir():
        if path.is_dir() and path.name != "stage-01-cls":
            shutil.rmtree(path)
    (boundary_dir / "checkpoints" / LATEST_FILE).write_text("stage-01-cls\n")
    run_training(config, boundary_dir, resume=True, progress=False)
    _assert_same_weights(reference, _weights(boundary_dir))
