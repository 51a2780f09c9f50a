from __future__ import annotations

import dataclasses
import pickle
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unihema.data.manifest import (
    ManifestDataset,
    ManifestError,
    index_line_offsets,
    iter_manifest,
    write_manifest,
)
from unihema.data.schema import UNKNOWN, ArrayImage, ArrayMask, FileImage, FileMask, Sample, Task


def _files(root: Path) -> tuple[Path, Path]:
    image = root / "data" / "field.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(image)
    mask = root / "data" / "field_mask.png"
    Image.fromarray((rng.random((12, 16)) > 0.5).astype(np.uint8) * 200).save(mask)
    return image, mask


def _all_task_samples(image: Path, mask: Path) -> list[Sample]:
    attrs = np.full((2, 6), UNKNOWN, dtype=np.int64)
    attrs[0, :3] = [1, 0, 1]
    return [
        Sample(image=FileImage(image), task=Task.DETECTION, dataset="bccd", sample_id="BloodImage_00001",
               split="train", disease="healthy", prompt="This image is for the detection of rbc, wbc cells",
               boxes=np.array([[0.5, 1.25, 7.75, 9.0], [1 / 3, 2, 3, 4]], dtype=np.float32),
               box_labels=[22, 23], box_attributes=attrs, image_size=(12, 16), source_path=image,
               extra={"original_class": ["RBC", "WBC"], "note": "ünïcode", "n": np.int64(3)}),
        Sample(image=FileImage(image, crop=(2, 3, 10, 11)), task=Task.SEGMENTATION, dataset="segmentation_wbc",
               sample_id="seg/1", split="test", mask=FileMask(mask, foreground=(200, 201), crop=(2, 3, 10, 11))),
        Sample(image=FileImage(image), task=Task.SEGMENTATION, dataset="masks", sample_id="seg/2",
               mask=FileMask(mask, threshold=128)),
        Sample(image=FileImage(image), task=Task.CLASSIFICATION, dataset="pbc", sample_id="basophil/BA_1.jpg",
               split="val", cell_class=2),
        Sample(image=FileImage(image), task=Task.CELL_MORPHOLOGY, dataset="wbcatt", sample_id="BA_1",
               cell_attributes=[0, 1, 2, 0, 1, 0, 1, 2, 3, 3, UNKNOWN]),
        Sample(image=FileImage(image), task=Task.VQA, dataset="wbcatt_vqa", sample_id="q1",
               prompt="Is the nucleus segmented?", text_target="yes"),
        Sample(image=FileImage(image), task=Task.MLM, dataset="wbcatt_mlm", sample_id="m1",
               prompt="mask: The cell has <extra_id_0> granules.", text_target="The cell has coarse granules."),
    ]  # fmt: skip


def assert_same_sample(a: Sample, b: Sample) -> None:
    for f in dataclasses.fields(Sample):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "extra":
            x = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in x.items()}
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), f.name
        elif f.name in ("image", "mask", "source_path"):
            # same file (paths may be written relative), same crop / mapping
            if x is None:
                assert y is None, f.name
                continue
            if f.name == "source_path":
                assert Path(x).resolve() == Path(y).resolve(), f.name
                continue
            assert type(x) is type(y), f.name
            for sub in dataclasses.fields(x):
                xs, ys = getattr(x, sub.name), getattr(y, sub.name)
                if sub.name == "path":
                    assert Path(xs).resolve() == Path(ys).resolve(), f.name
                else:
                    assert xs == ys, f"{f.name}.{sub.name}"
        else:
            assert x == y, f.name


def test_round_trip_preserves_every_field(tmp_path):
    image, mask = _files(tmp_path)
    samples = _all_task_samples(image, mask)
    path = tmp_path / "out" / "corpus.jsonl"
    assert write_manifest(samples, path) == len(samples)
    streamed = list(iter_manifest(path))
    indexed = ManifestDataset(path)
    assert len(streamed) == len(indexed) == len(samples)
    for i, original in enumerate(samples):
        assert_same_sample(original, streamed[i])
        assert_same_sample(original, indexed[i])
    # the references still load the same pixels
    assert np.array_equal(np.asarray(indexed[1].load_image()), np.asarray(samples[1].load_image()))
    assert np.array_equal(indexed[1].load_mask(), samples[1].load_mask())
    assert indexed[0].boxes[1, 0] == np.float32(1 / 3)  # float32 boxes survive JSON exactly
    assert_same_sample(samples[-1], indexed[-1])
    with pytest.raises(IndexError, match="7 samples"):
        indexed[7]


