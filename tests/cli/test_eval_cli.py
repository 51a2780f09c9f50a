"""``unihema eval`` on a saved model and a real dataset folder."""

import json
import sys
from pathlib import Path

import pytest

from conftest import dataset_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from unihema_testers import small_test_config  # noqa: E402

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
