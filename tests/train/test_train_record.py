"""The training record keeps the splits the leak resolution changed, and ``unihema eval`` applies them: an
image a dataset publishes for training is not scored as held-out in another dataset that only hash-splits
it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from support.training import mini_config
from unihema.cli import main
from unihema.data.splits import SplitConfig, hash_split
from unihema.train.data import CorpusCache
from unihema.train.history import TRAINING_RECORD, training_record
from unihema.train.stages import TrainConfig

SPLITS = {"val_fraction": 0.0, "test_fraction": 0.5, "seed": 1}
CLASSES = ("neutrophil", "lymphocyte")


def _png(path: Path, rng: np.random.Generator) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def _shared_image_folders(root: Path) -> dict[str, Any]:
    """``pub``: class folders under train/ and test/ (a published split); ``hashed``: class folders without
    split folders (hash-split), holding a copy of one of pub's training images that its hash puts in test."""
    rng = np.random.default_rng(0)
    pub, hashed = root / "pub", root / "hashed"
    for split in ("train", "test"):
        for name in CLASSES:
            _png(pub / split / name / f"{name}_0.png", rng)
    for name in CLASSES:
        for i in range(4):
            _png(hashed / name / f"cell_{i}.png", rng)
    config = SplitConfig(**SPLITS)
    copy_id = next(
        f"neutrophil/copy_{i}.png"
        for i in range(100)
        if hash_split(f"hashed/neutrophil/copy_{i}.png", config) == "test"
    )
    (hashed / copy_id).write_bytes((pub / "train" / "neutrophil" / "neutrophil_0.png").read_bytes())
    others = [f"{name}/cell_{i}.png" for name in CLASSES for i in range(4)]
    test_ids = {i for i in others if hash_split(f"hashed/{i}", config) == "test"}
    assert test_ids and len(test_ids) < len(others)  # hashed has training and other test images
    return {"pub": pub, "hashed": hashed, "copy_id": copy_id, "test_ids": test_ids}


def _config(folders: dict[str, Any], **data: Any) -> TrainConfig:
    stage = {"name": "cls", "tasks": {"classification": ["pub", "hashed"]}, "k_per_task": 2,
             "train": ["heads"], "max_steps": 1}  # fmt: skip
    config = mini_config([stage])
    config["data"].update(
        splits=dict(SPLITS), folders={n: str(folders[n]) for n in ("pub", "hashed")}, **data
    )
    return TrainConfig.from_dict(config)


def test_the_corpus_keeps_the_aligned_hash_splits_and_the_record_those_of_its_stages(tmp_path: Path) -> None:
    folders = _shared_image_folders(tmp_path)
    config = _config(folders)
    assert config.data.leak_action == "align"  # the default
    cache = CorpusCache(config)
    assert cache.split_overrides == {"hashed": {folders["copy_id"]: "train"}}
    record = training_record(config, [0], {**cache.split_overrides, "elsewhere": {"a.png": "train"}})
    assert record["split_overrides"] == {"hashed": {folders["copy_id"]: "train"}}  # only the stages' datasets
    assert training_record(config, [0])["split_overrides"] == {}
    # With "drop" the copy stays in hashed's test split (and pub's training copy is dropped): no override.
    assert CorpusCache(_config(folders, leak_action="drop")).split_overrides == {}


def _scored_ids(model_dir: Path, hashed: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The sample ids ``unihema eval`` scores as hashed's test classification samples."""
    from unihema.evaluate import evaluator

    seen: dict[str, Any] = {}

    def capture(model, samples_by_task, config=None, progress=None):
        seen.update({task.value: samples for task, samples in samples_by_task.items()})
        return {}

    monkeypatch.setattr(evaluator, "evaluate", capture)
    args = ["eval", "--model", str(model_dir), "--data", f"hashed={hashed}", "--task", "classification",
            "--split", "test", "--device", "cpu", "--no-progress", "--json"]  # fmt: skip
    assert main(args) == 0
    return {sample.sample_id for sample in seen["classification"]}


def test_a_trained_model_records_the_overrides_and_eval_does_not_score_the_aligned_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from unihema.train.trainer import run_training

    folders = _shared_image_folders(tmp_path / "data")
    run_dir = tmp_path / "run"
    run_training(_config(folders), run_dir, progress=False)
    record_path = run_dir / "final" / TRAINING_RECORD
    record = json.loads(record_path.read_text())
    assert record["leak_action"] == "align"
    assert record["split_overrides"] == {"hashed": {folders["copy_id"]: "train"}}
    (checkpoint,) = (run_dir / "checkpoints").glob(f"stage-*/model/{TRAINING_RECORD}")
    assert json.loads(checkpoint.read_text()) == record

    # The copy was trained on (as pub's training image): eval's test split leaves it out.
    assert _scored_ids(run_dir / "final", folders["hashed"], monkeypatch) == folders["test_ids"]
    # A record without overrides (written before they existed) still evaluates, with the plain hash split.
    del record["split_overrides"]
    record_path.write_text(json.dumps(record))
    scored = _scored_ids(run_dir / "final", folders["hashed"], monkeypatch)
    assert scored == folders["test_ids"] | {folders["copy_id"]}
