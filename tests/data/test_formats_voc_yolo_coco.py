"""Box readers (VOC, YOLO, COCO) on the staged real datasets, on damaged copies of them, and on a COCO file."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.paths import dataset_path
from unihema.data.formats.base import WrongFormatError, detect_format, get_reader
from unihema.data.formats.coco import CocoReader
from unihema.data.formats.voc import VocReader
from unihema.data.formats.yolo import YoloReader, species_from_name
from unihema.data.schema import UNKNOWN, Task
from unihema.data.vocab import DETECTION_CLASSES, FOV_ATTRIBUTE_NAMES, detection_index

# Expected skips are asserted with pytest.warns; keep the re-emitted ones out of the summary.
pytestmark = pytest.mark.filterwarnings("ignore::unihema.data.formats._common.ReaderWarning")

TXL_LABELS = Path("TXL_PBC/labels")
FIOCRUZ = Path("Malaria.v2-dataset_1_to_7_esquerdo")


def class_counts(samples, by_split: bool = False) -> Counter:
    counts: Counter = Counter()
    for s in samples:
        for label in s.box_labels.tolist():
            counts[(s.split, DETECTION_CLASSES[label]) if by_split else DETECTION_CLASSES[label]] += 1
    return counts


def assert_boxes_inside(samples) -> None:
    for s in samples:
        h, w = s.image_size
        assert (s.boxes[:, 0] >= 0).all() and (s.boxes[:, 1] >= 0).all(), s.sample_id
        assert (s.boxes[:, 2] <= w).all() and (s.boxes[:, 3] <= h).all(), s.sample_id
        assert (s.boxes[:, 2] > s.boxes[:, 0]).all() and (s.boxes[:, 3] > s.boxes[:, 1]).all(), s.sample_id


# --- real datasets ---------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_bccd_counts_quirks_and_one_image():
    result = get_reader("voc").read(dataset_path("bccd"))
    assert result.dataset == "bccd" and result.format == "voc"
    assert len(result.samples) == 364
    assert result.skipped == []
    # 4155 RBC boxes minus the 2 zero-area ones (00338, 00343), dropped on purpose.
    assert class_counts(result.samples) == {"rbc": 4153, "wbc": 372, "platelet": 361}
    assert sorted((f.path, f.what.split(":")[0]) for f in result.fixed) == [
        ("BCCD/Annotations/BloodImage_00338.xml", "dropped RBC box (504, 337, 504, 337)"),
        ("BCCD/Annotations/BloodImage_00343.xml", "dropped RBC box (181, 329, 181, 329)"),
    ]
    assert Counter(s.split for s in result.samples) == {"train": 205, "val": 87, "test": 72}
    assert {s.image_size for s in result.samples} == {(480, 640)}
    assert result.annotated_classes == ("platelet", "rbc", "wbc")
    assert all(s.task is Task.DETECTION and s.disease == "healthy" for s in result.samples)
    flagged = sorted(Path(s.sample_id).stem[-5:] for s in result.samples if "annotation_issue" in s.extra)
    assert flagged == ["00133", "00135", "00171", "00178", "00228", "00327"]
    assert_boxes_inside(result.samples)

    sample = next(s for s in result.samples if s.sample_id.endswith("BloodImage_00000.jpg"))
    image = sample.load_image()
    assert image.mode == "RGB" and image.size == (640, 480)
    assert sample.source_path.is_file() and sample.split == "val"
    wbc = sample.boxes[sample.box_labels == detection_index("WBC")]
    np.testing.assert_array_equal(wbc, [[260, 177, 491, 376]])


@pytest.mark.realdata
def test_txl_pbc_counts_per_split_and_stray_class_files():
    result = get_reader("yolo").read(dataset_path("txl_pbc"))
    assert len(result.samples) == 1440
    assert result.skipped == []
    assert Counter(s.split for s in result.samples) == {"train": 1008, "val": 288, "test": 144}
    assert class_counts(result.samples, by_split=True) == {
        ("train", "wbc"): 1055, ("val", "wbc"): 305, ("test", "wbc"): 155,
        ("train", "rbc"): 16965, ("val", "rbc"): 4850, ("test", "rbc"): 2456,
        ("train", "platelet"): 596, ("val", "platelet"): 179, ("test", "platelet"): 76,
    }  # fmt: skip
    assert Counter(s.image_size for s in result.samples) == {
        (575, 575): 500,
        (363, 360): 486,
        (369, 366): 14,
        (416, 416): 219,
        (480, 640): 221,
    }
    ignored = sorted(f.path for f in result.fixed if "not a label file" in f.what)
    assert ignored == [(TXL_LABELS / s / "classes.txt").as_posix() for s in ("test", "train", "val")]
    # Platelets / Platelet / PC all read as one vocabulary class; nothing else was changed.
    aliases = sorted(f.path for f in result.fixed if "both read as 'platelet'" in f.what)
    assert aliases == [(TXL_LABELS / p).as_posix() for p in ("classes.txt", "test/classes.txt",
                                                             "train/classes.txt", "val/classes.txt")]  # fmt: skip
    assert len(result.fixed) == 7
    assert result.annotated_classes == ("platelet", "rbc", "wbc")
    assert_boxes_inside(result.samples)

    sample = next(s for s in result.samples if "01252e0c-0bf1-535d-ad2d-bca294125f0a" in s.sample_id)
    h, w = sample.image_size
    assert sample.load_image().size == (w, h)
    # First label line "0 0.454327 0.396635 0.331731 0.442308" -> WBC box in pixels.
    expected = [(0.454327 - 0.331731 / 2) * w, (0.396635 - 0.442308 / 2) * h, (0.454327 + 0.331731 / 2) * w]
    np.testing.assert_allclose(sample.boxes[0, :3], expected, atol=1e-3)
    assert sample.box_labels[0] == detection_index("wbc")


@pytest.mark.realdata
def test_fiocruz_malaria_counts_and_species_disagreements():
    result = get_reader("yolo").read(dataset_path("fiocruz_malaria_thick"))
    assert len(result.samples) == 70
    assert result.skipped == []
    assert Counter(s.split for s in result.samples) == {"train": 30, "val": 20, "test": 20}
    assert class_counts(result.samples, by_split=True) == {
        ("train", "p. falciparum"): 191, ("train", "p. vivax"): 67,
        ("val", "p. falciparum"): 126, ("val", "p. vivax"): 38,
        ("test", "p. falciparum"): 119, ("test", "p. vivax"): 37,
    }  # fmt: skip
    falciparum, vivax = detection_index("p.falciparum"), detection_index("p.vivax")
    assert sum(falciparum in s.box_labels for s in result.samples) == 35
    assert sum(vivax in s.box_labels for s in result.samples) == 37
    assert {s.image_size for s in result.samples} == {(3000, 4000)}
    assert {s.disease for s in result.samples} == {"malaria"}
    assert result.annotated_classes == ("p. falciparum", "p. vivax")
    disagreeing = sorted(
        s.extra["original_name"] for s in result.samples if s.extra.get("species_disagreement")
    )
    assert disagreeing == ["L4454PV_9", "L4806pf10", "L4806pf12", "L5049PV_4"]
    assert len(result.fixed) == 4 and all("kept the box labels" in f.what for f in result.fixed)
    no_code = next(s for s in result.samples if s.extra["original_name"] == "L5049F_1")
    assert no_code.extra["name_species"] is None and no_code.extra["slide"] == "L5049"
    # The same base name in valid and test is two different samples.
    assert sum(s.extra["original_name"] == "L2683PF_2" for s in result.samples) == 1
    assert len({s.sample_id for s in result.samples}) == 70
    assert_boxes_inside(result.samples)

    sample = min(result.samples, key=lambda s: s.sample_id)
    assert sample.load_image().size == (4000, 3000)
    widths = np.concatenate([s.boxes[:, 2] - s.boxes[:, 0] for s in result.samples])
    assert 60 < float(np.median(widths)) < 300  # SOURCE: median about 153 px


def test_species_from_name():
    assert species_from_name("L2683_PF5") == ("L2683PF", "p. falciparum")
    assert species_from_name("L4806pf10") == ("L4806PF", "p. falciparum")
    assert species_from_name("L30PV_14") == ("L30PV", "p. vivax")
    assert species_from_name("L5049F_1") == ("L5049", None)
    assert species_from_name("BloodImage_00001") == (None, None)


# --- damaged copies ----------------------------------------------------------------------------------------


def _copy_bccd(tmp_path: Path, ids: list[str]) -> Path:
    src = dataset_path("bccd") / "BCCD"
    root = tmp_path / "bccd_copy"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for image_id in ids:
        shutil.copy(src / "Annotations" / f"{image_id}.xml", root / "Annotations")
        shutil.copy(src / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.mark.realdata
def test_voc_damaged_copy_reports_each_problem(tmp_path):
    ids = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00002", "BloodImage_00003", "BloodImage_00004"]
    root = _copy_bccd(tmp_path, ids)
    jpg = root / "JPEGImages/BloodImage_00000.jpg"
    jpg.write_bytes(jpg.read_bytes()[:2000])  # truncated image
    xml = root / "Annotations/BloodImage_00001.xml"
    xml.write_text(xml.read_text()[:300])  # malformed XML
    (root / "JPEGImages/BloodImage_00002.jpg").unlink()  # annotation without image
    shutil.copy(root / "JPEGImages/BloodImage_00003.jpg", root / "JPEGImages/BloodImage_09999.jpg")  # no XML
    with pytest.warns(UserWarning, match="BloodImage_00001.xml"):
        result = VocReader().read(root, verify_images=True)
    reasons = {s.path: s.reason for s in result.skipped}
    assert set(reasons) == {
        "JPEGImages/BloodImage_00000.jpg",
        "Annotations/BloodImage_00001.xml",
        "Annotations/BloodImage_00002.xml",
        "JPEGImages/BloodImage_09999.jpg",
    }
    assert "truncated" in reasons["JPEGImages/BloodImage_00000.jpg"]
    assert "malformed XML" in reasons["Annotations/BloodImage_00001.xml"]
    assert "not found" in reasons["Annotations/BloodImage_00002.xml"]
    assert "no annotation" in reasons["JPEGImages/BloodImage_09999.jpg"]
    assert [s.sample_id for s in result.samples] == [
        "JPEGImages/BloodImage_00003.jpg",
        "JPEGImages/BloodImage_00004.jpg",
    ]
    assert {s.split for s in result.samples} == {"train"}
    # Without verification the truncated image is not decoded, so it still loads (cheap read).
    assert len(VocReader().read(root).samples) == 3


@pytest.mark.realdata
def test_voc_unknown_class_and_bad_coordinates(tmp_path):
    root = _copy_bccd(tmp_path, ["BloodImage_00000", "BloodImage_00001", "BloodImage_00003"])
    xml = root / "Annotations/BloodImage_00000.xml"
    xml.write_text(xml.read_text().replace("<name>WBC</name>", "<name>Alien</name>"))
    xml = root / "Annotations/BloodImage_00001.xml"
    xml.write_text(xml.read_text().replace("<xmax>", "<xmax>-", 1))
    with pytest.warns(UserWarning):
        result = VocReader().read(root)
    reasons = {s.path: s.reason for s in result.skipped}
    assert "'Alien' is not in the detection vocabulary" in reasons["Annotations/BloodImage_00000.xml"]
    assert "max < min" in reasons["Annotations/BloodImage_00001.xml"]
    assert len(result.samples) == 1
    # The same file reads once the class is mapped.
    mapped = VocReader().read(root, class_map={"Alien": "wbc"})
    assert "Annotations/BloodImage_00000.xml" not in {s.path for s in mapped.skipped}


def _copy_txl(tmp_path: Path, n: int = 4) -> tuple[Path, list[str]]:
    src = dataset_path("txl_pbc") / "TXL_PBC"
    root = tmp_path / "txl_copy"
    (root / "images/train").mkdir(parents=True)
    (root / "labels/train").mkdir(parents=True)
    stems = sorted(p.stem for p in (src / "images/train").glob("*.jpg"))[:n]
    for stem in stems:
        shutil.copy(src / "images/train" / f"{stem}.jpg", root / "images/train")
        shutil.copy(src / "labels/train" / f"{stem}.txt", root / "labels/train")
    shutil.copy(src / "data.yaml", root)
    shutil.copy(src / "labels/train/classes.txt", root / "labels/train")
    return root, stems


@pytest.mark.realdata
def test_yolo_damaged_copy_reports_each_problem(tmp_path):
    root, stems = _copy_txl(tmp_path, n=6)
    labels = root / "labels/train"
    good = (labels / f"{stems[0]}.txt").read_text()
    # Box partly outside (clipped), box wholly outside (dropped), in an otherwise valid file.
    (labels / f"{stems[0]}.txt").write_text(good + "1 0.98 0.5 0.2 0.2\n1 1.5 1.5 0.1 0.1\n")
    (labels / f"{stems[1]}.txt").write_text(good + "1 0.5 0.5 0.2\n")  # malformed line
    (labels / f"{stems[2]}.txt").write_text(good + "7 0.5 0.5 0.2 0.2\n")  # class id out of range
    image = root / "images/train" / f"{stems[3]}.jpg"
    image.write_bytes(image.read_bytes()[:1500])  # truncated
    (root / "images/train" / f"{stems[4]}.jpg").unlink()  # label without image
    with pytest.warns(UserWarning, match=stems[1]):
        result = YoloReader().read(root, verify_images=True)
    reasons = {s.path: s.reason for s in result.skipped}
    assert set(reasons) == {
        f"labels/train/{stems[1]}.txt",
        f"labels/train/{stems[2]}.txt",
        f"images/train/{stems[3]}.jpg",
        f"labels/train/{stems[4]}.txt",
    }
    n_good = len(good.strip().splitlines())
    assert f"line {n_good + 1}: expected 5 fields" in reasons[f"labels/train/{stems[1]}.txt"]
    assert "class id 7" in reasons[f"labels/train/{stems[2]}.txt"]
    assert "truncated" in reasons[f"images/train/{stems[3]}.jpg"]
    assert "no image" in reasons[f"labels/train/{stems[4]}.txt"]
    fixes = [f.what for f in result.fixed if f.path == f"labels/train/{stems[0]}.txt"]
    assert any(w.startswith("clipped rbc box") for w in fixes)
    assert any(w.startswith("dropped rbc box") and "outside the image" in w for w in fixes)
    assert sorted(Path(s.sample_id).stem for s in result.samples) == [stems[0], stems[5]]
    first = next(s for s in result.samples if stems[0] in s.sample_id)
    assert len(first.boxes) == n_good + 1  # the clipped box is kept, the outside one dropped
    assert first.boxes[:, 2].max() == first.image_size[1]
    assert {s.split for s in result.samples} == {"train"}


@pytest.mark.realdata
def test_yolo_image_without_label_is_an_empty_image_and_names_conflict_fails(tmp_path):
    root, stems = _copy_txl(tmp_path, n=2)
    (root / "labels/train" / f"{stems[0]}.txt").unlink()
    result = YoloReader().read(root)
    empty = next(s for s in result.samples if stems[0] in s.sample_id)
    assert len(empty.boxes) == 0
    assert any("no label file" in f.what for f in result.fixed)
    (root / "labels/train/classes.txt").write_text("RBC\nWBC\nPC\n")
    with pytest.raises(ValueError, match="disagree"):
        YoloReader().read(root)


# --- COCO --------------------------------------------------------------------------------------------------


def _write_image(path: Path, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(path)


def _coco_fixture(root: Path) -> Path:
    for name in ("a.png", "b.png", "c.png", "e.png"):
        _write_image(root / "images" / name)
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
            {"id": 3, "file_name": "c.png", "width": 64, "height": 48},
            {"id": 4, "file_name": "missing.png", "width": 64, "height": 48},
            {"id": 5, "file_name": "e.png"},
        ],
        "categories": [
            {"id": 0, "name": "cells", "supercategory": "none"},
            {"id": 1, "name": "WBC"},
            {"id": 2, "name": "Platelets"},
            {"id": 3, "name": "Mystery"},
            {"id": 4, "name": "myeloblast"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [30, 30, 0, 0]},  # zero area
            {"id": 12, "image_id": 1, "category_id": 2, "bbox": [50, 40, 30, 20]},  # partly outside
            {"id": 13, "image_id": 1, "category_id": 2, "bbox": [100, 100, 5, 5]},  # wholly outside
            {"id": 20, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]},  # unknown to the vocabulary
            {"id": 30, "image_id": 3, "category_id": 4, "bbox": [2, 2, 10, 10],
             "attributes": {"nuclear_chromatin": "coarse", "nucleolus": 1, "cytoplasm": "plenty"}},
            {"id": 31, "image_id": 3, "category_id": 4, "bbox": [20, 20, 10, 10], "nuclear_shape": "irregular"},
            {"id": 32, "image_id": 3, "category_id": 4, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            {"id": 40, "image_id": 5, "category_id": 9, "bbox": [1, 1, 5, 5]},  # undefined category id
        ],
    }  # fmt: skip
    path = root / "annotations" / "instances_val.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(coco))
    return path


def test_coco_reads_boxes_attributes_and_reports_quirks(tmp_path):
    root = tmp_path / "my_coco"
    _coco_fixture(root)
    with pytest.warns(UserWarning, match="missing.png"):
        result = get_reader("coco").read(root)
    assert result.dataset == "my_coco" and result.format == "coco"
    reasons = {s.path: s.reason for s in result.skipped}
    assert set(reasons) == {
        "annotations/instances_val.json: image 2 (b.png)",
        "annotations/instances_val.json: image 4 (missing.png)",
        "annotations/instances_val.json: image 5 (e.png)",
    }
    assert (
        "'Mystery' is not in the detection vocabulary"
        in reasons["annotations/instances_val.json: image 2 (b.png)"]
    )
    assert "not found" in reasons["annotations/instances_val.json: image 4 (missing.png)"]
    assert "category id 9 is not defined" in reasons["annotations/instances_val.json: image 5 (e.png)"]
    by_id = {s.sample_id: s for s in result.samples}
    assert set(by_id) == {"images/a.png", "images/c.png"}

    a = by_id["images/a.png"]
    assert a.task is Task.DETECTION and a.split == "val" and a.image_size == (48, 64)
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 15], [50, 40, 64, 48]])
    assert [DETECTION_CLASSES[i] for i in a.box_labels] == ["wbc", "platelet"]
    fixes = [f.what for f in result.fixed if "(a.png)" in f.path]
    assert len(fixes) == 3
    assert any("zero area" in w for w in fixes) and any("outside the image" in w for w in fixes)
    assert any(w.startswith("clipped platelet box (50, 40, 80, 60)") for w in fixes)

    c = by_id["images/c.png"]
    assert c.task is Task.FOV_MORPHOLOGY
    assert len(c.boxes) == 2 and c.extra["crowd_boxes"].shape == (1, 4)
    col = {name: i for i, name in enumerate(FOV_ATTRIBUTE_NAMES)}
    assert c.box_attributes[0, col["nuclear_chromatin"]] == 1
    assert c.box_attributes[0, col["nucleolus"]] == 1
    assert c.box_attributes[0, col["cytoplasm"]] == UNKNOWN  # "plenty" is not a value: reported, unknown
    assert c.box_attributes[1, col["nuclear_shape"]] == 1
    assert c.box_attributes[1, col["nuclear_chromatin"]] == UNKNOWN
    assert any("cytoplasm='plenty'" in f.what for f in result.fixed)
    assert result.annotated_classes == ("myeloblast", "platelet", "wbc")
    assert c.load_image().size == (64, 48)


def test_coco_verify_and_class_map(tmp_path):
    root = tmp_path / "coco2"
    _coco_fixture(root)
    (root / "images/a.png").write_bytes((root / "images/a.png").read_bytes()[:60])  # truncated PNG
    with pytest.warns(UserWarning):
        result = CocoReader().read(root, verify_images=True, class_map={"Mystery": "unidentified"})
    paths = {s.path for s in result.skipped}
    assert "annotations/instances_val.json: image 1 (a.png)" in paths
    assert "annotations/instances_val.json: image 2 (b.png)" not in paths  # mapped by class_map
    assert {s.sample_id for s in result.samples} == {"images/b.png", "images/c.png"}


def test_coco_roboflow_layout_split_from_folder(tmp_path):
    root = tmp_path / "rf"
    for split in ("train", "valid"):
        _write_image(root / split / "x.jpg")
        coco = {
            "images": [{"id": 0, "file_name": "x.jpg", "width": 64, "height": 48}],
            "categories": [{"id": 0, "name": "RBC"}],
            "annotations": [{"id": 0, "image_id": 0, "category_id": 0, "bbox": [1, 2, 3, 4]}],
        }
        (root / split / "_annotations.coco.json").write_text(json.dumps(coco))
    result = CocoReader().read(root)
    assert sorted((s.sample_id, s.split) for s in result.samples) == [
        ("train/x.jpg", "train"),
        ("valid/x.jpg", "val"),
    ]


# --- detection and wrong formats -----------------------------------------------------------------------------


@pytest.mark.realdata
def test_sniff_and_detect_format(tmp_path):
    assert detect_format(dataset_path("bccd")) == "voc"
    assert detect_format(dataset_path("txl_pbc")) == "yolo"
    assert detect_format(dataset_path("fiocruz_malaria_thick")) == "yolo"
    _coco_fixture(tmp_path / "c")
    assert detect_format(tmp_path / "c") == "coco"
    others = [
        "segmentation_wbc",
        "bccd_nucleus_masks",
        "pbc",
        "bccd_wbc_crops",
        "chula_rbc12",
        "sickle_uganda",
    ]
    for name in others:
        path = dataset_path(name)
        assert not VocReader().sniff(path), name
        assert not YoloReader().sniff(path), name
        assert not CocoReader().sniff(path), name
    assert not VocReader().sniff(dataset_path("txl_pbc"))
    assert not YoloReader().sniff(dataset_path("bccd"))


@pytest.mark.realdata
def test_wrong_format_errors_say_what_was_expected_and_found(tmp_path):
    with pytest.raises(WrongFormatError, match=r"expected a Pascal VOC folder .* found"):
        VocReader().read(dataset_path("txl_pbc"))
    with pytest.raises(WrongFormatError, match=r"expected YOLO image and label folders .* found"):
        YoloReader().read(dataset_path("bccd"))
    with pytest.raises(WrongFormatError, match=r"expected a COCO json .* found"):
        CocoReader().read(dataset_path("bccd"))
    with pytest.raises(WrongFormatError, match="an empty folder"):
        VocReader().read(tmp_path)
