"""``unihema eval`` on a saved model and a real dataset folder."""

import json
import re

import pytest

from support.paths import dataset_path
from support.testers import small_test_config
from unihema.cli import main  # noqa: E402
from unihema.data.catalog import get_dataset, staged_datasets
from unihema.data.formats.base import get_reader
from unihema.data.schema import Task
from unihema.model.unihema import UniHema  # noqa: E402


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    UniHema.from_config(small_test_config()).save_pretrained(directory)
    return directory


def test_eval_on_a_class_folder_dataset(saved_model, capsys):
    root = dataset_path("bccd_wbc_crops")
    args = ["eval", "--model", str(saved_model), "--data", str(root), "--split", "test", "--limit", "3"]
    assert main([*args, "--json", "--batch-size", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert list(rows) == ["classification"]
    entry = rows["classification"]
    assert entry["metric"] == "F1_weighted" and 0.0 <= entry["value"] <= 1.0
    assert set(entry["details"]) == {
        "f1_weighted",
        "f1_macro",
        "accuracy",
        "accuracy_any_class",
        "classes_scored",
    }
    assert entry["details"]["classes_scored"] == 5  # the white-cell classes of its folders


def test_eval_errors_name_the_problem(saved_model, tmp_path, capsys):
    assert main(["eval", "--model", str(saved_model), "--data", str(tmp_path / "missing")]) == 2
    assert "missing: dataset folder not found" in capsys.readouterr().err


def test_eval_uses_the_preprocessing_the_model_was_trained_with(tmp_path, monkeypatch):
    from unihema.data.transforms import TransformConfig
    from unihema.evaluate import evaluator
    from unihema.inference.preprocessor import PREPROCESSOR_NAME, PreprocessorConfig

    model = UniHema.from_config(small_test_config())
    model.preprocessor = PreprocessorConfig(
        transforms=TransformConfig(det_train_sizes=(96,), det_eval_size=96, det_max_size=120, cls_size=48),
        pad_to_multiple=16,
        synthetic={"n_images": 20, "image_size": 96, "rbc_radius": 6.0, "crop_size": 16},
    )
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / PREPROCESSOR_NAME).read_text())
    assert saved["transforms"]["det_eval_size"] == 96 and saved["synthetic"]["image_size"] == 96
    reloaded = UniHema.from_pretrained(tmp_path)
    assert reloaded.preprocessor == model.preprocessor

    seen = {}

    def capture(model, samples_by_task, config=None, progress=None):
        seen["config"], seen["samples"] = config, samples_by_task
        return {}

    monkeypatch.setattr(evaluator, "evaluate", capture)
    assert main(["eval", "--model", str(tmp_path), "--task", "detection", "--json"]) == 0
    assert seen["config"].transforms.det_eval_size == 96 and seen["config"].pad_to_multiple == 16
    # The synthetic corpus is the recorded one (96 px fields), not the 256 px default.
    (sample,) = seen["samples"].values()
    assert sample[0].image_size == (96, 96)


def test_a_broken_preprocessor_config_is_named(tmp_path):
    from unihema.inference.preprocessor import PREPROCESSOR_NAME

    UniHema.from_config(small_test_config()).save_pretrained(tmp_path)
    (tmp_path / PREPROCESSOR_NAME).write_text('{"transforms": {"det_eval_size": -3}}')
    with pytest.raises(ValueError, match=r"preprocessor_config.json: .*det_eval_size"):
        UniHema.from_pretrained(tmp_path)
    (tmp_path / PREPROCESSOR_NAME).write_text('{"transforms": {"zoom": 2}}')
    with pytest.raises(ValueError, match="transforms.zoom is not a TransformConfig field"):
        UniHema.from_pretrained(tmp_path)


