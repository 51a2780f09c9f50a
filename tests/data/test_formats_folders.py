"""Class-folder reader: PBC, BCCD WBC crops, Uganda sickle fields, erythrocytesIDB1 (+ broken copies)."""

from __future__ import annotations

import shutil
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.paths import dataset_path
from unihema.data.formats import detect_format, get_reader
from unihema.data.formats.base import WrongFormatError
from unihema.data.formats.folders import ClassFolderReader, detect_layout
from unihema.data.schema import ReadResult, Task
from unihema.data.vocab import CELL_CLASSES


def _read(root: Path, **options: object) -> tuple[ReadResult, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = get_reader("folders").read(root, **options)
    return result, [str(w.message) for w in caught]


def _classes(result: ReadResult, task: Task = Task.CLASSIFICATION) -> Counter:
    return Counter(CELL_CLASSES[s.cell_class] for s in result.samples if s.task is task)


def _jpeg(
    path: Path, colour: tuple[int, int, int] = (200, 100, 150), size: tuple[int, int] = (24, 20)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))  # different pixels per path
    pixels = np.clip(np.asarray(colour) + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255).astype(
        np.uint8
    )
    Image.fromarray(pixels).save(path, quality=90)
    return path


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_pbc_counts_and_prefixes() -> None:
    root = dataset_path("pbc")
    assert detect_format(root) == "folders"
    result, messages = _read(root)
    assert result.dataset == "pbc" and result.format == "folders"
    assert len(result.samples) == 2560 and not result.skipped and not result.fixed and not messages
    names = ("basophil", "eosinophil", "erythroblast", "immature granulocyte", "lymphocyte", "monocyte",
             "neutrophil", "platelet")  # fmt: skip
    assert _classes(result) == dict.fromkeys(names, 320)
    assert result.annotated_classes == tuple(sorted(names))
    prefixes = Counter((s.extra["folder"], s.extra["prefix"]) for s in result.samples)
    assert {k[1]: v for k, v in prefixes.items() if k[0] == "ig"} == {
        "MY": 126,
        "MMY": 112,
        "PMY": 65,
        "IG": 17,
    }
    assert {k[1]: v for k, v in prefixes.items() if k[0] == "neutrophil"} == {
        "BNE": 249,
        "SNE": 67,
        "NEUTROPHIL": 4,
    }
    assert Counter(s.image_size for s in result.samples) == {
        (363, 360): 2486,
        (369, 366): 45,
        (360, 360): 28,
        (360, 362): 1,
    }
    first = result.samples[0]
    assert first.split is None and first.disease == "healthy" and first.source_path.is_file()
    assert first.sample_id.startswith("PBC_dataset_normal_DIB/") and first.load_image().mode == "RGB"
    subtypes = _classes(ClassFolderReader().read(root, use_subtypes=True))
    assert (
        subtypes["myelocyte"] == 126
        and subtypes["band neutrophil"] == 249
        and subtypes["segmented neutrophil"] == 67
    )
    assert subtypes["immature granulocyte"] == 17 and subtypes["neutrophil"] == 4


@pytest.mark.realdata
def test_bccd_wbc_crops_counts_and_labels_csv_agree() -> None:
    result, messages = _read(dataset_path("bccd_wbc_crops"))
    assert result.dataset == "bccd_wbc_crops"
    assert _classes(result) == {
        "neutrophil": 207,
        "eosinophil": 88,
        "lymphocyte": 33,
        "monocyte": 20,
        "basophil": 3,
    }
    # labels.csv (CRLF, unnamed first column, empty and multi-label rows) agrees with every folder label
    assert not result.skipped and not result.fixed and not messages
    assert {s.extra["folder"] for s in result.samples} == {
        "Neutrophil",
        "Eosinophil",
        "Lymphocyte",
        "Monocyte",
        "Basophil",
    }


