"""``unihema predict`` on folders: per-image files, run tables, bad images, resumption and torchrun shards."""

from __future__ import annotations

import csv
import json
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from support.testers import small_test_config
from unihema.cli import main
from unihema.data.transforms import TransformConfig
from unihema.inference.preprocessor import PreprocessorConfig
from unihema.model.unihema import UniHema

SMALL_INPUTS = PreprocessorConfig(
    transforms=TransformConfig(det_train_sizes=(64,), det_eval_size=64, det_max_size=96, seg_size=64),
    pad_to_multiple=32,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model")
    model = UniHema.from_config(small_test_config())
    model.preprocessor = SMALL_INPUTS
    model.save_pretrained(directory)
    return directory


def _smears(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("slideA/f1.png", "slideA/f2.jpg", "slideB/g1.png"):
        path = root / "smears" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((48, 72, 3)) * 255).astype(np.uint8)).save(path)
    (root / "smears" / "slideB" / "broken.png").write_bytes(b"\x89PNG not really")
    return root / "smears"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _predict(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(["predict", *args, "--no-progress", "--score-threshold", "0.2"])


def test_folder_run_writes_every_output_and_skips_bad_images(model_dir, tmp_path, capsys) -> None:
    smears, out = _smears(tmp_path), tmp_path / "out"
    assert _predict(str(smears), "--model", str(model_dir), "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "3 analysed, 0 already complete, 1 failed" in captured.out
    images = out / "images" / "smears"
    for key in ("slideA/f1", "slideA/f2", "slideB/g1"):
        for suffix in (".json", ".overlay.png", ".mask.png", ".geojson"):
            assert (images / f"{key}{suffix}").is_file(), key + suffix
    results = {
        k: json.loads((images / f"{k}.json").read_text()) for k in ("slideA/f1", "slideA/f2", "slideB/g1")
    }
    cells = _rows(out / "cells.csv")
    assert len(cells) == sum(len(r["cells"]) for r in results.values())
    assert {row["image"] for row in cells} <= {f"smears/{k}" for k in results}
    summary = _rows(out / "summary.csv")
    assert {r["name"] for r in summary if r["level"] == "slide"} == {"smears/slideA", "smears/slideB"}
    assert {r["name"] for r in summary if r["level"] == "image"} == {f"smears/{k}" for k in results}

    def cells_of(level: str, name: str) -> int:
        (row,) = [
            r
            for r in summary
            if (r["level"], r["name"], r["section"], r["item"]) == (level, name, "totals", "cells")
        ]
        return int(row["count"])

    # A slide's counts are the sums over its images.
    slide_a = cells_of("image", "smears/slideA/f1") + cells_of("image", "smears/slideA/f2")
    assert (
        cells_of("slide", "smears/slideA")
        == slide_a
        == len(results["slideA/f1"]["cells"]) + len(results["slideA/f2"]["cells"])
    )
    assert sorted(p.name for p in (out / "slides").iterdir()) == [
        "smears__slideA.html",
        "smears__slideB.html",
    ]
    record = json.loads((out / "run.json").read_text())
    assert (
        record["processed"] == 3 and record["failed"] == 1 and "broken.png" in next(iter(record["failures"]))
    )


def test_rerun_continues_an_interrupted_archive(model_dir, tmp_path, capsys) -> None:
    smears, out = _smears(tmp_path), tmp_path / "out"
    _predict(str(smears), "--model", str(model_dir), "--out", str(out))
    done = out / "images" / "smears" / "slideA" / "f1.json"
    stamp = done.stat().st_mtime_ns
    (out / "images" / "smears" / "slideB" / "g1.json").unlink()  # as if interrupted before g1 finished
    capsys.readouterr()
    assert _predict(str(smears), "--model", str(model_dir), "--out", str(out)) == 0
    assert "1 analysed, 2 already complete, 1 failed" in capsys.readouterr().out
    assert done.stat().st_mtime_ns == stamp
    assert (out / "images" / "smears" / "slideB" / "g1.json").is_file()


def test_bad_arguments_are_clear(model_dir, tmp_path, capsys) -> None:
    assert _predict(str(tmp_path / "nowhere"), "--model", str(model_dir), "--out", str(tmp_path / "o")) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    image = _smears(tmp_path) / "slideA" / "f1.png"
    code = _predict(str(image), "--model", str(model_dir), "--out", str(tmp_path / "o"), "--tasks", "vqa")
    assert code == 2 and "vqa task needs a question" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, args: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    assert _predict(*args, "--device", "cpu") == 0


def test_torchrun_ranks_share_the_images_and_rank0_merges(model_dir, tmp_path) -> None:
    smears, out = _smears(tmp_path), tmp_path / "out"
    (smears / "slideB" / "broken.png").unlink()
    args = [str(smears), "--model", str(model_dir), "--out", str(out), "--no-slide-reports"]
    mp.spawn(_rank, args=(2, _free_port(), args), nprocs=2, join=True)
    record = json.loads((out / "run.json").read_text())
    assert record["processed"] == 3 and record["failed"] == 0
    single = tmp_path / "single"
    _predict(*args[:-3], "--out", str(single), "--no-slide-reports")
    assert _rows(out / "cells.csv") == _rows(single / "cells.csv")
