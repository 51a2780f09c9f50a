"""The staged trainer in-process: freezing per stage, non-finite steps, run directory, resume guards."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from support.training import mini_config
from unihema.model.unihema import UniHema
from unihema.train.accumulation import UntrainedTaskError
from unihema.train.checkpoint import latest_checkpoint
from unihema.train.image_cache import input_keys
from unihema.train.losses import UniHemaCriterion
from unihema.train.stages import TrainConfig
from unihema.train.trainer import (
    CONFIG_SNAPSHOT,
    METRICS_FILE,
    NonFiniteLossError,
    iter_metrics,
    run_training,
)

CLS_STAGE = {"tasks": {"classification": ["synthetic"]}, "k_per_task": 2}


def _snapshot(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Parameters and buffers of every module group."""
    return {
        group: {name: t.detach().clone() for name, t in module.state_dict().items()}
        for group, module in model.module_groups().items()
    }


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [name for name in before if not torch.equal(before[name], after[name])]


def test_frozen_groups_do_not_change_during_a_stage(tmp_path: Path) -> None:
    from unihema.train.trainer import build_model

    data = mini_config(
        [
            {"name": "heads_only", **CLS_STAGE, "train": ["SCFE", "heads"], "max_steps": 2, "lr": 1e-2},
            {
                "name": "seg_qgmf",
                "tasks": {"segmentation": ["synthetic"]},
                "k_per_task": 2,
                "train": ["QGMF"],
                "max_steps": 2,
                "lr": 1e-2,
            },
        ]  # fmt: skip
    )
    # Plain batch norm in the backbone: its running statistics would move in train mode if frozen groups
    # were not switched to eval mode.
    data["model"]["overrides"]["vision"]["backbone_norm"] = "bn"
    config = TrainConfig.from_dict(data)
    torch.manual_seed(config.seed)
    initial = _snapshot(build_model(config))  # the run re-seeds identically before building its model
    model = run_training(config, tmp_path / "run", stages="1", progress=False)
    after_first = _snapshot(model)
    assert any("running_mean" in name for name in initial["B"])
    for group in ("B", "E_I", "D_I", "E_T", "D_T", "CMF", "TGVR", "QGMF"):
        assert not _changed(initial[group], after_first[group]), group
    assert _changed(initial["SCFE"], after_first["SCFE"])
    assert any("cell_class" in name for name in _changed(initial["heads"], after_first["heads"]))

    # A later stage continues from the saved result and trains only QGMF (its batch norms included).
    resumed_config = TrainConfig.from_dict(
        {
            **config.to_dict(),
            "model": {**config.to_dict()["model"], "init_from": str(tmp_path / "run" / "final")},
        }
    )
    model = run_training(resumed_config, tmp_path / "run2", stages="seg_qgmf", progress=False)
    after_second = _snapshot(model)
    for group in ("B", "E_I", "D_I", "E_T", "D_T", "CMF", "TGVR", "SCFE", "heads"):
        assert not _changed(after_first[group], after_second[group]), group
    assert _changed(after_first["QGMF"], after_second["QGMF"])


def test_a_text_memory_text_stage_trains_t5_without_reading_images(tmp_path: Path) -> None:
    from unihema.train.trainer import build_model

    stage = {"name": "t5_text", "tasks": {"vqa": ["synthetic"], "mlm": ["synthetic"]}, "k_per_task": 2,
             "train": ["E_T", "D_T"], "max_steps": 2, "lr": 1e-2, "text_memory": "text"}  # fmt: skip
    config = TrainConfig.from_dict(mini_config([stage]))
    torch.manual_seed(config.seed)
    initial = _snapshot(build_model(config))
    calls = []
    original = UniHema._features

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(UniHema, "_features", counted)
        model = run_training(config, tmp_path / "run", progress=False)
    after = _snapshot(model)
    assert not calls, "a text_memory: text stage ran the backbone"
    assert _changed(initial["E_T"], after["E_T"]) and _changed(initial["D_T"], after["D_T"])
    for group in ("B", "E_I", "CMF", "SCFE"):
        assert not _changed(initial[group], after[group]), group


