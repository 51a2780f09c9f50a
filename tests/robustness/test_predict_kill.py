"""A ``unihema predict`` run killed with SIGKILL mid-archive leaves nothing a later run would trust.

Each image's outputs are written atomically and its JSON last (it marks the image complete), so after a
kill every JSON present parses and has all its companion files, whatever else is half done; the re-run
analyses exactly the images without a JSON and ends with every image complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bad_input_builders import write_photo
from PIL import Image

N_IMAGES = 12
COMPANIONS = (".overlay.png", ".mask.png", ".geojson")
START_TIMEOUT_S = 120.0


def _command(inputs: Path, model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "unihema", "predict", str(inputs), "--model", str(model), "--out", str(out),
            "--no-progress", "--no-slide-reports"]  # fmt: skip


def _environment() -> dict[str, str]:
    source = Path(__file__).resolve().parents[2] / "src"
    path = os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _complete(images: Path) -> dict[str, dict]:
    """Key -> parsed JSON of every image the output folder marks complete; each must be whole."""
    results = {}
    for path in sorted(images.glob("*.json")):
        key = path.name.removesuffix(".json")
        results[key] = json.loads(path.read_text(encoding="utf-8"))  # a half-written JSON fails here
        for suffix in COMPANIONS:
            companion = images / f"{key}{suffix}"
            assert companion.is_file(), companion
            if suffix.endswith(".png"):
                with Image.open(companion) as picture:
                    picture.load()
            else:
                json.loads(companion.read_text(encoding="utf-8"))
    return results


@pytest.mark.timeout(300)
def test_sigkill_during_predict_leaves_nothing_a_rerun_would_trust(tiny_model_dir, tmp_path) -> None:
    inputs, out = tmp_path / "smears", tmp_path / "out"
    for i in range(N_IMAGES):
        write_photo(inputs / f"field_{i:02d}.png", size=(96, 72))
    images = out / "images" / "smears"
    process = subprocess.Popen(_command(inputs, tiny_model_dir, out), env=_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not list(images.glob("*.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "predict ended before it could be killed mid-run"

    done = _complete(images)
    assert 1 <= len(done) < N_IMAGES
    assert not (out / "run.json").exists()  # the run tables come at the end

    rerun = subprocess.run(_command(inputs, tiny_model_dir, out), env=_environment(), capture_output=True,
                           text=True, timeout=START_TIMEOUT_S)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(f"{N_IMAGES - len(done)} analysed, {len(done)} already complete, 0 failed")
    final = _complete(images)
    assert sorted(final) == [f"field_{i:02d}" for i in range(N_IMAGES)]
    assert all(final[key] == value for key, value in done.items())  # the finished images were not redone
    record = json.loads((out / "run.json").read_text())
    assert record["processed"] == N_IMAGES - len(done) and record["skipped_complete"] == len(done)
