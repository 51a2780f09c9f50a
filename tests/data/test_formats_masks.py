"""Mask-pair reader on segmentation_wbc and bccd_nucleus_masks, on damaged copies, and on generic layouts."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.paths import dataset_path
from unihema.data.formats._common import ReaderWarning
from unihema.data.formats.base import WrongFormatError, detect_format, get_reader
from unihema.data.formats.masks import MaskReader
from unihema.data.formats.voc import VocReader
from unihema.data.schema import Task
from unihema.data.vocab import CELL_CLASSES, detection_index

# Expected skips are asserted with pytest.warns; keep the re-emitted ones out of the summary.
pytestmark = pytest.mark.filterwarnings("ignore::unihema.data.formats._common.ReaderWarning")

NUCLEUS_MASKS = "BloodImageSetS6NucSeg_masks"
WBC_CLASSES = {
    "Dataset 1": {"neutrophil": 176, "lymphocyte": 53, "monocyte": 48, "eosinophil": 22, "basophil": 1},
    "Dataset 2": {"neutrophil": 33, "lymphocyte": 37, "monocyte": 15, "eosinophil": 12, "basophil": 3},
}
STRAY_MASKS = {
    "Dataset 2/034.png",
    "Dataset 2/035.png",
    "Dataset 2/047.png",
    "Dataset 2/050.png",
    "Dataset 2/076.png",
}
RGBA_MASKS = {"00065", "00092", "00110", "00134", "00255", "00317", "00326", "00378"}


@pytest.mark.realdata
def test_segmentation_wbc_counts_classes_and_stray_values():
    result = get_reader("masks").read(dataset_path("segmentation_wbc"), verify_images=True)
    assert result.format == "masks" and result.skipped == []
    assert len(result.samples) == 400
    assert all(s.task is Task.SEGMENTATION and s.split is None for s in result.samples)
    groups = Counter(s.extra["group"] for s in result.samples)
    assert groups == {"Dataset 1": 300, "Dataset 2": 100}
    for group, expected in WBC_CLASSES.items():
        got = Counter(s.extra["class_name"] for s in result.samples if s.extra["group"] == group)
        assert got == expected, group
    # Stray editing values in 5 Dataset 2 masks are reported, and snapped to the nearest level.
    assert {f.path for f in result.fixed} == STRAY_MASKS
    assert "2, 7, 25, 42, 44, 45 (97 px)" in next(f.what for f in result.fixed if f.path.endswith("034.png"))
    sizes = Counter(s.image_size for s in result.samples if s.extra["group"] == "Dataset 1")
    assert sizes[(120, 120)] == 224 and len(sizes) > 1
    assert {s.image_size for s in result.samples if s.extra["group"] == "Dataset 2"} == {(300, 300)}
    assert result.annotated_classes == ()

    by_id = {s.sample_id: s for s in result.samples}
    sample = by_id["Dataset 2/047.bmp"]
    image, mask = sample.load_image(), sample.load_mask()
    assert mask.dtype == bool and mask.shape == (300, 300) and image.size == (300, 300)
    raw = np.asarray(Image.open(sample.extra["mask_path"]))
    np.testing.assert_array_equal(mask, raw >= 128)  # the 179 stray pixels of value 7 are background
    assert (raw == 7).sum() == 179


@pytest.mark.realdata
def test_segmentation_wbc_nucleus_mapping_and_classification_samples():
    root = dataset_path("segmentation_wbc")
    cell = MaskReader().read(root)
    nucleus = MaskReader().read(root, mapping="nucleus", classification=True)
    exact = MaskReader().read(root, mapping=[255])
    first_cell, first_nucleus, first_exact = cell.samples[0], nucleus.samples[0], exact.samples[0]
    assert first_cell.sample_id == first_nucleus.sample_id == "Dataset 1/001.bmp"
    cell_mask, nucleus_mask = first_cell.load_mask(), first_nucleus.load_mask()
    assert nucleus_mask.sum() > 0 and cell_mask.sum() > nucleus_mask.sum()
    assert not (nucleus_mask & ~cell_mask).any()  # the nucleus lies inside the cell
    np.testing.assert_array_equal(first_exact.load_mask(), nucleus_mask)
    assert 0.02 < cell_mask.mean() < 0.9

    classification = [s for s in nucleus.samples if s.task is Task.CLASSIFICATION]
    assert len(classification) == 400 and len(nucleus.samples) == 800
    counts = Counter(CELL_CLASSES[s.cell_class] for s in classification)
    assert counts == {"neutrophil": 209, "lymphocyte": 90, "monocyte": 63, "eosinophil": 34, "basophil": 4}
    assert nucleus.annotated_classes == ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
    assert len({s.sample_id for s in nucleus.samples}) == 800
    with pytest.raises(ValueError, match="mapping='membrane'"):
        MaskReader().read(root, mapping="membrane")


@pytest.mark.realdata
def test_bccd_nucleus_masks_pairs_with_bccd_images():
    with pytest.warns(ReaderWarning, match="BloodImage_00096"):
        result = get_reader("masks").read(dataset_path("bccd_nucleus_masks"), verify_images=True)
    assert len(result.samples) == 364
    assert sorted(s.path for s in result.skipped) == [
        f"{NUCLEUS_MASKS}/BloodImage_00096.png",
        f"{NUCLEUS_MASKS}/BloodImage_00280.png",
        f"{NUCLEUS_MASKS}/BloodImage_00329.png",
    ]
    assert all("has no image" in s.reason for s in result.skipped)
    rgba = sorted(Path(f.path).stem[-5:] for f in result.fixed if f.what.startswith("RGBA mask"))
    assert set(rgba) == RGBA_MASKS and len(result.fixed) == len(RGBA_MASKS)
    # The images are BCCD's, so the split is BCCD's own.
    assert Counter(s.split for s in result.samples) == {"train": 205, "val": 87, "test": 72}
    assert {s.image_size for s in result.samples} == {(480, 640)}
    assert not any(s.extra.get("empty_mask") for s in result.samples)
    assert all(s.source_path.parent.name == "JPEGImages" for s in result.samples)

    by_stem = {Path(s.sample_id).stem: s for s in result.samples}
    fractions = []
    for stem in ("BloodImage_00000", "BloodImage_00065"):  # a 1-bit and an RGBA mask
        mask = by_stem[stem].load_mask()
        assert mask.dtype == bool and mask.shape == (480, 640)
        fractions.append(mask.mean())
    assert all(0.014 <= f <= 0.092 for f in fractions)  # SOURCE: 1.4 %-9.2 % of the image
    # The nucleus lies inside BCCD's WBC box of the same image.
    bccd = {Path(s.sample_id).stem: s for s in VocReader().read(dataset_path("bccd")).samples}
    det = bccd["BloodImage_00000"]
    x0, y0, x1, y1 = det.boxes[det.box_labels == detection_index("wbc")][0].astype(int)
    mask = by_stem["BloodImage_00000"].load_mask()
    assert mask[y0:y1, x0:x1].sum() / mask.sum() > 0.95
    assert by_stem["BloodImage_00000"].load_image().size == (640, 480)


# --- damaged copies and generic layouts -----------------------------------------------------------------------


@pytest.mark.realdata
def test_segmentation_wbc_damaged_copy(tmp_path):
    src = dataset_path("segmentation_wbc")
    root = tmp_path / "wbc_copy"
    (root / "Dataset 1").mkdir(parents=True)
    for stem in ("001", "002", "003", "004", "005"):
        for ext in (".bmp", ".png"):
            shutil.copy(src / "Dataset 1" / f"{stem}{ext}", root / "Dataset 1")
    lines = (src / "Class Labels of Dataset 1.csv").read_bytes().split(b"\r\n")[:6]
    (root / "Class Labels of Dataset 1.csv").write_bytes(b"\r\n".join(lines + [b"77,1", b""]))
    (root / "Dataset 1/002.png").unlink()  # image without mask
    mask = root / "Dataset 1/003.png"
    mask.write_bytes(mask.read_bytes()[:100])  # truncated mask
    Image.new("L", (10, 10)).save(root / "Dataset 1/004.png")  # mask of the wrong size
    with pytest.warns(ReaderWarning, match="002.bmp"):
        result = MaskReader().read(root, dataset="segmentation_wbc", verify_images=True)
    reasons = {s.path: s.reason for s in result.skipped}
    assert set(reasons) == {
        "Dataset 1/002.bmp",
        "Dataset 1/003.png",
        "Dataset 1/004.png",
        "Class Labels of Dataset 1.csv",
    }
    assert "no mask" in reasons["Dataset 1/002.bmp"]
    assert "unreadable mask" in reasons["Dataset 1/003.png"]
    assert "10x10" in reasons["Dataset 1/004.png"]
    assert "image id 77" in reasons["Class Labels of Dataset 1.csv"]
    assert [s.sample_id for s in result.samples] == ["Dataset 1/001.bmp", "Dataset 1/005.bmp"]
    assert [s.extra["class_name"] for s in result.samples] == [
        "lymphocyte",
        "neutrophil",
    ]  # CSV rows 1,2 and 5,1


@pytest.mark.realdata
def test_bccd_nucleus_masks_copy_uses_sibling_bccd_and_reports_missing_images(tmp_path):
    masks_src = dataset_path("bccd_nucleus_masks") / NUCLEUS_MASKS
    images_src = dataset_path("bccd") / "BCCD/JPEGImages"
    root = tmp_path / "bccd_nucleus_masks"
    (root / NUCLEUS_MASKS).mkdir(parents=True)
    images = tmp_path / "bccd/BCCD/JPEGImages"
    images.mkdir(parents=True)
    for stem in ("BloodImage_00000", "BloodImage_00001", "BloodImage_00065"):
        shutil.copy(masks_src / f"{stem}.png", root / NUCLEUS_MASKS)
        if stem != "BloodImage_00001":
            shutil.copy(images_src / f"{stem}.jpg", images)
    assert MaskReader().sniff(root)
    with pytest.warns(ReaderWarning, match="BloodImage_00001"):
        result = MaskReader().read(root)
    assert [s.path for s in result.skipped] == [f"{NUCLEUS_MASKS}/BloodImage_00001.png"]
    assert len(result.samples) == 2 and all(s.split is None for s in result.samples)  # no split lists copied
    other = tmp_path / "elsewhere"
    shutil.copytree(images, other)
    (other / "BloodImage_00000.jpg").unlink()
    with pytest.warns(ReaderWarning):
        moved = MaskReader().read(root, images_root=other)
    assert sorted(Path(s.path).stem for s in moved.skipped) == ["BloodImage_00000", "BloodImage_00001"]
    with pytest.raises(FileNotFoundError, match="images_root"):
        MaskReader().read(root, images_root=tmp_path / "nope")


def test_images_and_masks_folders_layout(tmp_path):
    root = tmp_path / "generic"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    grid = np.zeros((20, 30), np.uint8)
    grid[5:10, 5:15] = 1
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "images" / f"{stem}.jpg")
    Image.fromarray(grid).save(root / "masks/a.png")
    Image.fromarray(grid).save(root / "masks/c.png")
    assert detect_format(root) == "masks"
    with pytest.warns(ReaderWarning):
        result = MaskReader().read(root)
    assert {s.path: s.reason.split(" ")[2] for s in result.skipped} == {
        "images/b.jpg": "no",
        "masks/c.png": "no",
    }
    (sample,) = result.samples
    mask = sample.load_mask()
    assert mask.shape == (20, 30) and mask.sum() == 50


@pytest.mark.realdata
def test_masks_sniff_and_wrong_format():
    assert MaskReader().sniff(dataset_path("segmentation_wbc"))
    assert MaskReader().sniff(dataset_path("bccd_nucleus_masks"))
    assert detect_format(dataset_path("segmentation_wbc")) == "masks"
    assert detect_format(dataset_path("bccd_nucleus_masks")) == "masks"
    for name in (
        "bccd",
        "txl_pbc",
        "fiocruz_malaria_thick",
        "pbc",
        "bccd_wbc_crops",
        "chula_rbc12",
        "sickle_uganda",
    ):
        assert not MaskReader().sniff(dataset_path(name)), name
    # The message says what was expected and which folders were looked in.
    with pytest.raises(
        WrongFormatError, match=r"expected image \+ mask pairs: .*; looked in .*'TXL_PBC/images/'.*, found"
    ):
        MaskReader().read(dataset_path("txl_pbc"))