@pytest.mark.realdata
def test_sickle_uganda_uses_clean_copies() -> None:
    result, messages = _read(dataset_path("sickle_uganda"))
    assert result.dataset == "sickle_uganda"
    # 30 positive fields less 155, whose "Unlabelled" copy is byte-identical to the boxed one
    assert _classes(result) == {"sickle-positive field": 29, "sickle-negative field": 30}
    assert [s.path for s in result.skipped] == ["Datasets/Positive/Unlabelled/155.jpg"]
    assert "drawn boxes" in result.skipped[0].reason
    assert any("Unlabelled/155.jpg" in m for m in messages)
    assert len(result.fixed) == 30 and all("/Labelled/" in f.path for f in result.fixed)
    assert not any("/Labelled/" in s.sample_id for s in result.samples)
    assert all(s.disease == "sickle cell disease" and s.split is None for s in result.samples)


@pytest.mark.realdata
def test_erythrocytesidb1_images_and_masks() -> None:
    result, messages = _read(dataset_path("erythrocytesidb1"))
    assert result.dataset == "erythrocytesidb1" and not result.skipped and not messages
    assert _classes(result) == {"circular rbc": 202, "elongated rbc": 211, "other rbc shape": 213}
    cls = [s for s in result.samples if s.task is Task.CLASSIFICATION]
    seg = [s for s in result.samples if s.task is Task.SEGMENTATION]
    assert Counter(s.split for s in cls) == {"train": 500, "test": 126}
    assert len(seg) == 626 and Counter(s.split for s in seg) == {"train": 500, "test": 126}
    fixed = {f.path: f.what for f in result.fixed}
    assert set(fixed) == {
        "5-fold/segmentadas/round_1/train/falciforme/e0047.tif",
        "5-fold/segmentadas/round_1/train/outras/o0048.tif",
        "5-fold/segmentadas/round_1/test/falciforme/e0031.tif",
    }
    assert "byte-identical" in fixed["5-fold/segmentadas/round_1/test/falciforme/e0031.tif"]
    e0047 = next(s for s in seg if s.sample_id.endswith("falciforme/e0047.jpg#mask"))
    assert e0047.split == "test" and "train/falciforme/e0047.tif" in e0047.extra["mask_path"]
    mask = e0047.load_mask()
    assert mask.shape == (80, 80) and mask.dtype == bool and 0.05 < mask.mean() < 0.51
    only_seg = ClassFolderReader().read(dataset_path("erythrocytesidb1"), tasks="segmentation")
    assert {s.task for s in only_seg.samples} == {Task.SEGMENTATION}
    with pytest.raises(ValueError, match="detection"):
        ClassFolderReader().read(dataset_path("erythrocytesidb1"), tasks=["detection"])


@pytest.mark.realdata
def test_other_formats_are_not_class_folders() -> None:
    for name in ("chula_rbc12", "wbcatt", "segmentation_wbc", "bccd"):
        root = dataset_path(name)
        assert not ClassFolderReader().sniff(root), name
    with pytest.raises(WrongFormatError, match="expected class folders"):
        ClassFolderReader().read(dataset_path("chula_rbc12"))


# ------------------------------------------------------------------------------------- broken copies