def test_an_image_cache_stage_runs_the_image_path_once_per_distinct_crop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from unihema.train.trainer import build_model

    stage = {"name": "cmf", "tasks": {"vqa": ["synthetic"], "mlm": ["synthetic"]}, "k_per_task": 2,
             "train": ["CMF", "D_T"], "epochs": 2, "lr": 1e-2, "image_cache": True}  # fmt: skip
    config = TrainConfig.from_dict(mini_config([stage]))
    torch.manual_seed(config.seed)
    initial = _snapshot(build_model(config))
    seen: list[bytes] = []
    original = UniHema._features

    def counted(self, images, image_mask):
        seen.extend(input_keys(images, image_mask))
        return original(self, images, image_mask)

    with pytest.MonkeyPatch.context() as patch, caplog.at_level("INFO", logger="unihema"):
        patch.setattr(UniHema, "_features", counted)
        model = run_training(config, tmp_path / "cached", progress=False)
    after = _snapshot(model)
    [line] = [r.getMessage() for r in caplog.records if "lookups served" in r.getMessage()]
    cached, hits, lookups = map(int, re.search(r"of (\d+) inputs cached, (\d+) of (\d+)", line).groups())
    # Each distinct input went through the image path once (besides the memory probe's batch); the
    # second epoch is served from the cache, and questions about the same crop share one entry.
    assert len(set(seen)) == cached and len(seen) * 4 < lookups
    assert lookups == hits + cached and hits * 2 > lookups
    assert _changed(initial["CMF"], after["CMF"]) and _changed(initial["D_T"], after["D_T"])
    for group in ("B", "E_I", "SCFE", "E_T"):
        assert not _changed(initial[group], after[group]), group


def test_an_image_cache_serves_single_cell_crops_beside_an_uncached_task(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from unihema.train.trainer import build_model

    # The demo's step 5: SCFE and the heads fitted on a frozen backbone and encoder, beside the mask former.
    stage = {"name": "cells", "tasks": {"classification": ["synthetic"], "segmentation": ["synthetic"]},
             "mode": "joint", "k_per_task": 2, "train": ["SCFE", "QGMF", "heads"], "max_steps": 40, "lr": 1e-2,
             "image_cache": True}  # fmt: skip
    config = TrainConfig.from_dict(mini_config([stage]))
    torch.manual_seed(config.seed)
    initial = _snapshot(build_model(config))
    computed: list[bytes] = []
    served: list[bool] = []
    original_inputs, original_cell = UniHema.cell_inputs, UniHema._forward_cell

    def counted_inputs(self, images, image_mask=None):
        computed.extend(input_keys(images, image_mask))
        return original_inputs(self, images, image_mask)

    def watched_cell(self, images, image_mask, inputs=None):
        served.append(inputs is not None)
        return original_cell(self, images, image_mask, inputs)

    with pytest.MonkeyPatch.context() as patch, caplog.at_level("INFO", logger="unihema"):
        patch.setattr(UniHema, "cell_inputs", counted_inputs)
        patch.setattr(UniHema, "_forward_cell", watched_cell)
        model = run_training(config, tmp_path / "cached", progress=False)
    after = _snapshot(model)
    [line] = [r.getMessage() for r in caplog.records if "lookups served" in r.getMessage()]
    assert line.startswith("stage cells: SCFE inputs of")
    cached, hits, lookups = map(int, re.search(r"of (\d+) inputs cached, (\d+) of (\d+)", line).groups())
    # Every crop went through the backbone and encoder once; 80 draws of 40 crops repeat some.
    assert len(computed) == len(set(computed)) == cached and lookups == 80 and hits == lookups - cached > 0
    # Each of the 40 training forwards of the crops read cached inputs (the memory probe runs its own).
    assert served.count(True) == 40 and served.count(False) <= 1
    for group in ("SCFE", "QGMF", "heads"):
        assert _changed(initial[group], after[group]), group
    for group in ("B", "E_I"):
        assert not _changed(initial[group], after[group]), group


def test_a_round_robin_stage_that_outlasts_a_task_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # VQA has about twice as many samples as masked sentences, so past the mixed steps VQA trains alone.
    stage = {"name": "text", "tasks": {"vqa": ["synthetic"], "mlm": ["synthetic"]}, "k_per_task": 2,
             "train": ["D_T"], "epochs": 1, "text_memory": "text"}  # fmt: skip
    config = TrainConfig.from_dict(mini_config([stage]))
    with caplog.at_level("WARNING", logger="unihema"):
        run_training(config, tmp_path / "run", progress=False)
    warned = [r.getMessage() for r in caplog.records if "round_robin" in r.getMessage()]
    assert len(warned) == 1 and "then only vqa train" in warned[0]
    caplog.clear()
    weighted = TrainConfig.from_dict(mini_config([{**stage, "mode": "weighted"}]))
    with caplog.at_level("WARNING", logger="unihema"):
        run_training(weighted, tmp_path / "run2", progress=False)
    assert not [r for r in caplog.records if "round_robin" in r.getMessage()]


def test_backbone_layers_frozen_by_the_model_stay_frozen(tmp_path: Path) -> None:
    from unihema.train.trainer import build_model

    data = mini_config([{"name": "backbone", **CLS_STAGE, "train": ["B"], "max_steps": 2, "lr": 1e-2}])
    # As on pretrained weights: the stem and layer1 stay frozen whatever the stage trains.
    data["model"]["overrides"]["vision"]["trainable_backbone_layers"] = 3
    config = TrainConfig.from_dict(data)
    torch.manual_seed(config.seed)
    reference = build_model(config)
    kept_frozen = {n for n, p in reference.named_parameters() if not p.requires_grad}
    assert kept_frozen, "trainable_backbone_layers=3 is expected to keep the ResNet stem frozen"
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    model = run_training(config, tmp_path / "run", progress=False)
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in kept_frozen)
    assert any(
        not torch.equal(before[n], after[n])
        for n in before
        if n.startswith("backbone.") and n not in kept_frozen
    )


