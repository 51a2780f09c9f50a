"""Training on a dataset folder of one's own (``data.folders`` / ``unihema train --data NAME=PATH``): the
folder is read in its native layout like ``unihema data check`` reads it, trained on, and the saved model
evaluates on the same folder with ``unihema eval --data NAME=PATH``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.native_layouts import COLOUR_MAP, colour_mask_fixture, voc_fixture
from support.training import mini_config, write_yaml
from unihema.cli import main
from unihema.data.formats import WrongFormatError
from unihema.data.schema import Task
from unihema.train.data import CorpusCache, stage_samples
from unihema.train.stages import TrainConfig, TrainConfigError
from unihema.train.trainer import iter_metrics

pytestmark = pytest.mark.filterwarnings("ignore::unihema.data.formats._common.ReaderWarning")

# With these splits each fixture's three readable samples split into two for training and one for test.
SPLITS = {"val_fraction": 0.0, "test_fraction": 0.3, "seed": 4}


def _stage(task: str, dataset: str, train: list[str]) -> dict[str, Any]:
    return {
        "name": f"own_{task}",
        "tasks": {task: [dataset]},
        "train": train,
        "k_per_task": 2,
        "max_steps": 2,
    }


def _config(stage: dict[str, Any], **folders: Path) -> dict[str, Any]:
    data = mini_config([stage])
    data["data"]["splits"] = dict(SPLITS)
    data["data"]["folders"] = {name: str(path) for name, path in folders.items()}
    return data


def _colour_mask_set(root: Path) -> Path:
    """The colour TIFF masks with the descriptor that makes white their background."""
    colour_mask_fixture(root)
    (root / "unihema.yaml").write_text(yaml.safe_dump({"options": {"colour_map": COLOUR_MAP}}))
    return root


LAYOUTS = {
    # name: (fixture, task, trained module groups, what the log says matched)
    "smears": (voc_fixture, "detection", ["D_I", "SCFE", "heads"], "voc reader (detected: 5 XML files"),
    "wbc": (_colour_mask_set, "segmentation", ["QGMF"], "masks reader (detected, options of "),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_train_then_eval_on_a_native_layout_folder(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture, task, groups, matched = LAYOUTS[name]
    # The folder's own name differs from the dataset's: both commands must name (and split) by the dataset.
    root = fixture(tmp_path / f"My {name} export")
    config_path = write_yaml(tmp_path / "train.yaml", _config(_stage(task, name, groups)))
    run_dir = tmp_path / "run"
    args = ["train", "--config", str(config_path), "--data", f"{name}={root}", "--out", str(run_dir)]
    assert main([*args, "--no-progress"]) == 0

    log = (run_dir / "train.log").read_text()
    assert f"read {name} from {root} with the {matched}" in log
    assert ": 3 samples (1 skipped" in log
    assert f"samples per task {{'{task}': 2}}" in log  # the folder's two training samples
    rows = list(iter_metrics(run_dir))
    assert len(rows) == 2 and all(row["tasks"] == task and math.isfinite(float(row["loss"])) for row in rows)
    assert TrainConfig.load(run_dir / "config.yaml").data.folders == {name: str(root)}
    record = json.loads((run_dir / "final" / "training_record.json").read_text())
    assert record["datasets"] == {name: [task]}
    capsys.readouterr()

    report = tmp_path / "report"
    evaluate = ["eval", "--model", str(run_dir / "final"), "--data", f"{name}={root}", "--task", task]
    assert main([*evaluate, "--out", str(report), "--device", "cpu", "--no-progress"]) == 0
    dataset = json.loads((report / "report.json").read_text())["datasets"][name]
    assert dataset["seen"] is True and dataset["source"] == str(root)
    assert [entry["samples"] for entry in dataset["tasks"].values()] == [1]  # its held-out test sample


def test_a_folder_wins_over_the_catalog_entry_of_the_same_name(tmp_path: Path) -> None:
    """``bccd`` is a catalog entry read as VOC; listed under data.folders it is that folder, read as masks."""
    root = _colour_mask_set(tmp_path / "masks")
    config = TrainConfig.from_dict(_config(_stage("segmentation", "bccd", ["QGMF"]), bccd=root))
    cache = CorpusCache(config)
    assert cache.real_dataset_names() == ["bccd"]
    samples = stage_samples(cache, config.stages[0])[Task.SEGMENTATION]
    assert samples and {s.dataset for s in samples} == {"bccd"}
    assert all(Path(s.image.path).is_relative_to(root) for s in samples)


def test_folder_errors_name_the_field_and_the_folder(tmp_path: Path) -> None:
    stage = _stage("detection", "smears", ["heads"])
    missing = tmp_path / "no such set"
    config = TrainConfig.from_dict(_config(stage, smears=missing))
    with pytest.raises(
        FileNotFoundError, match=r"data\.folders\.smears: dataset folder .*no such set not found"
    ):
        stage_samples(CorpusCache(config), config.stages[0])

    unreadable = tmp_path / "notes"
    unreadable.mkdir()
    (unreadable / "readme.txt").write_text("nothing to train on\n")
    config = TrainConfig.from_dict(_config(stage, smears=unreadable))
    with pytest.raises(WrongFormatError) as error:
        stage_samples(CorpusCache(config), config.stages[0])
    message = str(error.value)
    assert message.startswith(
        f"dataset 'smears' (data.folders.smears): {unreadable}: no known dataset format"
    )
    assert "expected one of voc: XML files" in message

    empty_voc = voc_fixture(tmp_path / "aliens")
    for xml in (empty_voc / "XML Files").iterdir():
        xml.write_text(
            xml.read_text().replace("RBC", "Alien").replace("WBC", "Alien").replace("Platelets", "Alien")
        )
    config = TrainConfig.from_dict(_config(stage, smears=empty_voc))
    with pytest.raises(
        ValueError, match=r"data\.folders\.smears\): the voc reader \(detected: .*found no samples"
    ):
        stage_samples(CorpusCache(config), config.stages[0])


def test_folders_are_validated_when_the_config_loads(tmp_path: Path) -> None:
    stage = _stage("detection", "smears", ["heads"])
    bad = [
        ({"synthetic": str(tmp_path)}, r"data\.folders\.synthetic is the name of the built-in corpus"),
        ({"smears": ""}, r"data\.folders\.smears must be a dataset folder path"),
        ({"smears": 3}, r"data\.folders\.smears must be a dataset folder path"),
    ]
    for folders, message in bad:
        data = mini_config([stage])
        data["data"]["folders"] = folders
        with pytest.raises(TrainConfigError, match=message):
            TrainConfig.from_dict(data)
    data = mini_config([stage])
    data["data"]["folders"] = {"smears": str(tmp_path)}
    data["data"]["manifests"] = {"smears": str(tmp_path / "manifest.jsonl")}
    with pytest.raises(TrainConfigError, match=r"data\.folders\.smears is also listed under data\.manifests"):
        TrainConfig.from_dict(data)


def test_train_cli_data_and_option_fill_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from unihema.cli.train import with_folders

    config = TrainConfig.from_dict(_config(_stage("segmentation", "wbc", ["QGMF"])))
    colour_map = json.dumps(COLOUR_MAP)
    changed = with_folders(config, [f"wbc={tmp_path}"], [f"colour_map={colour_map}", "foreground=[nucleus]"])
    assert changed.data.folders == {"wbc": str(tmp_path)}
    assert changed.data.reader_options == {"wbc": {"colour_map": COLOUR_MAP, "foreground": ["nucleus"]}}
    assert with_folders(config, [str(tmp_path / "My set")], []).data.folders == {
        "My set": str(tmp_path / "My set")
    }
    for data, options, message in (
        ([], ["mapping=cell"], "--option applies to the --data folders"),
        (["synthetic"], [], "--data synthetic: the built-in corpus is not a folder"),
        ([f"wbc={tmp_path}", "wbc=/elsewhere"], [], "dataset 'wbc' is given twice"),
        ([f"wbc={tmp_path}"], ["mapping"], "expected key=value"),
    ):
        with pytest.raises(ValueError, match=message):
            with_folders(config, data, options)
    config_path = write_yaml(tmp_path / "train.yaml", config.to_dict())
    assert main(["train", "--config", str(config_path), "--option", "mapping=cell"]) == 2
    assert "--option applies to the --data folders" in capsys.readouterr().err
