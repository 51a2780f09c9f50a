"""The main job end to end on a micro version of the packaged demo curriculum."""

import json

import pytest
import torch
import yaml

from unihema.data.schema import Task
from unihema.demo import default_config_path, format_summary, improved_everywhere, run_demo


@pytest.fixture
def micro_config(tmp_path):
    config = yaml.safe_load(default_config_path().read_text())
    config["data"]["synthetic"].update(n_images=12, image_size=128)
    config["runtime"].update(tensorboard=False, checkpoint_every=0, device="cpu")
    for stage in config["stages"]:
        stage.pop("epochs", None)
        stage["max_steps"] = 1
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_demo_writes_report_model_and_overlays(tmp_path, micro_config):
    from unihema.model.unihema import UniHema

    out = tmp_path / "demo"
    report = run_demo(out, config_path=micro_config, eval_per_task=3, progress=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved == report
    assert set(saved["tasks"]) == {task.value for task in Task}
    for entry in saved["tasks"].values():
        assert entry["before"] is not None and entry["after"] is not None
        assert entry["improved"] == (entry["after"] > entry["before"])
    assert (out / "report.md").read_text().startswith("# UniHema demo report")
    assert (out / "overlays" / "detection.png").is_file() and (
        out / "overlays" / "segmentation.png"
    ).is_file()
    loaded = UniHema.from_pretrained(out / "model")
    reference = UniHema.from_pretrained(out / "run" / "final")
    for (name, a), (_, b) in zip(loaded.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert "mAP50" in format_summary(report)
    assert improved_everywhere(report) == all(e["improved"] for e in report["tasks"].values())
    with pytest.raises(FileExistsError):
        run_demo(out, config_path=micro_config, eval_per_task=1, progress=False)