def test_non_finite_steps_are_skipped_then_the_run_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = UniHemaCriterion.forward
    calls = {"loss": 0, "step": 0}
    poisoned = {2, 4, 5, 6}  # step 2 alone is skipped; steps 4-6 make a streak of 3

    def flaky(self, outputs, targets, task, padded_size=None):  # type: ignore[no-untyped-def]
        calls["loss"] += 1
        losses = original(self, outputs, targets, task, padded_size)
        if calls["loss"] in poisoned:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    original_step = torch.optim.AdamW.step

    def counted_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["step"] += 1
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(UniHemaCriterion, "forward", flaky)
    monkeypatch.setattr(torch.optim.AdamW, "step", counted_step)
    config = TrainConfig.from_dict(
        mini_config(
            [{"name": "cls", **CLS_STAGE, "train": ["SCFE", "heads"], "max_steps": 8, "lr": 1e-2}],
            max_nonfinite_steps=3,
            checkpoint_every=1,
            keep_last=5,
        )  # fmt: skip
    )
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps .*checkpoints/step-00000003"):
        run_training(config, run_dir, progress=False)
    assert calls["step"] == 2  # only the finite steps 1 and 3 updated the weights
    rows = list(iter_metrics(run_dir))
    assert [int(r["skipped"]) for r in rows] == [0, 1, 0, 1, 1, 1]
    assert math.isnan(float(rows[1]["loss"])) and math.isfinite(float(rows[2]["loss"]))
    assert (run_dir / "train.log").read_text().count("step skipped") == 4
    # No checkpoint is written during a streak: the newest one is the last good state.
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == [
        "step-00000001",
        "step-00000003",
    ]
    assert latest_checkpoint(run_dir).name == "step-00000003"


def test_run_directory_contents_and_guards(tmp_path: Path) -> None:
    config = TrainConfig.from_dict(
        mini_config([{"name": "cls", **CLS_STAGE, "train": ["heads"], "max_steps": 2}], tensorboard=True)
    )
    run_dir = tmp_path / "run"
    run_training(config, run_dir, progress=False)
    for name in (
        CONFIG_SNAPSHOT,
        "run.json",
        "train.log",
        METRICS_FILE,
        "final/model.safetensors",
        "final/config.json",
    ):
        assert (run_dir / name).exists(), name
    assert any((run_dir / "tensorboard").iterdir())
    assert (run_dir / "checkpoints" / "stage-01-cls" / "training_state.pt").is_file()
    # The model folder records the run's pre-processing, so eval uses the sizes it was trained at.
    recorded = UniHema.from_pretrained(run_dir / "final").preprocessor
    assert recorded is not None and recorded.transforms.cls_size == config.data.transforms["cls_size"]
    assert recorded.pad_to_multiple == config.data.pad_to_multiple
    assert recorded.synthetic_config().image_size == (96, 96)
    assert TrainConfig.load(run_dir / CONFIG_SNAPSHOT).to_dict() == config.to_dict()
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(config, run_dir, progress=False)
    changed = TrainConfig.from_dict({**config.to_dict(), "seed": 9})
    with pytest.raises(ValueError, match="sections: seed"):
        run_training(changed, run_dir, resume=True, progress=False)


