"""Training from a manifest (``data.manifests``): the samples stay on disk as line offsets, a stage's
datasets are concatenated without being read, and a run trains on them like on any other dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.training import MINI_DATA, mini_config
from unihema.data.loader import ConcatenatedSamples
from unihema.data.manifest import ManifestDataset, write_manifest
from unihema.data.schema import Task
from unihema.data.synthetic import SyntheticConfig, SyntheticCorpus
from unihema.train.data import CorpusCache, stage_samples
from unihema.train.stages import TrainConfig
from unihema.train.trainer import iter_metrics, run_training


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("smears")
    SyntheticCorpus(SyntheticConfig(**MINI_DATA["synthetic"])).write(folder)
    return folder / "manifest.jsonl"


def _config(manifest: Path, tasks: dict) -> TrainConfig:
    stage = {
        "name": "from_disk",
        "tasks": tasks,
        "k_per_task": 2,
        "train": ["D_I", "SCFE", "heads"],
        "max_steps": 2,
    }
    data = mini_config([stage])
    data["data"]["manifests"] = {"smears": str(manifest)}
    return TrainConfig.from_dict(data)


def test_a_run_trains_from_a_manifest_without_reading_it_into_memory(manifest: Path, tmp_path: Path) -> None:
    config = _config(manifest, {"detection": ["smears"], "classification": ["smears", "synthetic"]})
    cache = CorpusCache(config)
    assert cache.real_dataset_names() == []
    samples = stage_samples(cache, config.stages[0])
    assert isinstance(samples[Task.DETECTION], ManifestDataset)
    assert isinstance(samples[Task.CLASSIFICATION], ConcatenatedSamples)
    detection = samples[Task.DETECTION]
    assert len(detection) == 6 and all(s.split == "train" and s.task is Task.DETECTION for s in detection)
    assert cache.class_mask("smears", Task.DETECTION).any()

    run_dir = tmp_path / "run"
    run_training(config, run_dir, progress=False)
    rows = list(iter_metrics(run_dir))
    assert [row["tasks"] for row in rows] == ["detection", "classification"]
    assert "manifest smears" in (run_dir / "train.log").read_text()


def test_manifest_errors_name_the_dataset(manifest: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "missing.jsonl", {"detection": ["smears"]})
    with pytest.raises(
        FileNotFoundError, match=r"data\.manifests\.smears: manifest .*missing\.jsonl not found"
    ):
        stage_samples(CorpusCache(config), config.stages[0])
    boxes_only = tmp_path / "detection.jsonl"
    write_manifest(ManifestDataset(manifest).where(task="detection"), boxes_only)
    config = _config(boxes_only, {"vqa": ["smears"]})
    with pytest.raises(ValueError, match="dataset 'smears' has no vqa samples in split 'train'"):
        stage_samples(CorpusCache(config), config.stages[0])
    data = config.to_dict()
    data["data"]["manifests"] = {"synthetic": str(manifest)}
    with pytest.raises(ValueError, match=r"data\.manifests\.synthetic is the name of the built-in corpus"):
        TrainConfig.from_dict(data)
