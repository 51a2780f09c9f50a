"""Gradient accumulation: a task batch run in micro-batches gives the gradient and losses of the whole batch,
for every loss normaliser (boxes, known cell classes, known values per attribute, tokens, images)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from support.training import MINI_DATA, MINI_MODEL, mini_config
from unihema.data.loader import build_loader
from unihema.data.schema import UNKNOWN, Task
from unihema.data.synthetic import SyntheticConfig, SyntheticCorpus
from unihema.data.transforms import TransformConfig
from unihema.model.unihema import UniHema
from unihema.train.accumulation import accumulate_gradients, split_batch
from unihema.train.losses import UniHemaCriterion
from unihema.train.stages import TrainConfig
from unihema.train.trainer import iter_metrics, run_training

BATCH = 4
# Relative to the largest gradient. Float32 rounding of single-image passes reaches 2.4e-5 on the stem
# convolution of the FoV-attribute path (deformable attention sums its levels one at a time; every pixel
# of every image feeds that gradient): in float32 a micro-batched gradient agrees to a few 1e-5 at
# best. A wrong loss normaliser is off by a factor of the batch split, 1e-1 and more.
GRAD_ATOL = 3e-5
# Float sums are grouped differently (per pass, then across passes), and each AdamW step amplifies that a
# little: the trajectories of a whole-batch and a micro-batched run agree to rounding.
LOSS_RTOL = 1e-4


def _model() -> UniHema:
    overrides = copy.deepcopy(MINI_MODEL["overrides"])
    # Denoising queries are drawn per forward (see unihema.train.accumulation): the one term that differs.
    overrides["denoising"] = {"enabled": False}
    overrides["text"]["dropout_rate"] = 0.0
    torch.manual_seed(0)
    model = UniHema.from_preset("tiny", **overrides)
    model.train()
    return model


def _batch(task: Task) -> dict:
    corpus = SyntheticCorpus(SyntheticConfig(**{**MINI_DATA["synthetic"], "n_images": 4}))
    sizes = {k: tuple(v) if isinstance(v, list) else v for k, v in MINI_DATA["transforms"].items()}
    # 64 px single-cell inputs: at 32 px the last ResNet level is 1x1, where group normalisation is so
    # ill-conditioned that float32 rounding alone changes some gradients by 1e-4 (in float64 they agree).
    transforms = TransformConfig(**{**sizes, "cls_size": 64, "text_size": 64})
    loader = build_loader(
        corpus.samples(task), task, BATCH, train=False, transform_config=transforms, pad_to_multiple=32
    )
    batch = next(iter(loader))
    if task is Task.CELL_MORPHOLOGY:
        # Attributes known for some cells only: each attribute has its own count of known values.
        batch["targets"][0]["cell_attributes"][:6] = UNKNOWN
        batch["targets"][2]["cell_attributes"][4:] = UNKNOWN
    if task is Task.CLASSIFICATION:
        batch["targets"][1]["cell_class"] = torch.tensor(UNKNOWN)
    return batch


def _gradients(model: UniHema, batch: dict, micro_batch: int) -> tuple[dict[str, torch.Tensor], dict]:
    model.zero_grad(set_to_none=True)
    # oneDNN's CPU convolutions pick their algorithm by batch shape, and their float32 rounding then moves
    # some backbone gradients of single-image passes by up to 1e-3 relative (in float64 every pass size
    # agrees to 1e-16); PyTorch's own kernels let the check see the normalisation at float32 precision.
    with torch.backends.mkldnn.flags(enabled=False):
        losses = accumulate_gradients(model, UniHemaCriterion(), batch, micro_batch)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, losses


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # emitted by mkldnn.flags()
@pytest.mark.parametrize(
    "task",
    [
        Task.DETECTION,
        Task.FOV_MORPHOLOGY,
        Task.CLASSIFICATION,
        Task.CELL_MORPHOLOGY,
        Task.SEGMENTATION,
        Task.VQA,
    ],
)
def test_micro_batches_give_the_gradient_of_the_whole_batch(task: Task) -> None:
    model, batch = _model(), _batch(task)
    assert batch["images"].shape[0] == BATCH
    whole, whole_losses = _gradients(model, batch, BATCH)
    assert whole and any(float(g.abs().sum()) > 0 for g in whole.values())
    for micro_batch in (1, 3):  # equal passes, and a shorter last pass
        assert len(split_batch(batch, micro_batch)) == -(-BATCH // micro_batch)
        grads, losses = _gradients(model, batch, micro_batch)
        assert grads.keys() == whole.keys()
        worst = max(float((grads[n] - whole[n]).abs().max()) for n in whole)
        scale = max(float(g.abs().max()) for g in whole.values())
        assert worst <= GRAD_ATOL * max(1.0, scale), (
            f"micro_batch {micro_batch}: max gradient difference {worst}"
        )
        assert losses.keys() == whole_losses.keys()
        for name, value in whole_losses.items():
            assert float(losses[name]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), name


def _joint_stage(**changes: object) -> dict:
    stage = {
        "name": "joint", "tasks": {"detection": ["synthetic"], "classification": ["synthetic"]}, "mode": "joint",
        "k_per_task": 4, "train": ["B", "E_I", "D_I", "SCFE", "heads"], "max_steps": 3, "lr": 1e-3,
    }  # fmt: skip
    data = mini_config([{**stage, **changes}])
    data["model"]["overrides"]["denoising"] = {"enabled": False}
    return data


def test_a_micro_batched_run_follows_the_whole_batch_run_and_says_so(tmp_path: Path) -> None:
    whole_dir, micro_dir = tmp_path / "whole", tmp_path / "micro"
    run_training(TrainConfig.from_dict(_joint_stage()), whole_dir, progress=False)
    run_training(TrainConfig.from_dict(_joint_stage(micro_batch=3)), micro_dir, progress=False)
    log = (micro_dir / "train.log").read_text()
    assert "stage joint: 4 detection images per step in 2 micro-batches of at most 3" in log
    assert "stage joint: 4 classification images per step in 2 micro-batches of at most 3" in log
    assert "in one pass" in (whole_dir / "train.log").read_text()
    losses = [[float(row["loss"]) for row in iter_metrics(d)] for d in (whole_dir, micro_dir)]
    assert len(losses[0]) == 3 and losses[1] == pytest.approx(losses[0], rel=LOSS_RTOL)


def test_micro_batch_is_validated() -> None:
    for bad in (0, -2, "half", 1.5):
        with pytest.raises(
            ValueError, match=r"stages\[0\] \(joint\)\.micro_batch must be a positive integer"
        ):
            TrainConfig.from_dict(_joint_stage(micro_batch=bad))
    assert TrainConfig.from_dict(_joint_stage(micro_batch="auto")).stages[0].micro_batch == "auto"
