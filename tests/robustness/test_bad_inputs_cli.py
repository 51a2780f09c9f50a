"""The bad-input catalog, part 2: configurations, model folders, the commands, the predictor and full disks.

Each case runs what a user would run, asserts the exact one-line message the user sees (``unihema: error:
...`` on stderr, or the line naming a skipped image), that the rest of the work completed, and that nothing
already written was lost (files compared byte for byte, model folders reloaded). A full disk is simulated
by an ``fsync`` that fails with ``ENOSPC`` inside :mod:`unihema.atomic`, after the temporary file was
written: the file of the same name written before must be intact and no temporary file left behind.
Part 1 (``test_bad_inputs_data.py``) covers the dataset folders.
"""

from __future__ import annotations

import errno
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_input_builders import SIZE, coco_set, noisy_pixels, snapshot, write_photo, yolo_set
from PIL import Image

from unihema.cli import main

ENOSPC_TEXT = os.strerror(errno.ENOSPC)


def _run(capsys, *args: str) -> tuple[int, str, str]:
    """``unihema ARGS``: exit status, stdout and stderr (an argparse error exits through SystemExit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _copy_model(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target


# ---------------------------------------------------------------------------------------- model folders


def _no_tokenizer(model: Path) -> str:
    for path in (model / "tokenizer").iterdir():
        path.unlink()
    (model / "tokenizer").rmdir()
    return f"{model / 'tokenizer'}: tokenizer folder not found (a model folder keeps its tokenizer there)"


def _empty_tokenizer(model: Path) -> str:
    for path in (model / "tokenizer").iterdir():
        path.unlink()
    return (
        f"{model / 'tokenizer'}: no tokenizer files (none of tokenizer.json, tokenizer_config.json, spiece.model, "
        "vocab.json, vocab.txt); it is empty"
    )


def _weights_of_another_model(model: Path) -> str:
    config = json.loads((model / "config.json").read_text())
    config["preset"] = None
    config["vision"]["num_queries"] = 7
    (model / "config.json").write_text(json.dumps(config))
    return (
        f"{model / 'model.safetensors'}: tensor 'image_decoder.tgt_embed.weight' has shape (20, 32) in the "
        "checkpoint but the model expects (7, 32) (the file was saved from a model of preset 'tiny'; the "
        "configuration describes a custom model: weights and config.json come from different models)"
    )


def _truncated_weights(model: Path) -> str:
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    return f"{path}: not a readable safetensors file (truncated or corrupt): "


def _nan_in_config(model: Path) -> str:
    (model / "config.json").write_text(
        (model / "config.json").read_text().replace('"dropout": 0.0', '"dropout": NaN', 1)
    )
    return f"{model / 'config.json'}: vision.dropout must be in [0, 1), got nan"


def _nan_in_preprocessor(model: Path) -> str:
    (model / "preprocessor_config.json").write_text('{"transforms": {"hflip_prob": NaN}}')
    return f"{model / 'preprocessor_config.json'}: TransformConfig.hflip_prob must be a probability in [0, 1], got nan"


MODEL_FOLDER_CASES = {
    "missing tokenizer folder": _no_tokenizer,
    "empty tokenizer folder": _empty_tokenizer,
    "weights of another configuration": _weights_of_another_model,
    "truncated weights file": _truncated_weights,
    "NaN in config.json": _nan_in_config,
    "NaN in preprocessor_config.json": _nan_in_preprocessor,
}


@pytest.mark.parametrize("damage", MODEL_FOLDER_CASES.values(), ids=MODEL_FOLDER_CASES.keys())
def test_a_damaged_model_folder_is_named_and_nothing_is_written(
    damage, tiny_model_dir, tmp_path, capsys
) -> None:
    model = _copy_model(tiny_model_dir, tmp_path / "model")
    expected = damage(model)
    before = snapshot(model)
    image = write_photo(tmp_path / "in" / "a.png")
    code, out, err = _run(capsys, "predict", str(image), "--model", str(model), "--out", str(tmp_path / "out"),
                          "--no-progress")  # fmt: skip
    assert code == 2 and not out
    message = err.strip().removeprefix("unihema: error: ")
    assert message.startswith(expected) if expected.endswith(": ") else message == expected, err
    assert not (tmp_path / "out").exists() and snapshot(model) == before


# ------------------------------------------------------------------------------------------ the commands


def _coco_without_boxes(root: Path) -> Path:
    for name in ("a.png", "b.png"):
        write_photo(root / "images" / name)
    data = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [],
        "categories": [{"id": 1, "name": "RBC"}],
    }
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def test_eval_of_a_dataset_without_annotations_fails_instead_of_reporting_map_zero(
    tiny_model_dir, tmp_path, capsys
):
    root = _coco_without_boxes(tmp_path / "cells")
    code, out, err = _run(
        capsys, "eval", "--model", str(tiny_model_dir), "--data", str(root), "--no-progress"
    )
    assert code == 2 and not out
    assert err.splitlines()[-1] == (
        "unihema: error: nothing to evaluate: cells detection: none of its 2 samples holds a box annotation, so "
        "its mAP would say nothing about the model; not evaluated (are the annotations missing?)"
    )


def test_eval_scores_the_annotated_dataset_and_names_the_one_without_annotations(
    tiny_model_dir, tmp_path, capsys
):
    empty = _coco_without_boxes(tmp_path / "cells")
    boxed = coco_set(tmp_path / "boxed", {})
    code, out, err = _run(capsys, "eval", "--model", str(tiny_model_dir), "--data", str(empty), "--data",
                          str(boxed), "--split", "train", "--task", "detection", "--json", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert "unihema eval: cells detection: none of its 2 samples holds a box annotation" in err
    assert set(json.loads(out)) == {"detection"}  # one dataset scored: its tasks


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "tset"], "unihema: error: --split 'tset': no such split in synthetic; its splits: train, val, test"),
        (["--limit", "-1"], "unihema eval: error: argument --limit: must be a positive integer, got '-1'"),
        (["--batch-size", "0"], "unihema eval: error: argument --batch-size: must be a positive integer, got '0'"),
        (["--score-threshold", "nan"], "unihema: error: EvalConfig.score_threshold must be in [0, 1], got nan"),
        (["--device", "gpu"], "unihema: error: --device 'gpu' is not a device name; use cpu, cuda or cuda:N"),
    ],
    ids=["unknown split", "negative limit", "zero batch size", "NaN threshold", "unknown device"],
)  # fmt: skip
def test_eval_refuses_a_bad_option_in_one_line(args, message, tiny_model_dir, tmp_path, capsys) -> None:
    code, out, err = _run(capsys, "eval", "--model", str(tiny_model_dir), "--task", "detection", *args,
                          "--out", str(tmp_path / "report"), "--no-progress")  # fmt: skip
    assert code == 2 and not out
    assert err.strip().splitlines()[-1] == message
    assert not (tmp_path / "report").exists()


def test_eval_split_of_a_dataset_lists_its_splits(tiny_model_dir, tmp_path, capsys) -> None:
    root = coco_set(tmp_path / "boxed", {})
    code, _, err = _run(
        capsys, "eval", "--model", str(tiny_model_dir), "--data", str(root), "--split", "tset"
    )
    assert (
        code == 2
        and err.strip() == "unihema: error: --split 'tset': no such split in boxed; its splits: train"
    )


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_gpu_this_machine_lacks_is_refused_in_one_line(command, tiny_model_dir, tmp_path, capsys) -> None:
    image = write_photo(tmp_path / "a.png")
    device = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    extra = ["--task", "detection"] if command == "eval" else [str(image), "--out", str(tmp_path / "out")]
    code, out, err = _run(capsys, command, "--model", str(tiny_model_dir), *extra, "--device", device)
    assert code == 2 and not out
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        expected = f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
    else:
        expected = ("--device cuda: no usable CUDA GPU on this machine (torch.cuda.is_available() is False); use "
                    "--device cpu")  # fmt: skip
    if command == "predict" and torch.cuda.is_available():
        pytest.skip("predict takes --device cuda (one GPU per rank), not a GPU index")
    assert err.strip() == f"unihema: error: {expected}"
    assert not (tmp_path / "out").exists()


def test_synthetic_out_on_an_existing_file_is_refused_and_the_file_kept(tmp_path, capsys) -> None:
    target = tmp_path / "corpus"
    target.write_text("my notes")
    code, out, err = _run(capsys, "data", "synthetic", "--out", str(target), "--n-images", "2")
    assert code == 2 and not out
    assert (
        err.strip()
        == f"unihema: error: --out {target}: a file of that name exists; give a folder (new or existing)"
    )
    assert target.read_text() == "my notes"


def test_synthetic_negative_count_is_refused(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "data", "synthetic", "--out", str(tmp_path / "c"), "--n-images", "-2")
    assert code == 2 and err.strip() == "unihema: error: SyntheticConfig.n_images must be >= 1, got -2"
    assert not (tmp_path / "c").exists()


def test_a_reader_option_out_of_range_is_named(tmp_path, capsys) -> None:
    root = yolo_set(tmp_path / "data")
    code, _, err = _run(capsys, "data", "check", str(root), "--format", "masks", "--option", "mapping=[-1]")
    assert code == 2
    assert err.strip() == (
        "unihema: error: option 'mapping': mapping=[-1]: foreground values must be a non-empty list of 0..255"
    )


# --------------------------------------------------------------------------------------- the predictor


def _grey16(path: Path) -> None:
    Image.fromarray(noisy_pixels(path.name)[..., 0].astype(np.uint16) * 257).save(path)


def _bomb(path: Path) -> None:
    write_photo(path, size=(400, 300))


PREDICT_IMAGES = {
    "truncated.png": (lambda p: p.write_bytes(_noisy_png(p)[:3000]), r"not a readable image \(image file is truncated\)"),
    "zero.png": (lambda p: p.write_bytes(b""), r"not a readable image \(cannot identify image file '.*zero\.png'\)"),
    "bomb.png": (_bomb, r"not a readable image \(Image size \(120000 pixels\) exceeds limit of 40000 pixels, could "
                        r"be decompression bomb DOS attack\.\)"),
    "deep.png": (_grey16, None),
    "print.jpg": (lambda p: Image.fromarray(noisy_pixels(p.name)).convert("CMYK").save(p), None),
    "palette.png": (lambda p: Image.fromarray(noisy_pixels(p.name)).convert("P").save(p), None),
    "grey.png": (lambda p: Image.fromarray(noisy_pixels(p.name)[..., 0]).save(p), None),
    "alpha.png": (lambda p: Image.fromarray(np.dstack([noisy_pixels(p.name), np.full(SIZE[::-1], 90, np.uint8)]))
                  .save(p), None),
    f"{os.fsdecode(b'caf' + bytes([0xE9]))} cell.png": (write_photo, None),
}  # fmt: skip


def _noisy_png(path: Path) -> bytes:
    write_photo(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def predict_run(tiny_model_dir, tmp_path_factory):
    """``unihema predict`` over one image of each kind (the decompression-bomb limit lowered to 20,000 px)."""
    base = tmp_path_factory.mktemp("predict")
    for name, (write, _) in PREDICT_IMAGES.items():
        write(base / "in" / name)
    out = base / "out"
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 20_000
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from contextlib import redirect_stderr, redirect_stdout
            from io import StringIO

            stdout, stderr = StringIO(), StringIO()
            with redirect_stdout(stdout), redirect_stderr(stderr):
                code = main(["predict", str(base / "in"), "--model", str(tiny_model_dir), "--out", str(out),
                             "--no-progress", "--no-slide-reports"])  # fmt: skip
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return {
        "code": code,
        "out": out,
        "input": base / "in",
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
    }


@pytest.mark.parametrize(
    "name", PREDICT_IMAGES, ids=[n.encode("ascii", "replace").decode() for n in PREDICT_IMAGES]
)
def test_predict_names_each_bad_image_and_completes_the_others(name, predict_run) -> None:
    assert predict_run["code"] == 0
    assert predict_run["stdout"].strip().startswith("6 analysed, 0 already complete, 3 failed; tables in")
    pattern = PREDICT_IMAGES[name][1]
    stem = Path(name).stem.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if pattern is not None:
        path = re.escape(str(predict_run["input"] / name))
        assert re.search(
            rf"^unihema predict: skipped {path}: {path}: {pattern}$", predict_run["stderr"], re.M
        )
        assert not list((predict_run["out"] / "images").rglob(f"{stem}.*"))
        return
    images = predict_run["out"] / "images" / "in"
    for suffix in (".json", ".overlay.png", ".mask.png", ".geojson"):
        assert (images / f"{stem}{suffix}").is_file(), stem + suffix
    result = json.loads((images / f"{stem}.json").read_text(encoding="utf-8"))
    assert result["image_size"] == {"height": SIZE[1], "width": SIZE[0]}


# ------------------------------------------------------------------------------------------ full disks


class _DiskFills:
    """Stands in for ``os`` inside :mod:`unihema.atomic`: the ``fail_at``-th ``fsync`` (counting from 1) and
    every later one raise ``ENOSPC``, as a disk that fills while a file is written."""

    def __init__(self, fail_at: int) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def __getattr__(self, name: str):
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise OSError(errno.ENOSPC, ENOSPC_TEXT)
        os.fsync(fd)


def _fill_disk(monkeypatch, fail_at: int) -> None:
    import unihema.atomic

    monkeypatch.setattr(unihema.atomic, "os", _DiskFills(fail_at))


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.is_file()]


def test_a_full_disk_while_saving_a_model_keeps_the_previous_one(
    tiny_model_dir, tmp_path, monkeypatch
) -> None:
    from unihema.model.unihema import UniHema

    folder = _copy_model(tiny_model_dir, tmp_path / "model")
    before = snapshot(folder)
    retrained = UniHema.from_pretrained(folder)
    with torch.no_grad():
        next(retrained.parameters()).add_(1.0)
    _fill_disk(monkeypatch, fail_at=1)
    with pytest.raises(OSError, match=re.escape(f"[Errno {errno.ENOSPC}] {ENOSPC_TEXT}")):
        retrained.save_pretrained(folder)
    monkeypatch.undo()
    assert snapshot(folder) == before and not _temporaries(folder)
    UniHema.from_pretrained(folder)  # the previous model still loads


def test_a_full_disk_during_predict_keeps_the_finished_images(
    tiny_model_dir, tmp_path, monkeypatch, capsys
) -> None:
    for name in ("a.png", "b.png", "c.png"):
        write_photo(tmp_path / "in" / name)
    out = tmp_path / "out"
    _fill_disk(monkeypatch, fail_at=6)  # 4 files per image: the disk fills during the second image
    code, stdout, err = _run(capsys, "predict", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out",
                             str(out), "--no-progress")  # fmt: skip
    monkeypatch.undo()
    assert code == 2 and not stdout
    assert err.strip() == (
        f"unihema: error: --out {out}: cannot write the results ({ENOSPC_TEXT}); the images finished before are "
        "complete, and a re-run continues with the others"
    )
    images = out / "images" / "in"
    first = json.loads((images / "a.json").read_text())
    assert first["image_size"] == {"height": SIZE[1], "width": SIZE[0]} and not (images / "b.json").exists()
    assert not _temporaries(out)
    kept = snapshot(images)
    # Space freed: the re-run completes the archive and leaves the finished image as it was.
    code, stdout, _ = _run(capsys, "predict", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out",
                           str(out), "--no-progress")  # fmt: skip
    assert code == 0 and stdout.startswith("2 analysed, 1 already complete, 0 failed")
    assert all(snapshot(images)[key] == value for key, value in kept.items() if key.startswith("a."))
    assert all(json.loads((images / f"{stem}.json").read_text()) for stem in "abc")


def test_a_full_disk_while_writing_a_corpus_keeps_what_was_written(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "corpus"
    code, _, err = _run(
        capsys, "data", "synthetic", "--out", str(out), "--n-images", "3", "--image-size", "96"
    )
    assert code == 0, err
    before = snapshot(out)
    _fill_disk(monkeypatch, fail_at=3)
    code, _, err = _run(capsys, "data", "synthetic", "--out", str(out), "--n-images", "3", "--image-size", "96",
                        "--seed", "5")  # fmt: skip
    monkeypatch.undo()
    assert (
        code == 2 and err.strip() == f"unihema: error: --out {out}: cannot write the corpus ({ENOSPC_TEXT})"
    )
    after = snapshot(out)
    assert set(before) <= set(after) and not _temporaries(out)
    touched = [key for key in after if before.get(key) != after[key]]
    assert len(touched) == 2  # the two files written before the disk filled: whole, new files
    for key in touched:
        with Image.open(out / key) as image:
            image.load()
    assert after["synthetic.json"] == before["synthetic.json"]  # the summary of the corpus written before
