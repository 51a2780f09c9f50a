"""``unihema eval`` on a saved model and a real dataset folder."""

import json

import pytest

from support.paths import dataset_path
from support.testers import small_test_config
from unihema.cli import main  # noqa: E402
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
    assert set(entry["details"]) == {"f1_weighted", "f1_macro", "accuracy"}


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

    def capture(model, samples_by_task, config=None):
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