def test_broken_class_folder_reports_each_file(tmp_path: Path) -> None:
    root = tmp_path / "cells"
    for i in range(3):
        _jpeg(root / "basophil" / f"BA_{i}.jpg", (120, 60, 160))
        _jpeg(root / "eosinophil" / f"EO_{i}.jpg", (220, 120, 90))
    truncated = _jpeg(root / "eosinophil" / "EO_9.jpg", size=(200, 200))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (root / "basophil" / "notes.txt").write_text("not an image")
    (root / "basophil" / "BA_garbage.jpg").write_bytes(b"\x00\x01 not a jpeg")
    (root / "basophil" / ".DS_123.jpg").write_bytes(b"\x00\x00\x00\x01Bud1")
    shutil.copy(root / "basophil" / "BA_0.jpg", root / "basophil" / "BA_copy.jpg")  # same class: loaded once
    shutil.copy(root / "basophil" / "BA_1.jpg", root / "eosinophil" / "EO_conflict.jpg")  # two labels

    result, messages = _read(root)
    skipped = {s.path: s.reason for s in result.skipped}
    assert "unreadable image" in skipped["basophil/BA_garbage.jpg"]
    assert "not an image file" in skipped["basophil/notes.txt"]
    assert "hidden" in skipped["basophil/.DS_123.jpg"]
    assert (
        "labelled differently" in skipped["basophil/BA_1.jpg"]
        and "labelled differently" in skipped["eosinophil/EO_conflict.jpg"]
    )
    assert [f.path for f in result.fixed] == ["basophil/BA_copy.jpg"]
    assert any("BA_garbage.jpg" in m for m in messages)
    assert not any(".DS_123" in m for m in messages)  # hidden files are skipped quietly
    # header-only by default: the truncated JPEG still loads; the rest of the folder loads too
    assert _classes(result) == {"basophil": 2, "eosinophil": 4}
    assert result.dataset == "cells" and all(s.disease is None for s in result.samples)

    verified, messages = _read(root, verify_images=True)
    assert "eosinophil/EO_9.jpg" in {s.path for s in verified.skipped}
    assert any("EO_9.jpg" in m for m in messages)
    assert _classes(verified) == {"basophil": 2, "eosinophil": 3}


def test_split_folders_and_unknown_class(tmp_path: Path) -> None:
    for split in ("train", "valid"):
        _jpeg(tmp_path / split / "monocyte" / "a.png")
        _jpeg(tmp_path / split / "Lymphocyte" / "b.jpg")
        _jpeg(tmp_path / split / "mystery" / "c.jpg")
    layout = detect_layout(tmp_path)
    assert (
        layout is not None
        and layout.kind == "imagefolder"
        and dict(layout.splits) == {"train": "train", "valid": "val"}
    )
    result, messages = _read(tmp_path)
    assert Counter(s.split for s in result.samples) == {"train": 2, "val": 2}
    assert {s.path for s in result.skipped} == {"train/mystery", "valid/mystery"}
    assert any("mystery" in m for m in messages)
    mapped, _ = _read(tmp_path, class_map={"mystery": "platelet"})
    assert _classes(mapped)["platelet"] == 2 and not mapped.skipped


def test_wrong_format_and_lookalikes(tmp_path: Path) -> None:
    _jpeg(tmp_path / "Dataset 1" / "001.bmp")
    _jpeg(tmp_path / "Dataset 2" / "001.bmp")
    assert not ClassFolderReader().sniff(tmp_path)  # folders not named after classes
    with pytest.raises(WrongFormatError) as err:
        ClassFolderReader().read(tmp_path)
    assert str(err.value).count(". ") == 0 and "Dataset 1/" in str(err.value)
    yolo = tmp_path / "yolo"
    _jpeg(yolo / "images" / "a.jpg")
    _jpeg(yolo / "labels" / "a.jpg")
    assert not ClassFolderReader().sniff(yolo)
    with pytest.raises(TypeError, match="crop_size"):
        ClassFolderReader().read(tmp_path, class_map={"Dataset 1": "rbc", "Dataset 2": "wbc"}, crop_size=3)


def test_bccd_labels_csv_disagreement_is_reported(tmp_path: Path) -> None:
    crops = tmp_path / "BCCD_cropped"
    _jpeg(crops / "Neutrophil" / "BloodImage_00001_1.jpg")
    _jpeg(crops / "Neutrophil" / "BloodImage_00002_1.jpg")
    _jpeg(crops / "Eosinophil" / "BloodImage_00003_1.jpg")
    _jpeg(crops / "Eosinophil" / "BloodImage_00004_1.jpg")
    (tmp_path / "labels.csv").write_bytes(
        b',Image,Category\r\n,1,NEUTROPHIL\r\n,2,MONOCYTE\r\n,3,"NEUTROPHIL, EOSINOPHIL"\r\n,4,\r\n,x,bad\r\n'
    )
    result, messages = _read(tmp_path)
    assert result.dataset == "bccd_wbc_crops" and len(result.samples) == 4
    assert [f.path for f in result.fixed] == ["BCCD_cropped/Neutrophil/BloodImage_00002_1.jpg"]
    assert "monocyte" in result.fixed[0].what and "'Neutrophil' is used" in result.fixed[0].what
    assert [s.path for s in result.skipped] == ["labels.csv:6"]
    assert any("1 crops disagree" in m for m in messages)


