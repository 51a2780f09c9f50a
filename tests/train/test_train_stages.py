"""Curriculum configuration: YAML loading, validation messages, stage selection, schedules, shipped configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from support.paths import REPO_ROOT, dataset_path
from support.testers import small_test_config
from support.training import mini_config, write_yaml
from unihema.data.schema import Task
from unihema.model.configuration import MODULE_GROUPS
from unihema.model.unihema import UniHema
from unihema.train.optim import build_optimizer
from unihema.train.stages import SchedulerConfig, TrainConfig, TrainConfigError

STAGE = {"name": "s1", "tasks": {"classification": ["synthetic"]}, "train": ["heads"], "max_steps": 2}


def _with_stage(**changes: object) -> dict:
    return mini_config([{**STAGE, **changes}])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": -1}, r"stages\[0\] \(s1\)\.lr must be a number > 0, got -1"),
        ({"train": ["B", "decoder"]}, r"stages\[0\] \(s1\)\.train has unknown module group 'decoder'"),
        (
            {"tasks": {"detektion": ["synthetic"]}},
            r"stages\[0\] \(s1\)\.tasks\.detektion names an unknown task",
        ),
        ({"mode": "zip"}, r"stages\[0\] \(s1\)\.mode must be one of"),
        ({"max_steps": None}, r"stages\[0\] \(s1\) needs epochs or max_steps"),
        ({"max_minutes": 0}, r"stages\[0\] \(s1\)\.max_minutes must be a number > 0 or null, got 0"),
        ({"k_per_task": {"detection": 2}}, r"k_per_task has no batch size for \['classification'\]"),
        ({"scheduler": {"name": "poly"}}, r"stages\[0\] \(s1\)\.scheduler\.name must be one of"),
        ({"warmup": 3}, r"stages\[0\] \(s1\)\.warmup is not a known field"),
        ({"tasks": {"detection": {"bccd": 1.0}, "fov_morphology": {"bccd": 2.0}}}, r"weight differs"),
        ({"text_memory": "image"}, r"stages\[0\] \(s1\)\.text_memory must be one of \('fused', 'text'\)"),
        (
            {"text_memory": "text"},
            r"text_memory applies to vqa and mlm only; the stage also has \['classification'\]",
        ),
        ({"image_cache": "yes"}, r"stages\[0\] \(s1\)\.image_cache must be true or false"),
        (
            {"image_cache": True, "tasks": {"detection": ["synthetic"]}},
            r"image_cache applies to vqa, mlm, classification and cell_morphology; the stage has only "
            r"\['detection'\]",
        ),
        (
            {"image_cache": True, "tasks": {"vqa": ["synthetic"]}, "train": ["E_T", "SCFE"]},
            r"image_cache needs the image path of \['vqa'\] frozen \(B, E_I, SCFE\), but the stage trains "
            r"\['SCFE'\]",
        ),
        (  # single-cell crops may train SCFE over a cache, not the encoder it reads
            {"image_cache": True, "train": ["SCFE", "E_I", "heads"]},
            r"image_cache needs the image path of \['classification'\] frozen \(B, E_I\), but the stage "
            r"trains \['E_I'\]",
        ),
        (  # with a text task in the stage, SCFE (which feeds CMF) must stay frozen too
            {
                "image_cache": True,
                "tasks": {"classification": ["synthetic"], "vqa": ["synthetic"]},
                "train": ["SCFE", "D_T"],
            },
            r"image_cache needs the image path of \['classification', 'vqa'\] frozen \(B, E_I, SCFE\)",
        ),  # fmt: skip
        (
            {"image_cache": True, "tasks": {"vqa": ["synthetic"]}, "train": ["D_T"], "text_memory": "text"},
            r"image_cache caches the image path, which text_memory='text' does not run",
        ),
    ],
)
def test_invalid_stage_fields_are_named(changes: dict, message: str, tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", _with_stage(**changes))
    with pytest.raises(TrainConfigError, match=message) as error:
        TrainConfig.load(path)
    assert str(path) in str(error.value)


def test_invalid_top_level_fields_are_named() -> None:
    data = _with_stage()
    data["runtime"]["precision"] = "float16"
    with pytest.raises(TrainConfigError, match=r"runtime\.precision must be one of"):
        TrainConfig.from_dict(data)
    data = _with_stage()
    data["optimizer"] = {}
    with pytest.raises(TrainConfigError, match="optimizer is not a known section"):
        TrainConfig.from_dict(data)
    data = _with_stage()
    data["data"]["transforms"] = {"seg_size": 0}
    with pytest.raises(TrainConfigError, match=r"data\.transforms.*seg_size"):
        TrainConfig.from_dict(data)
    data = mini_config([STAGE, STAGE])
    with pytest.raises(TrainConfigError, match=r"stages\[1\] \(s1\)\.name is used by two stages"):
        TrainConfig.from_dict(data)


def test_round_trip_and_derived_fields() -> None:
    data = mini_config(
        [
            {
                **STAGE,
                "tasks": {"detection": {"synthetic": 1.0, "bccd": 3.0}},
                "k_per_task": {"detection": 4},
            },
            {"name": "s2", "tasks": {"vqa": "synthetic"}, "train": "all", "epochs": 1.5},
        ]
    )
    config = TrainConfig.from_dict(data)
    assert TrainConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    first, second = config.stages
    assert first.tasks == {Task.DETECTION: {"synthetic": 1.0, "bccd": 3.0}}
    assert first.k_of(Task.DETECTION) == 4
    assert first.dataset_weights() == {"synthetic": 1.0, "bccd": 3.0}
    assert first.frozen_groups == tuple(g for g in MODULE_GROUPS if g != "heads")
    assert second.trainable_groups == MODULE_GROUPS and second.dataset_weights() is None


def test_stage_selection() -> None:
    config = TrainConfig.from_dict(mini_config([{**STAGE, "name": f"s{i}"} for i in range(1, 7)]))
    assert config.select_stages(None) == [0, 1, 2, 3, 4, 5]
    assert config.select_stages("3-6") == [2, 3, 4, 5]
    assert config.select_stages("1,3") == [0, 2]
    assert config.select_stages("s2,5") == [1, 4]
    with pytest.raises(TrainConfigError, match="outside 1-6"):
        config.select_stages("5-7")
    with pytest.raises(TrainConfigError, match="neither a stage number"):
        config.select_stages("last")


def test_schedules() -> None:
    step = SchedulerConfig(name="step", step_epochs=2, gamma=0.1)
    assert [step.factor(s, 100, 10) for s in (0, 19, 20, 40)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    cosine = SchedulerConfig(name="cosine", warmup_steps=4, min_lr_scale=0.1)
    assert cosine.factor(0, 104, 10) == pytest.approx(0.25)
    assert cosine.factor(4, 104, 10) == pytest.approx(1.0)
    assert cosine.factor(54, 104, 10) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine.factor(104, 104, 10) == pytest.approx(0.1)
    assert SchedulerConfig(name="constant").factor(1000, 10, 1) == 1.0


@pytest.mark.parametrize("path", ["configs/paper.yaml", "src/unihema/configs/demo.yaml"])
def test_shipped_configs_load(path: str) -> None:
    config = TrainConfig.load(REPO_ROOT / path)
    assert len(config.stages) == 6
    # The paper's freezing: step 3 trains the vision side only, step 6 only CMF and D_T.
    step3, step6 = config.stages[2], config.stages[5]
    assert step3.mode == "joint"
    if path == "configs/paper.yaml":
        assert step3.k_per_task == 2  # two images per task per step (section 4.2)
    assert {"E_T", "D_T", "CMF"} <= set(step3.frozen_groups)
    assert set(step6.trainable_groups) == {"CMF", "D_T"}


@pytest.mark.realdata
def test_paper_config_reads_real_datasets_with_partial_class_masks() -> None:
    from unihema.data.vocab import DETECTION_CLASSES
    from unihema.train.trainer import CorpusCache, stage_samples

    root = dataset_path("bccd").parent
    dataset_path("fiocruz_malaria_thick")
    data = TrainConfig.load(REPO_ROOT / "configs" / "paper.yaml").to_dict()
    data["data"]["root"] = str(root)
    data["stages"] = [
        {**data["stages"][3], "tasks": {"detection": {"bccd": 1.0, "fiocruz_malaria_thick": 1.0}}}
    ]
    cache = CorpusCache(TrainConfig.from_dict(data))
    samples = stage_samples(cache, cache.config.stages[0])[Task.DETECTION]
    assert {s.dataset for s in samples} == {"bccd", "fiocruz_malaria_thick"}
    assert all(s.split == "train" for s in samples)

    def names(dataset: str) -> set[str]:
        mask = cache.class_mask(dataset, Task.DETECTION)
        return {DETECTION_CLASSES[i] for i in mask.nonzero().flatten().tolist()}

    assert names("bccd") == {"rbc", "wbc", "platelet"}
    assert names("fiocruz_malaria_thick") == {"p. falciparum", "p. vivax"}


def test_optimizer_groups_and_fused_update_match_plain_adamw() -> None:
    """The backbone group learns at ``lr * backbone_lr_scale``; the fused AdamW kernel used on CPU gives
    the per-tensor AdamW update."""
    data = mini_config([{**STAGE, "train": "all", "lr": 1e-3, "backbone_lr_scale": 0.1}])
    stage = TrainConfig.from_dict(data).stages[0]
    torch.manual_seed(0)
    model = UniHema.from_config(small_test_config())
    optimizer = build_optimizer(model, stage)
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("main", 1e-3), ("backbone", 1e-4)]
    assert all(g["fused"] for g in optimizer.param_groups)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    reference = [p.detach().clone().requires_grad_(True) for p in params]
    plain = torch.optim.AdamW(
        [{"params": reference[: len(optimizer.param_groups[0]["params"])], "lr": 1e-3},
         {"params": reference[len(optimizer.param_groups[0]["params"]) :], "lr": 1e-4}],
        betas=stage.betas, weight_decay=stage.weight_decay, foreach=False,
    )  # fmt: skip
    before = [p.detach().clone() for p in params]
    for p, r in zip(params, reference):
        p.grad = torch.randn_like(p)
        r.grad = p.grad.clone()
    optimizer.step()
    plain.step()
    for p, r in zip(params, reference):
        torch.testing.assert_close(p, r, atol=1e-6, rtol=1e-5)
    assert all(not torch.equal(p, b) for p, b in zip(params, before))
