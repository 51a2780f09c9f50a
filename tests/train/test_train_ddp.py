"""Data-parallel training on CPU (gloo, 2 processes): ranks stay identical, and the loss trajectory matches
one process that sees the same global batch."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from support.training import mini_config
from unihema.train.stages import TrainConfig
from unihema.train.trainer import iter_metrics, run_training

WORLD_SIZE = 2
GLOBAL_BATCH = 4
# Float sums are grouped differently (per rank, then across ranks), so the trajectories agree to rounding,
# amplified a little by each optimiser step.
LOSS_RTOL = 1e-4

# Augmentation, denoising noise and dropout are off so that both runs see exactly the same inputs; every step
# stays inside the first epoch (an epoch's last batch is padded per rank). Detection batches also exercise
# the box-count normaliser that is summed across ranks.
STAGES = [
    {"name": "visual", "tasks": {"detection": ["synthetic"], "segmentation": ["synthetic"], "classification": ["synthetic"]},
     "train": ["E_I", "D_I", "TGVR", "SCFE", "QGMF", "heads"], "max_steps": 6, "lr": 1e-3, "mode": "round_robin"},
    {"name": "joint", "tasks": {"detection": ["synthetic"], "classification": ["synthetic"]},
     "train": ["B", "D_I", "heads"], "max_steps": 2, "lr": 1e-3, "mode": "joint"},
]  # fmt: skip


def _config(k_per_task: int) -> dict:
    stages = copy.deepcopy(STAGES)
    for stage in stages:
        stage["k_per_task"] = k_per_task
    data = mini_config(stages)
    data["model"]["overrides"]["denoising"] = {"enabled": False}
    data["model"]["overrides"]["text"]["dropout_rate"] = 0.0
    # 96 px detection inputs: a per-rank batch of one image still has more than one value per channel on
    # the coarsest (stride 64) level, which group normalisation needs in training mode.
    data["data"]["transforms"].update(det_train_sizes=[96], det_eval_size=96, seg_size=96)
    data["data"]["transforms"].update(
        hflip_prob=0.0, vflip_prob=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0
    )
    return data


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, config_data: dict, run_dir: str, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    model = run_training(TrainConfig.from_dict(config_data), Path(run_dir), progress=False)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(out_dir) / f"rank{rank}.pt")


def _losses(run_dir: Path) -> list[float]:
    return [float(row["loss"]) for row in iter_metrics(run_dir)]


@pytest.mark.slow
def test_two_gloo_ranks_match_each_other_and_a_single_process(tmp_path: Path) -> None:
    single_dir = tmp_path / "single"
    run_training(TrainConfig.from_dict(_config(GLOBAL_BATCH)), single_dir, progress=False)

    ddp_dir = tmp_path / "ddp"
    mp.spawn(
        _worker, args=(_config(GLOBAL_BATCH // WORLD_SIZE), str(ddp_dir), _free_port(), str(tmp_path)),
        nprocs=WORLD_SIZE, join=True,
    )  # fmt: skip

    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks diverged"

    single, ddp = _losses(single_dir), _losses(ddp_dir)
    assert len(single) == len(ddp) == 8
    assert ddp == pytest.approx(single, rel=LOSS_RTOL)
    # Only rank 0 wrote the run directory's files.
    assert (ddp_dir / "final" / "model.safetensors").is_file()
    assert len(list(iter_metrics(ddp_dir))) == 8
