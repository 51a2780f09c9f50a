"""Training that fits the machine: the memory estimate at a stage's start refuses a stage that cannot fit
(naming the stage, the batch and the memory) before its first step, ``micro_batch: auto`` splits by the
memory, the estimate leaves the run unchanged, and data workers are capped by the CPU cores. The machine is
a :class:`~unihema.train.resources.Machine` with fixed answers, not the real one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support.training import mini_config
from unihema.data.schema import Task
from unihema.train.data import CorpusCache, stage_samples
from unihema.train.memory import InsufficientMemoryError, plan_memory
from unihema.train.optim import apply_freezing
from unihema.train.resources import Machine, available_memory, usable_cores, worker_count
from unihema.train.stages import TrainConfig
from unihema.train.trainer import METRICS_FILE, build_model, iter_metrics, run_training

CPU = torch.device("cpu")
CLS_STAGE = {
    "name": "step1_cell_classification", "tasks": {"classification": ["synthetic"]}, "k_per_task": 8,
    "train": ["B", "E_I", "SCFE", "heads"], "max_steps": 1,
}  # fmt: skip


def _machine(available: int | None, cores: int = 4) -> Machine:
    return Machine(cores=lambda: cores, available_memory=lambda device: available, local_processes=lambda: 1)


def _config(**stage: object) -> TrainConfig:
    return TrainConfig.from_dict(mini_config([{**CLS_STAGE, **stage}]))


def _gigabytes(text: str) -> float:
    return float(text) * 1e9


def _plan(config: TrainConfig, available: int):  # type: ignore[no-untyped-def]
    """The memory plan of the config's first stage, as the trainer makes it."""
    torch.manual_seed(config.seed)
    model = build_model(config)
    stage = config.stages[0]
    apply_freezing(model, stage, {n for n, p in model.named_parameters() if p.requires_grad})
    samples = stage_samples(CorpusCache(config), stage)
    return plan_memory(model, config, stage, samples, CPU, _machine(available))


def test_a_stage_that_cannot_fit_stops_before_its_first_step(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(InsufficientMemoryError) as error:
        run_training(_config(), run_dir, progress=False, machine=_machine(20 * 10**6))
    message = str(error.value)
    match = re.fullmatch(
        r"stage step1_cell_classification: 8 classification images of 32x32 per step need about ([\d.]+) GB, "
        r"([\d.]+) GB are available \(([\d.]+) GB usable at runtime\.memory_fraction 0\.8\); "
        r"set micro_batch or k_per_task",
        message,
    )
    assert match, message
    need, available, usable = (_gigabytes(v) for v in match.groups())
    assert available == 20 * 10**6 and need > usable
    # Refused at the stage start: no step ran, nothing was checkpointed.
    assert list(iter_metrics(run_dir)) == [] and (run_dir / METRICS_FILE).is_file()
    assert not (run_dir / "checkpoints").exists()


def test_auto_micro_batch_takes_the_largest_pass_that_fits(tmp_path: Path) -> None:
    config = _config(micro_batch="auto")
    measured = _plan(config, 10**12)
    assert measured.micro_batch == {Task.CLASSIFICATION: 8}  # plenty of memory: the whole batch at once
    per_image = measured.footprints[Task.CLASSIFICATION].bytes_per_image
    assert per_image > 0 and measured.fixed_bytes > 0
    available = int((measured.fixed_bytes + 3.5 * per_image) / config.runtime.memory_fraction)
    assert _plan(config, available).micro_batch == {Task.CLASSIFICATION: 3}

    run_dir = tmp_path / "run"
    run_training(config, run_dir, progress=False, machine=_machine(available))
    log = (run_dir / "train.log").read_text()
    assert (
        "stage step1_cell_classification: 8 classification images per step in 3 micro-batches of at most 3"
        in log
    )
    assert len(list(iter_metrics(run_dir))) == 1

    with pytest.raises(
        InsufficientMemoryError, match=r"even a pass of 1 classification image of 32x32 would need"
    ):
        run_training(config, tmp_path / "tiny", progress=False, machine=_machine(measured.fixed_bytes))
    with pytest.raises(
        InsufficientMemoryError, match=r"micro-batches of 4 classification images .*smaller micro_batch"
    ):
        run_training(_config(micro_batch=4), tmp_path / "fixed", progress=False, machine=_machine(available))


def test_the_memory_check_can_be_turned_off_and_an_unknown_amount_skips_it(tmp_path: Path) -> None:
    data = mini_config([CLS_STAGE], check_memory=False)
    run_training(TrainConfig.from_dict(data), tmp_path / "off", progress=False, machine=_machine(1))
    run_training(_config(), tmp_path / "unknown", progress=False, machine=_machine(None))
    assert "available memory unknown" in (tmp_path / "unknown" / "train.log").read_text()
    with pytest.raises(InsufficientMemoryError, match="micro_batch: auto needs the available memory"):
        run_training(_config(micro_batch="auto"), tmp_path / "auto", progress=False, machine=_machine(None))


def test_the_estimate_leaves_the_run_unchanged(tmp_path: Path) -> None:
    # Batch norm statistics, denoising noise and augmentation: the probe forward must not move any of them.
    stage = {
        "name": "det", "tasks": {"detection": ["synthetic"], "classification": ["synthetic"]}, "k_per_task": 2,
        "train": ["B", "E_I", "D_I", "SCFE", "heads"], "max_steps": 2,
    }  # fmt: skip
    weights = []
    for name, check in (("checked", True), ("unchecked", False)):
        data = mini_config([stage], check_memory=check)
        data["model"]["overrides"]["vision"]["backbone_norm"] = "bn"
        run_training(TrainConfig.from_dict(data), tmp_path / name, progress=False, machine=_machine(10**12))
        weights.append(load_file(tmp_path / name / "final" / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert "per pass" in (tmp_path / "checked" / "train.log").read_text()


def test_worker_counts_are_capped_by_the_cores() -> None:
    two_cores = _machine(None, cores=2)
    count, reason = worker_count(8, True, two_cores)
    assert count == 1
    assert reason == (
        "data.num_workers 8 capped to 1: this process may run on 2 CPU cores (os.sched_getaffinity) and the "
        "training process needs one of them; set data.cap_workers: false to start 8"
    )
    assert worker_count(1, True, two_cores) == (1, None)
    assert worker_count(0, True, _machine(None, cores=1)) == (0, None)
    count, reason = worker_count(8, False, two_cores)
    assert count == 8 and "kept (data.cap_workers: false)" in reason
    shared = Machine(cores=lambda: 8, local_processes=lambda: 2)
    count, reason = worker_count(8, True, shared)
    assert count == 3 and "8 CPU cores shared by 2 training processes" in reason
    assert usable_cores() >= 1
    assert (available_memory(CPU) or 1) > 0


def test_the_trainer_caps_its_workers_and_logs_why(tmp_path: Path) -> None:
    data = mini_config([{**CLS_STAGE, "k_per_task": 2}])
    data["data"]["num_workers"] = 3
    config = TrainConfig.from_dict(data)
    run_training(config, tmp_path / "run", progress=False, machine=_machine(10**12, cores=1))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "data.num_workers 3 capped to 0: this process may run on 1 CPU core (os.sched_getaffinity)" in log
    data["data"]["cap_workers"] = "yes"
    with pytest.raises(ValueError, match=r"data\.cap_workers must be true or false"):
        TrainConfig.from_dict(data)