def test_sickle_layout_broken_copy(tmp_path: Path) -> None:
    base = tmp_path / "Datasets"
    _jpeg(base / "Positive" / "Unlabelled" / "1.jpg", (180, 150, 200))
    _jpeg(base / "Positive" / "Labelled" / "1.jpg", (10, 10, 10))
    _jpeg(base / "Positive" / "Unlabelled" / "2.jpg", (170, 160, 190))
    shutil.copy(base / "Positive" / "Unlabelled" / "2.jpg", base / "Positive" / "Labelled" / "2.jpg")
    _jpeg(base / "Positive" / "Labelled" / "3.jpg")  # boxed copy only
    _jpeg(base / "Negative" / "Clear" / "1.jpg", (200, 180, 220))
    shutil.copy(base / "Negative" / "Clear" / "1.jpg", base / "Negative" / "Clear" / "4.jpg")
    result, messages = _read(tmp_path)
    assert _classes(result) == {"sickle-positive field": 1, "sickle-negative field": 1}
    skipped = {s.path: s.reason for s in result.skipped}
    assert set(skipped) == {"Datasets/Positive/Unlabelled/2.jpg", "Datasets/Positive/Labelled/3.jpg"}
    fixed = {f.path: f.what for f in result.fixed}
    assert "clean copy" in fixed["Datasets/Positive/Labelled/1.jpg"]
    assert "byte-identical" in fixed["Datasets/Negative/Clear/4.jpg"]
    assert any("Labelled/3.jpg" in m for m in messages)


def _ery(root: Path, tree: str, split: str, cls: str, stem: str) -> None:
    if tree == "originais":
        _jpeg(root / "originais" / "round_1" / split / cls / f"{stem}.jpg", size=(16, 16))
    else:
        path = root / "segmentadas" / "round_1" / split / cls / f"{stem}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 2 + zlib.crc32(stem.encode()) % 6 : 12] = 255  # a different mask per stem
        Image.fromarray(mask).save(path)


def test_erythrocytes_missing_and_moved_masks(tmp_path: Path) -> None:
    for stem in ("c0001", "c0002"):
        _ery(tmp_path, "originais", "train", "circular", stem)
    _ery(tmp_path, "originais", "test", "falciforme", "e0001")
    _ery(tmp_path, "segmentadas", "train", "circular", "c0001")
    _ery(tmp_path, "segmentadas", "train", "falciforme", "e0001")  # split disagrees with the image
    _ery(tmp_path, "segmentadas", "test", "outras", "o0009")  # no image
    result, messages = _read(tmp_path)
    assert _classes(result) == {"circular rbc": 2, "elongated rbc": 1}  # classification is unaffected
    seg = [s for s in result.samples if s.task is Task.SEGMENTATION]
    assert sorted(s.sample_id for s in seg) == [
        "originais/round_1/test/falciforme/e0001.jpg#mask",
        "originais/round_1/train/circular/c0001.jpg#mask",
    ]
    assert next(s for s in seg if "e0001" in s.sample_id).split == "test"
    skipped = {s.path: s.reason for s in result.skipped}
    assert "no mask circular/c0002" in skipped["originais/round_1/train/circular/c0002.jpg#mask"]
    assert "without an image" in skipped["segmentadas/round_1/test/outras/o0009.tif"]
    assert any("c0002" in m for m in messages) and any("o0009" in m for m in messages)
    assert [f.path for f in result.fixed] == ["segmentadas/round_1/train/falciforme/e0001.tif"]
    assert seg[0].load_mask().sum() > 0
    with pytest.raises(ValueError, match="round_7"):
        ClassFolderReader().read(tmp_path, fold="round_7")