def _class_folders(root):
    """A tiny class-folder dataset: 4 crops of 2 classes, one truncated (fails when decoded) and one file
    that is no image at all (skipped by the reader)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("neutrophil", "lymphocyte"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                root / name / f"{name}_{i}.png"
            )
    truncated = root / "lymphocyte" / "lymphocyte_0.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    (root / "lymphocyte" / "garbage.png").write_bytes(b"no image")
    return root


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """``unihema eval`` on the built-in corpus (recorded as trained on) and an unseen folder."""
    from unihema.data.transforms import TransformConfig
    from unihema.inference.preprocessor import PreprocessorConfig
    from unihema.train.history import TRAINING_RECORD

    base = tmp_path_factory.mktemp("report")
    model_dir = base / "model"
    model = UniHema.from_config(small_test_config())
    model.preprocessor = PreprocessorConfig(
        transforms=TransformConfig(det_train_sizes=(64,), det_eval_size=64, det_max_size=96, seg_size=32,
                                   cls_size=32, text_size=32),
        pad_to_multiple=32, synthetic={"n_images": 10, "image_size": 64, "rbc_radius": 5.0, "crop_size": 16},
    )  # fmt: skip
    model.save_pretrained(model_dir)
    record = {"format_version": 1, "datasets": {"synthetic": ["detection", "classification"]}, "splits": {}}
    (model_dir / TRAINING_RECORD).write_text(json.dumps(record))
    cells = _class_folders(base / "cells")
    out = base / "out"
    args = ["eval", "--model", str(model_dir), "--data", "synthetic", "--data", f"cells={cells}",
            "--limit", "6", "--batch-size", "4", "--out", str(out)]  # fmt: skip
    for task in ("detection", "segmentation", "classification", "probe", "vqa"):
        args += ["--task", task]
    return {"args": args, "out": out, "model": model_dir, "cells": cells}


@pytest.mark.filterwarnings("ignore:cells. skipped lymphocyte/garbage.png")
def test_eval_writes_a_table1_table2_report(report_run, capsys):
    assert main(report_run["args"]) == 0
    captured = capsys.readouterr()
    out = report_run["out"]
    assert f"report: {out / 'report.md'}" in captured.out
    assert re.search(r"\| (\d+)/\1 \[.*sample/s", captured.err)  # the progress bar reached its total
    assert "skipped cells/lymphocyte/lymphocyte_0.png (classification)" in captured.err
    report = json.loads((out / "report.json").read_text())
    synthetic, cells = report["datasets"]["synthetic"], report["datasets"]["cells"]
    assert synthetic["seen"] is True and cells["seen"] is False
    assert set(synthetic["tasks"]) == {"detection", "segmentation", "classification", "probe", "vqa"}
    assert set(cells["tasks"]) == {"classification", "probe"}
    assert cells["tasks"]["probe"]["details"]["protocol"].endswith("-fold stratified CV")
    assert synthetic["tasks"]["probe"]["details"]["protocol"] == "fixed split"
    assert [s["sample"] for s in cells["tasks"]["classification"]["skipped"]] == [
        "cells/lymphocyte/lymphocyte_0.png"
    ]
    assert cells["tasks"]["classification"]["samples"] == 5  # 6 of the 7 readable files, one truncated
    assert cells["read_skipped"][0]["sample"] == "lymphocyte/garbage.png"
    text = (out / "report.md").read_text()
    assert (
        text.index("## Table 1")
        < text.index("| synthetic |")
        < text.index("## Table 2")
        < text.index("| cells |")
    )
    assert (
        "Left out: 1 files or rows the dataset readers could not use, and 1 samples that failed to load"
        in text
    )
    assert "lymphocyte_0.png (classification, probe)" in text
    for plot in ("synthetic/detection_pr.png", "synthetic/segmentation_overlay_0.png",
                 "synthetic/classification_confusion.png", "cells/probe_tsne.png"):  # fmt: skip
        assert (out / "plots" / plot).is_file()
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0] == "dataset,seen,task,metric,value,headline,samples,skipped"
    assert any(r.startswith("cells,unseen,classification,F1_weighted,") for r in rows)


@pytest.mark.filterwarnings("ignore:cells. skipped lymphocyte/garbage.png")
def test_eval_prints_one_row_per_dataset_and_task(report_run, capsys):
    cells = f"cells={report_run['cells']}"
    args = ["eval", "--model", str(report_run["model"]), "--data", "synthetic", "--data", cells,
            "--task", "classification", "--limit", "3", "--no-progress"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(rows) == {"synthetic", "cells"} and rows["cells"]["classification"]["metric"] == "F1_weighted"
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in printed] == [
        ["synthetic", "classification", "F1_weighted"], ["cells", "classification", "F1_weighted"]
    ]  # fmt: skip


def test_training_record_lists_the_datasets_of_the_stages_run(tmp_path):
    from unihema.demo import default_config_path
    from unihema.evaluate.suite import read_training_record, seen_in_training
    from unihema.train.history import TRAINING_RECORD, training_record, write_training_record
    from unihema.train.stages import TrainConfig

    config = TrainConfig.load(default_config_path())
    record = training_record(config, [0])
    first_stage_tasks = {task.value for task in config.stages[0].tasks}
    assert set(record["datasets"]) == set(config.stages[0].datasets)
    assert set(record["datasets"]["synthetic"]) == first_stage_tasks and record["stages"] == [
        config.stages[0].name
    ]
    write_training_record(tmp_path, config, range(len(config.stages)))
    loaded = read_training_record(tmp_path)
    assert seen_in_training(loaded, "synthetic") is True and seen_in_training(loaded, "bccd") is False
    assert seen_in_training(read_training_record(tmp_path / "elsewhere"), "synthetic") is None
    (tmp_path / TRAINING_RECORD).write_text("{broken")
    with pytest.raises(ValueError, match="training_record.json: not readable JSON"):
        read_training_record(tmp_path)


def test_data_specs():
    from unihema.cli._options import parse_data_spec

    assert parse_data_spec("synthetic") == ("synthetic", None)
    assert parse_data_spec("bccd=../shared/datasets/bccd") == ("bccd", "../shared/datasets/bccd")
    assert parse_data_spec("../shared/datasets/pbc") == ("pbc", "../shared/datasets/pbc")
    assert parse_data_spec("/tmp/a=b") == ("a=b", "/tmp/a=b")


def test_a_trained_model_records_its_datasets_and_eval_marks_them_seen(tmp_path, capsys):
    from support.training import mini_config
    from unihema.train.stages import TrainConfig
    from unihema.train.trainer import run_training

    stage = {"name": "cls", "tasks": {"classification": ["synthetic"]}, "k_per_task": 2, "train": ["heads"],
             "max_steps": 1}  # fmt: skip
    run_dir = tmp_path / "run"
    run_training(TrainConfig.from_dict(mini_config([stage])), run_dir, progress=False)
    record = json.loads((run_dir / "final" / "training_record.json").read_text())
    assert record["datasets"] == {"synthetic": ["classification"]} and record["stages"] == ["cls"]
    (checkpoint,) = (run_dir / "checkpoints").glob("stage-*/model/training_record.json")
    assert json.loads(checkpoint.read_text()) == record
    out = tmp_path / "report"
    args = ["eval", "--model", str(run_dir / "final"), "--task", "classification", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["datasets"]["synthetic"]["seen"] is True
    assert report["datasets"]["synthetic"]["trained_tasks"] == ["classification"]


def test_eval_reads_a_native_layout_through_its_descriptor_or_options(saved_model, tmp_path, capsys):
    import yaml

    from support.native_layouts import COLOUR_MAP, colour_mask_fixture

    root = colour_mask_fixture(tmp_path / "set")  # colour TIFF masks with a white background in gt/
    args = ["eval", "--model", str(saved_model), "--data", str(root), "--split", "test", "--json"]
    with pytest.warns(UserWarning):  # the stray colour in one mask is named
        assert main([*args, "--format", "masks", "--option", f"colour_map={json.dumps(COLOUR_MAP)}"]) == 0
    by_option = json.loads(capsys.readouterr().out)
    (root / "unihema.yaml").write_text(
        yaml.safe_dump({"format": "masks", "options": {"colour_map": COLOUR_MAP}})
    )
    with pytest.warns(UserWarning):
        assert main(args) == 0
    by_descriptor = json.loads(capsys.readouterr().out)
    assert list(by_option) == ["segmentation"] and by_option == by_descriptor


def test_limit_spreads_the_scored_samples_over_a_class_folder_dataset(saved_model, monkeypatch, capsys):
    # The reader lists crops class by class; the first five would all be basophils.
    from unihema.data.vocab import CELL_CLASSES
    from unihema.evaluate import suite

    seen: list = []
    monkeypatch.setattr(
        suite, "evaluate_datasets", lambda model, datasets, *a, **k: seen.extend(datasets) or []
    )
    root = dataset_path("bccd_wbc_crops")
    assert main(["eval", "--model", str(saved_model), "--data", str(root), "--limit", "5", "--json"]) == 0
    (samples,) = seen[0].samples.values()
    classes = {CELL_CLASSES[s.cell_class] for s in samples}
    # Spread over the 351 crops (most of them neutrophils), five samples reach three classes.
    assert len(samples) == 5 and classes == {"basophil", "eosinophil", "neutrophil"}, classes


def test_a_bare_catalog_name_reads_the_staged_dataset_as_training_does(
    saved_model, monkeypatch, tmp_path, capsys
):
    from unihema.evaluate import suite

    root = dataset_path("segmentation_wbc")
    monkeypatch.setenv("UNIHEMA_DATASETS", str(root.parent))
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    seen: list = []
    monkeypatch.setattr(
        suite, "evaluate_datasets", lambda model, datasets, *a, **k: seen.extend(datasets) or []
    )
    assert main(["eval", "--model", str(saved_model), "--data", "segmentation_wbc", "--json"]) == 0
    # The catalog's options add the cell crops the layout alone does not show.
    assert seen[0].name == "segmentation_wbc" and seen[0].source == str(root)
    assert set(seen[0].samples) == {Task.SEGMENTATION, Task.CLASSIFICATION}
    seen.clear()
    assert main(["eval", "--model", str(saved_model), "--data", f"segmentation_wbc={root}", "--json"]) == 0
    assert set(seen[0].samples) == {Task.SEGMENTATION}
    # A name that is neither a folder nor a staged dataset, and a staged name whose folder is absent.
    assert main(["eval", "--model", str(saved_model), "--data", "no_such_set"]) == 2
    assert "no_such_set: dataset folder not found" in capsys.readouterr().err
    monkeypatch.setenv("UNIHEMA_DATASETS", str(tmp_path / "empty"))
    assert main(["eval", "--model", str(saved_model), "--data", "segmentation_wbc"]) == 2
    assert "set $UNIHEMA_DATASETS" in capsys.readouterr().err


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(entry.name for entry in staged_datasets()))
def test_eval_scores_every_task_of_every_staged_dataset(saved_model, name, monkeypatch, capsys):
    root = dataset_path(name)
    monkeypatch.setenv("UNIHEMA_DATASETS", str(root.parent))
    entry = get_dataset(name)
    args = ["eval", "--model", str(saved_model), "--data", name, "--limit", "2", "--json", "--no-progress"]
    assert main([*args, "--batch-size", "2"]) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    # Read by its bare name, the dataset gives the tasks training reads from it, and each is scored.
    read = get_reader(entry.reader).read(root, dataset=name, **entry.options).samples
    assert set(rows) == {sample.task.value for sample in read}
    assert all(0.0 <= row["value"] <= 100.0 for row in rows.values()), rows


def test_classification_is_scored_among_the_classes_the_dataset_labels(saved_model, monkeypatch):
    from unihema.data.vocab import CELL_CLASSES
    from unihema.evaluate import suite

    seen: list = []
    monkeypatch.setattr(
        suite, "evaluate_datasets", lambda model, datasets, *a, **k: seen.extend(datasets) or []
    )
    args = ["eval", "--model", str(saved_model), "--data", str(dataset_path("bccd_wbc_crops")), "--json"]
    assert main(args) == 0
    assert {CELL_CLASSES[c] for c in seen[0].cell_classes} == {
        "basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"
    }  # fmt: skip
    assert main([*args, "--any-class"]) == 0
    assert seen[1].cell_classes == ()
