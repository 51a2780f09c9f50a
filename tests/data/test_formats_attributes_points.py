"""Attribute-CSV reader (WBCAtt joined to PBC) and point reader (Chula RBC-12 crops), real and broken."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.paths import dataset_path
from unihema.data.formats import detect_format, get_reader
from unihema.data.formats.attributes import (
    annotator_agreement,
    read_attribute_csv,
    read_reannotations,
)
from unihema.data.formats.base import WrongFormatError
from unihema.data.formats.folders import ReadReport
from unihema.data.formats.points import DEFAULT_CROP_SIZE, crop_window
from unihema.data.schema import UNKNOWN, ReadResult, Task
from unihema.data.vocab import CELL_ATTRIBUTE_NAMES, CELL_ATTRIBUTES, CELL_CLASSES


def _read(fmt: str, root: Path, **options: object) -> tuple[ReadResult, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = get_reader(fmt).read(root, **options)
    return result, [str(w.message) for w in caught]


def _classes(result: ReadResult) -> Counter:
    return Counter(CELL_CLASSES[s.cell_class] for s in result.samples)


WBC = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
HEADER = "img_name,label," + ",".join(CELL_ATTRIBUTE_NAMES) + ",path"
GOOD_VALUES = "big,round,segmented-bilobed,low,densely,no,clear,light blue,small,pink,yes"


# --------------------------------------------------------------------------------------------- WBCAtt


@pytest.mark.realdata
def test_wbcatt_staged_rows_and_single_warning() -> None:
    root = dataset_path("wbcatt")
    dataset_path("pbc")
    assert detect_format(root) == "attributes"
    result, messages = _read("attributes", root)
    assert result.dataset == "wbcatt" and result.annotated_classes == WBC
    assert len(result.samples) == 1600 and all(s.task is Task.CELL_MORPHOLOGY for s in result.samples)
    per_split = Counter((s.split, CELL_CLASSES[s.cell_class]) for s in result.samples)
    for split, per_class in (("train", 200), ("val", 40), ("test", 80)):
        assert {c: per_split[(split, c)] for c in WBC} == dict.fromkeys(WBC, per_class)
    # 10,298 annotated cells, 1,600 staged images: every other row is named, with one warning for all
    assert len(result.skipped) == 10298 - 1600 == 8698
    assert all(
        s.path.startswith("PBC_dataset_normal_DIB/") and "not found" in s.reason for s in result.skipped
    )
    assert len(messages) == 1 and "8698" in messages[0]
    assert not result.fixed
    eo = next(s for s in result.samples if s.extra["img_name"] == "EO_501290.jpg")
    expected = [
        "small",
        "round",
        "unsegmented-band",
        "low",
        "densely",
        "no",
        "clear",
        "light blue",
        "round",
        "red",
        "yes",
    ]
    assert [CELL_ATTRIBUTES[i][1][v] for i, v in enumerate(eo.cell_attributes)] == expected
    assert eo.split == "test" and CELL_CLASSES[eo.cell_class] == "eosinophil" and eo.image_size == (363, 360)
    assert (
        eo.source_path.resolve()
        == (dataset_path("pbc") / "PBC_dataset_normal_DIB/eosinophil/EO_501290.jpg").resolve()
    )
    assert all((s.cell_attributes != UNKNOWN).all() for s in result.samples)


@pytest.mark.realdata
def test_wbcatt_train_attribute_counts_match_source() -> None:
    root = dataset_path("wbcatt")
    report = ReadReport("wbcatt", root)
    rows = read_attribute_csv(root / "submission" / "pbc_attr_v1_train.csv", report)
    assert len(rows) == 6169 and not report.skipped and not report.fixed
    assert Counter(r.label for r in rows) == {
        "Basophil": 744,
        "Eosinophil": 1876,
        "Lymphocyte": 736,
        "Monocyte": 829,
        "Neutrophil": 1984,
    }
    counts = {a: Counter(r.attributes[a] for r in rows) for a in CELL_ATTRIBUTE_NAMES}
    assert counts["cell_size"] == {"big": 3293, "small": 2876}
    assert counts["cell_shape"] == {"round": 4774, "irregular": 1395}
    assert counts["nucleus_shape"] == {
        "segmented-bilobed": 1899, "unsegmented-band": 1587, "unsegmented-indented": 769,
        "segmented-multilobed": 725, "unsegmented-round": 662, "irregular": 527,
    }  # fmt: skip
    assert counts["nuclear_cytoplasmic_ratio"] == {"low": 5424, "high": 745}
    assert counts["chromatin_density"] == {"densely": 5631, "loosely": 538}
    assert counts["cytoplasm_vacuole"] == {"no": 5705, "yes": 464}
    assert counts["cytoplasm_texture"] == {"clear": 4970, "frosted": 1199}
    assert counts["cytoplasm_colour"] == {"light blue": 4693, "blue": 832, "purple blue": 644}
    assert counts["granule_type"] == {"small": 1987, "round": 1875, "nil": 1564, "coarse": 743}
    assert counts["granule_colour"] == {"pink": 1936, "red": 1876, "nil": 1564, "purple": 793}
    assert counts["granularity"] == {"yes": 4606, "no": 1563}


@pytest.mark.realdata
def test_wbcatt_reannotations_and_text_tasks() -> None:
    root = dataset_path("wbcatt")
    dataset_path("pbc")
    again = read_reannotations(root)
    assert len(again) == 1000
    agreement = annotator_agreement(root)
    assert set(agreement) == set(CELL_ATTRIBUTE_NAMES)
    assert all(a.count == 1000 for a in agreement.values())
    assert agreement["cell_size"].agreement == pytest.approx(0.898)
    assert agreement["granularity"].agreement == pytest.approx(0.999)
    assert all(0.7 < a.kappa <= 1.0 for a in agreement.values())

    result, _ = _read("attributes", root, splits=["val"], tasks=["cell_morphology", "vqa", "mlm"])
    tasks = Counter(s.task for s in result.samples)
    assert tasks[Task.CELL_MORPHOLOGY] == 200 and tasks[Task.MLM] == 4 * 200
    vqa = [s for s in result.samples if s.task is Task.VQA]
    assert all(s.prompt.startswith("Q: ") and s.split == "val" for s in vqa)
    eo_class = [
        s
        for s in vqa
        if s.text_target in {f"This is an {c}." if c[0] in "aeiou" else f"This is a {c}." for c in WBC}
    ]
    assert len(eo_class) == 200  # one class question per cell


def _wbcatt_copy(tmp_path: Path, rows: list[str], images: list[str]) -> Path:
    root = tmp_path / "wbcatt"
    (root / "submission").mkdir(parents=True)
    (root / "submission" / "pbc_attr_v1_train.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    for rel in images:
        path = tmp_path / "pbc" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 10, 3), 180, np.uint8)).save(path)
    return root


def test_broken_attribute_csv_reports_each_row(tmp_path: Path) -> None:
    p = "PBC_dataset_normal_DIB/neutrophil/"
    rows = [
        f"BNE_1.jpg,Neutrophil,{GOOD_VALUES},{p}BNE_1.jpg",
        f"BNE_2.jpg,Neutrophil,{GOOD_VALUES},{p}BNE_2.jpg,extra",  # line 3: 15 columns
        f"BNE_3.jpg,Neutrophil,{GOOD_VALUES.replace('light blue', 'green')},{p}BNE_3.jpg",  # line 4
        f"BNE_4.jpg,Neutrophil,{GOOD_VALUES.replace('big', ' Big')},{p}BNE_4.jpg",  # line 5: normalised
        f"XX_5.jpg,Megakaryocyte,{GOOD_VALUES},{p}XX_5.jpg",  # line 6: unknown class
        f"BNE_1.jpg,Neutrophil,{GOOD_VALUES},{p}BNE_1.jpg",  # line 7: repeated img_name
        f"BNE_6.jpg,Neutrophil,{GOOD_VALUES},{p}BNE_6.jpg",  # line 8: image missing
        f"BNE_7.jpg,Neutrophil,{GOOD_VALUES},{p}BNE_7.jpg",  # line 9: unreadable image
    ]
    root = _wbcatt_copy(tmp_path, rows, [f"{p}BNE_{i}.jpg" for i in (1, 2, 3, 4, 5)])
    (tmp_path / "pbc" / p / "BNE_7.jpg").write_bytes(b"garbage")
    result, messages = _read("attributes", root)
    csv_name = "submission/pbc_attr_v1_train.csv"
    skipped = {s.path: s.reason for s in result.skipped}
    assert "expected 14 columns, found 15" in skipped[f"{csv_name}:3"]
    assert "'green'" in skipped[f"{csv_name}:4:cytoplasm_colour"]
    assert "Megakaryocyte" in skipped[f"{csv_name}:6"]
    assert "already annotated" in skipped[f"{csv_name}:7"]
    assert "not found" in skipped[f"{p}BNE_6.jpg"]
    assert "unreadable image" in skipped[f"{p}BNE_7.jpg"]
    assert [f.path for f in result.fixed] == [f"{csv_name}:5"]
    assert any("pbc_attr_v1_train.csv:3" in m for m in messages)
    assert any("1 rows whose image is not under images_root" in m for m in messages)
    loaded = {s.extra["img_name"]: s for s in result.samples}
    assert sorted(loaded) == ["BNE_1.jpg", "BNE_3.jpg", "BNE_4.jpg"]
    colour = CELL_ATTRIBUTE_NAMES.index("cytoplasm_colour")
    assert loaded["BNE_3.jpg"].cell_attributes[colour] == UNKNOWN
    assert (np.delete(loaded["BNE_3.jpg"].cell_attributes, colour) != UNKNOWN).all()
    assert loaded["BNE_4.jpg"].cell_attributes[0] == 0  # " Big" -> big
    assert all(s.split == "train" for s in result.samples)


def test_attributes_wrong_format_and_images_root(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    assert not get_reader("attributes").sniff(tmp_path)
    with pytest.raises(WrongFormatError, match="attribute CSVs"):
        get_reader("attributes").read(tmp_path)
    root = _wbcatt_copy(tmp_path, [f"BA_1.jpg,Basophil,{GOOD_VALUES},x/BA_1.jpg"], ["elsewhere/x/BA_1.jpg"])
    with pytest.raises(FileNotFoundError, match="images_root"):
        get_reader("attributes").read(root, images_root=tmp_path / "nowhere")
    result = get_reader("attributes").read(
        root, images_root=tmp_path / "pbc" / "elsewhere", tasks="classification"
    )
    assert [s.task for s in result.samples] == [Task.CLASSIFICATION]


# ---------------------------------------------------------------------------------------- Chula RBC-12

CHULA_POINTS = {
    "normal rbc": 2304, "macrocyte": 230, "microcyte": 154, "spherocyte": 1204, "target cell": 985,
    "stomatocyte": 606, "ovalocyte": 758, "teardrop cell": 93, "burr cell": 206, "schistocyte": 300,
    "uncategorised rbc": 79, "hypochromic rbc": 323, "elliptocyte": 375,
}  # fmt: skip


@pytest.mark.realdata
def test_chula_points_to_crops() -> None:
    root = dataset_path("chula_rbc12")
    assert detect_format(root) == "points"
    result, messages = _read("points", root)
    assert not result.skipped and not messages
    expected = {k: v for k, v in CHULA_POINTS.items() if k != "uncategorised rbc"}
    assert _classes(result) == expected and len(result.samples) == 7617 - 79
    assert len(result.fixed) == 79 and all("uncategorised" in f.what for f in result.fixed)
    assert len({s.source_path for s in result.samples}) == 208
    assert {s.image_size for s in result.samples} == {(DEFAULT_CROP_SIZE, DEFAULT_CROP_SIZE)}
    first = result.samples[0]
    assert first.sample_id == "Dataset/1.jpg#L1" and first.extra["point"] == (594.0, 95.0)
    assert first.image.crop == (562, 63, 626, 127) and first.load_image().size == (64, 64)
    assert first.extra["image_size"] == (480, 640)
    for s in result.samples[:500]:
        px, py = s.extra["point_in_crop"]
        assert 0 <= px < 64 and 0 <= py < 64
    # the per-image point array is shared by the crops of a smear
    same_image = [s for s in result.samples if s.source_path == first.source_path]
    assert all(s.extra["image_points"] is first.extra["image_points"] for s in same_image)
    assert len(first.extra["image_points"]) == len(same_image)

    with_uncat = get_reader("points").read(root, include_uncategorised=True, crop_size=48)
    assert _classes(with_uncat) == CHULA_POINTS and not with_uncat.fixed
    assert {s.image_size for s in with_uncat.samples} == {(48, 48)}


def test_crop_window_shifts_inside() -> None:
    assert crop_window(50, 40, (480, 640), 64) == (18, 8, 82, 72)
    assert crop_window(3, 2, (480, 640), 64) == (0, 0, 64, 64)
    assert crop_window(639, 479, (480, 640), 64) == (576, 416, 640, 480)
    assert crop_window(10, 10, (30, 640), 64) == (0, 0, 64, 30)


def test_broken_point_labels(tmp_path: Path) -> None:
    (tmp_path / "Dataset").mkdir()
    (tmp_path / "Label").mkdir()
    for stem in ("1", "2", "3"):
        Image.fromarray(np.full((80, 100, 3), 200, np.uint8)).save(tmp_path / "Dataset" / f"{stem}.jpg")
    (tmp_path / "Label" / "1.txt").write_text(
        "50 40 0\n"  # line 1: fine
        "12 x 3\n"  # line 2: malformed
        "150 40 2\n"  # line 3: outside the 100x80 image
        "20 20 42\n"  # line 4: unknown class
        "2 78 4\n"  # line 5: at the corner -> shifted crop
        "50 40 0\n"  # line 6: repeats line 1
        "70 30 1\n70 30 3\n"  # lines 7-8: one point, two classes
        "60 60 10\n"  # line 9: uncategorised
    )
    (tmp_path / "Label" / "2.txt").write_text("\n")  # empty
    (tmp_path / "Label" / "4.txt").write_text("1 1 0\n")  # no image
    result, messages = _read("points", tmp_path, crop_size=32)
    skipped = {s.path: s.reason for s in result.skipped}
    assert "malformed line '12 x 3'" in skipped["Label/1.txt:2"]
    assert "outside the 100x80 image" in skipped["Label/1.txt:3"]
    assert "unknown class id 42" in skipped["Label/1.txt:4"]
    assert "different classes" in skipped["Label/1.txt:7"] and "different classes" in skipped["Label/1.txt:8"]
    assert "empty label file" in skipped["Label/2.txt"]
    assert "no image" in skipped["Label/4.txt"]
    assert "no label file" in skipped["Dataset/3.jpg"]
    fixed = {f.path: f.what for f in result.fixed}
    assert set(fixed) == {"Label/1.txt:6", "Label/1.txt:9"}
    assert any("Label/1.txt:2" in m for m in messages) and any("Dataset/3.jpg" in m for m in messages)
    assert [s.sample_id for s in result.samples] == ["Dataset/1.jpg#L1", "Dataset/1.jpg#L5"]
    corner = result.samples[1]
    assert corner.image.crop == (0, 48, 32, 80) and corner.extra["point_in_crop"] == (2.0, 30.0)
    assert corner.load_image().size == (32, 32)
    assert corner.extra["image_points"].tolist() == [[50, 40, 0], [2, 78, 4]]
    with pytest.raises(ValueError, match="crop_size"):
        get_reader("points").read(tmp_path, crop_size=0)


def test_points_wrong_format(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # YOLO boxes, not points
    assert not get_reader("points").sniff(tmp_path)
    with pytest.raises(WrongFormatError, match="'x y class'"):
        get_reader("points").read(tmp_path)


def test_chula_crops_of_one_smear_share_a_split():
    from unihema.data.formats.base import get_reader
    from unihema.data.splits import assign_splits

    samples = assign_splits(get_reader("points").read(dataset_path("chula_rbc12")).samples)
    splits_per_smear: dict[str, set] = {}
    for sample in samples:
        splits_per_smear.setdefault(sample.extra["split_group"], set()).add(sample.split)
    assert len(splits_per_smear) == 208
    assert all(len(splits) == 1 for splits in splits_per_smear.values())
    assert {"train", "val", "test"} == set().union(*splits_per_smear.values())