def test_bfloat16_autocast_trains_with_float32_weights(tmp_path: Path) -> None:
    stage = {
        "name": "det",
        "tasks": {"detection": ["synthetic"]},
        "k_per_task": 2,
        "train": ["D_I", "heads"],
        "max_steps": 2,
    }
    config = TrainConfig.from_dict(mini_config([stage], precision="bfloat16"))
    model = run_training(config, tmp_path / "run", progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    rows = list(iter_metrics(tmp_path / "run"))
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) and r["skipped"] == "0" for r in rows)
    assert float(rows[0]["loss_bbox"]) > 0


def test_a_task_whose_loss_reaches_no_trained_group_is_refused_by_name(tmp_path: Path) -> None:
    # Detection's box and class heads belong to D_I: a stage training only the cell heads cannot learn it.
    stage = {
        "name": "cells_only", "tasks": {"detection": ["synthetic"], "classification": ["synthetic"]},
        "mode": "joint", "k_per_task": 2, "train": ["SCFE", "heads"], "max_steps": 2,
    }  # fmt: skip
    config = TrainConfig.from_dict(mini_config([stage]))
    with pytest.raises(UntrainedTaskError, match=r"stage 'cells_only': the detection loss depends on no trained "
                       r"parameter: it trains only SCFE, heads; add the groups detection needs"):  # fmt: skip
        run_training(config, tmp_path / "run", progress=False)
    assert not list(iter_metrics(tmp_path / "run"))  # refused at its first step, before any update


def test_a_stage_ends_when_its_time_budget_is_spent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each reading of the trainer's clock is 20 s after the previous one: the first step ends 20 s into
    # the stage, so a 1-minute budget is spent after the third of the 50 allowed steps.
    ticks = iter(range(0, 10_000, 20))
    monkeypatch.setattr("unihema.train.trainer.perf_counter", lambda: float(next(ticks)))
    stages = [
        {"name": "timed", **CLS_STAGE, "train": ["heads"], "max_steps": 50, "max_minutes": 1},
        {"name": "after", **CLS_STAGE, "train": ["heads"], "max_steps": 2},
    ]
    run_dir = tmp_path / "run"
    run_training(TrainConfig.from_dict(mini_config(stages)), run_dir, progress=False)
    rows = list(iter_metrics(run_dir))
    assert [r["stage_name"] for r in rows] == ["timed"] * 3 + ["after"] * 2
    log = (run_dir / "train.log").read_text()
    assert "stage timed finished after 3 steps in 60.0 s; its 1-minute budget was spent" in log
    # The next stage starts its own clock and ends at its step limit, not at the budget it does not have.
    assert "stage after finished after 2 steps in 40.0 s\n" in log
    state = torch.load(run_dir / "checkpoints" / "stage-01-timed" / "training_state.pt", weights_only=True)
    assert state["progress"]["stage_seconds"] == 60.0  # what a resumed stage would count on from


def test_a_stage_with_a_weight_average_ends_on_the_average(tmp_path: Path) -> None:
    def final_heads(steps: int, run: str, **ema: float) -> dict[str, torch.Tensor]:
        stage = {"name": "heads", **CLS_STAGE, "train": ["heads"], "max_steps": steps, "lr": 1e-2, **ema}
        model = run_training(TrainConfig.from_dict(mini_config([stage])), tmp_path / run, progress=False)
        return {n: t.detach().clone() for n, t in model.module_groups()["heads"].state_dict().items()}

    one_step = final_heads(1, "one")
    four_steps = final_heads(4, "four")
    # A decay this close to 1, reached at once, keeps the weights of the first update (after step 1).
    averaged = final_heads(4, "averaged", ema_decay=0.999999, ema_warmup_steps=1e-6)
    moved = [n for n in one_step if not torch.allclose(one_step[n], four_steps[n])]
    assert moved, "the three later steps should move the heads"
    for name in moved:
        assert torch.allclose(averaged[name], one_step[name], atol=1e-5), name
    log = (tmp_path / "averaged" / "train.log").read_text()
    assert "stage heads ends on the moving average of its weights (decay 0.999999, 4 updates)" in log
    with pytest.raises(ValueError, match=r"stages\[0\] \(bad\)\.ema_decay"):
        TrainConfig.from_dict(mini_config([{"name": "bad", **CLS_STAGE, "train": ["heads"], "max_steps": 1,
                                            "ema_decay": 1.0}]))  # fmt: skip