def test_relative_paths_survive_moving_the_corpus(tmp_path):
    image, mask = _files(tmp_path / "corpus")
    samples = _all_task_samples(image, mask)
    write_manifest(samples, tmp_path / "corpus" / "manifest.jsonl", relative_paths=True)
    line = (tmp_path / "corpus" / "manifest.jsonl").read_text().splitlines()[0]
    assert str(tmp_path) not in line
    shutil.move(tmp_path / "corpus", tmp_path / "moved")
    moved = ManifestDataset(tmp_path / "moved" / "manifest.jsonl")
    assert moved[0].image.path.resolve() == (tmp_path / "moved" / "data" / "field.png").resolve()
    assert moved[1].load_mask().shape == (8, 8)


def test_in_memory_images_need_array_dir(tmp_path):
    array = np.random.default_rng(1).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    mask = np.zeros((6, 7), dtype=bool)
    mask[1:4, 2:5] = True
    sample = Sample(image=ArrayImage(array), task=Task.SEGMENTATION, dataset="synthetic", sample_id="smear/0001",
                    mask=ArrayMask(mask))  # fmt: skip
    path = tmp_path / "m.jsonl"
    with pytest.raises(ManifestError, match="synthetic/smear/0001.*array_dir"):
        write_manifest([sample], path)
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written
    write_manifest([sample], path, array_dir="arrays", relative_paths=True)
    back = next(iter_manifest(path))
    assert back.image.path.parent.name == "arrays"
    assert np.array_equal(np.asarray(back.load_image()), array)
    assert np.array_equal(back.load_mask(), mask)


def test_failed_write_keeps_previous_manifest(tmp_path):
    image, mask = _files(tmp_path)
    path = tmp_path / "m.jsonl"
    write_manifest(_all_task_samples(image, mask)[:2], path)
    before = path.read_bytes()
    bad = _all_task_samples(image, mask)[3]
    bad.extra["unserialisable"] = object()
    with pytest.raises(ManifestError, match="pbc/basophil/BA_1.jpg.*extra"):
        write_manifest(_all_task_samples(image, mask)[:2] + [bad], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "m.jsonl"]


def test_malformed_lines_are_reported_with_file_and_line(tmp_path):
    image, mask = _files(tmp_path)
    path = tmp_path / "m.jsonl"
    write_manifest(_all_task_samples(image, mask)[:2], path)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n\n" + '{"v": 1, "task": "detection"}\n' + lines[1] + "\nnot json\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:3: malformed manifest record \(KeyError"):
        list(iter_manifest(path))
    dataset = ManifestDataset(path)
    assert len(dataset) == 4  # the blank line is not a sample
    assert dataset[2].sample_id == "seg/1"
    with pytest.raises(ManifestError, match="sample 3: not valid JSON"):
        dataset[3]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        ManifestDataset(tmp_path / "missing.jsonl")


def test_offset_index_is_eight_bytes_per_sample_and_works_in_workers(tmp_path):
    image, _ = _files(tmp_path)
    n = 4000
    boxes = np.tile(np.array([[1.5, 2.5, 30.25, 40.75]], dtype=np.float32), (40, 1))  # heavy annotations

    def generate():
        for i in range(n):
            yield Sample(image=FileImage(image), task=Task.DETECTION if i % 2 else Task.CLASSIFICATION,
                         dataset="big", sample_id=f"s{i}", boxes=boxes if i % 2 else np.zeros((0, 4)),
                         box_labels=np.full(40 if i % 2 else 0, 22), cell_class=None if i % 2 else 5)  # fmt: skip

    path = tmp_path / "big.jsonl"
    write_manifest(generate(), path)
    file_size = path.stat().st_size

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    dataset = ManifestDataset(path)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    retained = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert dataset.offsets.dtype == np.int64 and dataset.offsets.nbytes == 8 * n
    assert retained < 8 * n + 16_384  # the index and a constant, not the annotations
    assert file_size > 100 * retained  # the parsed records would be far larger

    assert np.array_equal(dataset.offsets, index_line_offsets(path))
    assert dataset[1234].sample_id == "s1234" and len(dataset[1235].boxes) == 40
    # a copy sent to a worker process re-opens the file on first use
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._fd is None and clone[3999].sample_id == "s3999"

    detection = dataset.where(task="detection")
    assert len(detection) == n // 2 and detection[0].sample_id == "s1"
    assert len(dataset.where(task=Task.CLASSIFICATION, dataset="other")) == 0


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_line_offsets_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    from unihema.data import manifest as manifest_module

    monkeypatch.setattr(manifest_module, "_SCAN_CHUNK_BYTES", chunk)
    content = b'{"a": 1}\n\n{"bb": 22}\r\n\n\n{"ccc": 333}'  # blank lines, CRLF, no final newline
    path = tmp_path / "lines.jsonl"
    path.write_bytes(content)
    expected = [0, 10, 24]
    assert index_line_offsets(path).tolist() == expected
    path.write_bytes(content + b"\n")
    assert index_line_offsets(path).tolist() == expected
    path.write_bytes(b"")
    assert index_line_offsets(path).tolist() == []
