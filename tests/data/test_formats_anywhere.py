"""Datasets in their native layouts, found by content and pairing rather than by folder names.

Every fixture is built in ``tmp_path`` (by :mod:`native_layouts` or here; never copied from a dataset): a
VOC set in ``Images/`` + ``XML Files/``, a colour-TIFF mask set in a folder with a space in its name +
``gt/`` with a white background, a YOLO set with odd folder names, masks in other formats, and the
detection messages.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.native_layouts import (
    COLOUR_MAP,
    CYAN,
    SMEAR_FOLDER,
    WHITE,
    colour_mask,
    colour_mask_fixture,
    disc_areas,
    photo,
    voc_fixture,
    voc_xml,
    yolo_fixture,
)
from unihema.data.formats import WrongFormatError, detect, detect_format, get_reader, read_dataset
from unihema.data.formats._common import ReaderWarning
from unihema.data.formats.mask_values import ColourMask, looks_like_mask, parse_colour_map
from unihema.data.schema import FileMask, ReadResult, Task
from unihema.data.vocab import DETECTION_CLASSES


def read(fmt: str, root: Path, **options: object) -> tuple[ReadResult, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = get_reader(fmt).read(root, **options)
    return result, [str(w.message) for w in caught if issubclass(w.category, ReaderWarning)]


# ---------------------------------------------------------------------------------------------- VOC


def test_voc_images_and_xml_files_folders(tmp_path: Path) -> None:
    root = voc_fixture(tmp_path / "native voc")
    detection = detect(root)
    assert detection.format == "voc"
    assert detection.rule == (
        "5 XML files with <annotation> roots in 'XML Files/' paired by stem with 5 images in 'Images/'"
    )
    result, messages = read("voc", root)
    assert sorted(s.sample_id for s in result.samples) == [
        "Images/smear_01.jpg",
        "Images/smear_02.jpg",
        "Images/smear_05.jpg",
    ]
    skipped = {s.path: s.reason for s in result.skipped}
    assert skipped == {"XML Files/smear_03.xml": "object 1: class 'Alien' is not in the detection vocabulary"}
    fixed = {f.path: f.what for f in result.fixed}
    assert fixed["XML Files/smear_02.xml"] == "<filename> says IMG_9999.jpg, used smear_02.jpg (same stem)"
    assert (
        fixed["Images/smear_04.jpg"]
        == "byte-identical to Images/smear_01.jpg with the same boxes; loaded once"
    )
    assert len(fixed) == 2
    assert any("smear_03.xml" in m and "Alien" in m for m in messages)
    assert any("smear_04.jpg" in m and "byte-identical" in m for m in messages)
    first = next(s for s in result.samples if s.sample_id.endswith("01.jpg"))
    assert [DETECTION_CLASSES[i] for i in first.box_labels] == ["rbc", "wbc"] and first.split is None
    np.testing.assert_array_equal(first.boxes, [[5, 5, 20, 20], [30, 10, 60, 40]])
    assert first.load_image().size == (64, 48)
    assert result.annotated_classes == ("platelet", "rbc", "wbc")


def test_voc_duplicates_annotated_differently_are_both_skipped(tmp_path: Path) -> None:
    root = voc_fixture(tmp_path / "voc")
    (root / "XML Files/smear_04.xml").write_text(voc_xml("smear_04.jpg", [("WBC", (2, 2, 30, 30))]))
    result, _ = read("voc", root)
    skipped = {s.path: s.reason for s in result.skipped}
    assert skipped["Images/smear_01.jpg"] == "byte-identical to Images/smear_04.jpg but annotated differently"
    assert skipped["Images/smear_04.jpg"] == "byte-identical to Images/smear_01.jpg but annotated differently"
    assert sorted(s.sample_id for s in result.samples) == ["Images/smear_02.jpg", "Images/smear_05.jpg"]


def test_voc_beside_images_with_split_folders(tmp_path: Path) -> None:
    """labelImg writes the XML files beside the images; the split comes from the folder names."""
    for split in ("Train", "Test"):
        photo(tmp_path / split / f"{split}_a.png")
        (tmp_path / split / f"{split}_a.xml").write_text(voc_xml(f"{split}_a.png", [("WBC", (1, 1, 30, 30))]))
    result, _ = read("voc", tmp_path)
    assert sorted((s.sample_id, s.split) for s in result.samples) == [
        ("Test/Test_a.png", "test"),
        ("Train/Train_a.png", "train"),
    ]
    assert detect(tmp_path).rule.startswith("1 XML files with <annotation> roots in 'Test/' paired by stem")


def test_xml_files_of_another_kind_are_not_voc(tmp_path: Path) -> None:
    photo(tmp_path / "pics" / "a.jpg")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "a.xml").write_text("<svg><rect/></svg>")
    assert not get_reader("voc").sniff(tmp_path)


# ---------------------------------------------------------------------------------------------- masks


def test_colour_tiff_masks_beside_a_folder_with_a_space(tmp_path: Path) -> None:
    root = colour_mask_fixture(tmp_path / "wbc set")
    assert detect(root).format == "masks"
    assert detect(root).rule == f"3 masks in 'gt/' paired by stem with images in '{SMEAR_FOLDER}/'"
    result, messages = read("masks", root, colour_map=COLOUR_MAP)
    assert [s.sample_id for s in result.samples] == [f"{SMEAR_FOLDER}/00{i}.jpg" for i in (1, 2, 3)]
    assert [s.path for s in result.skipped] == [f"{SMEAR_FOLDER}/004.jpg"]
    assert "no mask" in result.skipped[0].reason
    cell, nucleus = disc_areas()
    first = result.samples[0]
    assert isinstance(first.mask, ColourMask) and first.task is Task.SEGMENTATION
    mask = first.load_mask()
    assert mask.dtype == bool and mask.shape == (48, 64) and mask.sum() == cell  # white is background
    assert first.extra["mapping"] == "colour_map" and first.extra["colour_map"]["background"] == list(WHITE)
    # The stray colour is named with its file and pixel count, warned about and read as background.
    (stray,) = result.fixed
    assert stray.path == "gt/003.tif"
    assert stray.what == "colours not in colour_map: (255, 0, 0) 12 px (12 of 3072 px): read as background"
    assert any("gt/003.tif" in m and "(255, 0, 0) 12 px" in m for m in messages)
    assert result.samples[2].load_mask().sum() == cell

    nucleus_only, _ = read("masks", root, colour_map=COLOUR_MAP, foreground=["nucleus"])
    assert nucleus_only.samples[0].load_mask().sum() == nucleus
    as_foreground, _ = read("masks", root, colour_map=COLOUR_MAP, unknown_colours="foreground")
    assert as_foreground.samples[2].load_mask().sum() == cell + 12
    skipping, _ = read("masks", root, colour_map=COLOUR_MAP, unknown_colours="skip")
    assert "gt/003.tif" in {s.path for s in skipping.skipped} and len(skipping.samples) == 2


def test_colour_masks_without_a_colour_map_are_reported(tmp_path: Path) -> None:
    root = colour_mask_fixture(tmp_path / "set")
    result, messages = read("masks", root, verify_images=True)
    notes = [f.what for f in result.fixed if f.path == "gt/001.tif"]
    assert len(notes) == 2 and len(result.fixed) == 6  # two notes per mask
    assert notes[0].startswith(
        "colour mask read as its brightest channel (no colour_map): colours (255, 255, 255)"
    )
    assert notes[0].endswith("give colour_map to say which colour is background")
    assert notes[1].startswith("every pixel is foreground under mapping 'nonzero' (no black pixel")
    assert any("gt/001.tif" in m and "colour_map" in m for m in messages)
    assert result.samples[0].load_mask().all()  # what the grey mapping makes of a white background


def test_colour_map_validation() -> None:
    colours = parse_colour_map({"Background": "#ffffff", "nucleus": "0,255,255", "rim": 128})
    assert colours.background == WHITE and colours.foreground == ("nucleus", "rim")
    assert colours.colours["rim"] == (128, 128, 128)
    bad = [
        ({"nucleus": [0, 255]}, r"'nucleus' is \[0, 255\]; expected a colour"),
        ({"nucleus": [0, 255, 256], "background": 0}, "expected a colour"),
        ({"nucleus": CYAN}, "needs a 'background' entry"),
        ({"a": CYAN, "b": CYAN, "background": 0}, "'a' and 'b' have the same colour"),
        ([CYAN], "must map class names to colours"),
    ]
    for value, message in bad:
        with pytest.raises(ValueError, match=message):
            parse_colour_map(value)
    with pytest.raises(
        ValueError, match=r"foreground: \['membrane'\] given; expected some of the colour_map"
    ):
        parse_colour_map(COLOUR_MAP, foreground=["membrane"])
    with pytest.raises(ValueError, match="foreground: no class given"):
        parse_colour_map(COLOUR_MAP, foreground=[])
    with pytest.raises(ValueError, match="at least one entry besides 'background'"):
        parse_colour_map({"background": 0})
    with pytest.raises(ValueError, match="unknown_colours='drop'"):
        parse_colour_map(COLOUR_MAP, unknown="drop")
    root_options = {"mapping": "cell", "colour_map": COLOUR_MAP}
    with pytest.raises(ValueError, match="not both"):
        get_reader("masks").read(Path("."), **root_options)
    with pytest.raises(ValueError, match="foreground applies to colour masks only"):
        get_reader("masks").read(Path("."), foreground=["nucleus"])


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_grey_masks_in_any_lossless_format_in_two_folders(tmp_path: Path, fmt: str) -> None:
    suffix = {"PNG": ".png", "TIFF": ".tif", "BMP": ".bmp"}[fmt]
    grey = np.zeros((48, 64), np.uint8)
    grey[10:20, 10:30] = 255
    for stem in ("a", "b"):
        photo(tmp_path / "photos" / f"{stem}.png")
        (tmp_path / "annotated").mkdir(exist_ok=True)
        Image.fromarray(grey).save(tmp_path / "annotated" / f"{stem}_mask{suffix}", format=fmt)
    assert detect_format(tmp_path) == "masks"
    result, _ = read("masks", tmp_path)
    assert [s.sample_id for s in result.samples] == ["photos/a.png", "photos/b.png"]
    assert isinstance(result.samples[0].mask, FileMask) and result.samples[0].load_mask().sum() == 200


def test_jpeg_masks_are_read_with_a_warning(tmp_path: Path) -> None:
    grey = np.zeros((48, 64), np.uint8)
    grey[10:30, 10:40] = 255
    for stem in ("a", "b", "c"):
        photo(tmp_path / "images" / "train" / f"{stem}.jpg")
        (tmp_path / "Ground Truth").mkdir(exist_ok=True)
        Image.fromarray(grey).save(tmp_path / "Ground Truth" / f"{stem}.jpg", quality=60)
    assert detect(tmp_path).rule == "3 masks in 'Ground Truth/' paired by stem with images in 'images/train/'"
    result, messages = read("masks", tmp_path)
    assert len(result.samples) == 3 and {s.split for s in result.samples} == {"train"}
    assert all("lossy JPEG mask: labels are noisy near edges" in f.what for f in result.fixed)
    (warning,) = [m for m in messages if "lossy" in m]
    assert warning.startswith(f"{tmp_path.name}: 3 lossy (JPEG) masks: compression leaves noisy labels")
    mask = result.samples[0].load_mask()
    assert abs(int(mask.sum()) - 600) < 40  # compression noise around 0 is not read as foreground
    colour = tmp_path / "colour"
    photo(colour / "pics" / "x.jpg")
    colour_mask(colour / "masks" / "x.jpg")
    read_colour, _ = read("masks", colour, colour_map=COLOUR_MAP)
    assert abs(int(read_colour.samples[0].load_mask().sum()) - disc_areas()[0]) < 30  # nearest colour


def test_folders_of_look_alike_images_are_not_masks(tmp_path: Path) -> None:
    for stem in ("1", "2"):
        photo(tmp_path / "Labelled" / f"{stem}.jpg")
        photo(tmp_path / "Unlabelled" / f"{stem}.jpg")
    assert not get_reader("masks").sniff(tmp_path)
    assert looks_like_mask(colour_mask(tmp_path / "m.png")) and not looks_like_mask(photo(tmp_path / "p.png"))


# ---------------------------------------------------------------------------------------------- YOLO


def test_yolo_with_odd_folder_names(tmp_path: Path) -> None:
    root = yolo_fixture(tmp_path / "yolo set")
    detection = detect(root)
    assert str(detection) == (
        "yolo: 3 label files in 'box files (yolo)/' paired by stem with 3 images in 'smear photos/'"
    )
    result, _ = read("yolo", root)
    by_id = {s.sample_id: s for s in result.samples}
    assert sorted(by_id) == ["smear photos/a.jpg", "smear photos/b.jpg", "smear photos/c.jpg"]
    np.testing.assert_allclose(by_id["smear photos/a.jpg"].boxes, [[40, 15, 60, 35], [20, 10, 30, 15]])
    assert [DETECTION_CLASSES[i] for i in by_id["smear photos/a.jpg"].box_labels] == ["rbc", "wbc"]
    assert len(by_id["smear photos/b.jpg"].boxes) == 0 and not result.skipped
    assert result.annotated_classes == ("platelet", "rbc", "wbc")


def test_yolo_split_folders_with_odd_names_and_darknet_layout(tmp_path: Path) -> None:
    for split in ("Training", "Validation"):
        photo(tmp_path / f"{split} pictures" / "x.jpg")
        (tmp_path / f"{split} boxes").mkdir()
        (tmp_path / f"{split} boxes" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "obj.names").write_text("WBC\n")
    result, _ = read("yolo", tmp_path)
    assert sorted((s.sample_id, s.split) for s in result.samples) == [
        ("Training pictures/x.jpg", "train"),
        ("Validation pictures/x.jpg", "val"),
    ]
    darknet = tmp_path / "darknet"
    photo(darknet / "obj" / "y.jpg")
    (darknet / "obj" / "y.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    result, _ = read("yolo", darknet, names=["Platelets"])
    assert [s.sample_id for s in result.samples] == ["obj/y.jpg"]


def test_point_files_and_pixel_boxes_are_not_yolo(tmp_path: Path) -> None:
    photo(tmp_path / "smears" / "1.jpg")
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "1.txt").write_text("12 30 4\n40 20 0\n")
    assert detect(tmp_path).format == "points"
    assert detect(tmp_path).rule == (
        "1 label files of 'x y class' lines in 'points/' paired by stem with 1 images in 'smears/'"
    )
    points, _ = read("points", tmp_path, crop_size=16)
    assert [s.sample_id for s in points.samples] == ["smears/1.jpg#L1", "smears/1.jpg#L2"]
    (tmp_path / "points" / "1.txt").write_text("0 120 40 160 80\n")  # pixel boxes: not normalised
    assert not get_reader("yolo").sniff(tmp_path)


def test_coco_images_found_by_name_in_any_folder(tmp_path: Path) -> None:
    photo(tmp_path / "Pictures of smears" / "f1.png")
    coco = {
        "images": [{"id": 1, "file_name": "C:\\export\\f1.png"}, {"id": 2, "file_name": "gone.png"}],
        "categories": [{"id": 1, "name": "WBC"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10]}],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "export.json").write_text(json.dumps(coco))
    result, _ = read("coco", tmp_path)
    assert [s.sample_id for s in result.samples] == ["Pictures of smears/f1.png"]
    assert [s.reason for s in result.skipped] == ["image file gone.png not found"]


# ---------------------------------------------------------------------------------------------- messages


def test_detection_failure_names_the_folders_and_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("nothing here")
    photo(tmp_path / "pictures" / "a.jpg")
    with pytest.raises(WrongFormatError) as err:
        detect(tmp_path)
    message = str(err.value)
    assert message.startswith(
        f"{tmp_path}: no known dataset format recognised; looked in {tmp_path} and its 2"
    )
    assert "'notes/', 'pictures/'" in message
    assert "voc: XML files with an <annotation> root and images of the same stems" in message
    assert "masks: image + mask pairs" in message and "folders: class folders" in message
    assert len(message.splitlines()) == 1
    with pytest.raises(
        WrongFormatError, match=r"expected a Pascal VOC folder \(XML files .*; looked in .*'pictures/'"
    ):
        get_reader("voc").read(tmp_path)
    with pytest.raises(WrongFormatError, match=r"expected YOLO image and label folders .*'notes/'.*, found"):
        get_reader("yolo").read(tmp_path)
    with pytest.raises(WrongFormatError, match=r"expected point annotations .*looked in"):
        get_reader("points").read(tmp_path)


def test_read_dataset_reads_what_detection_finds(tmp_path: Path) -> None:
    root = yolo_fixture(tmp_path / "y")
    result = read_dataset(root)
    assert result.format == "yolo" and len(result.samples) == 3
    masks = colour_mask_fixture(tmp_path / "m")
    with pytest.warns(ReaderWarning):
        result = read_dataset(masks, options={"colour_map": COLOUR_MAP})
    assert result.samples[0].load_mask().sum() == disc_areas()[0]
