"""Property-based tests (hypothesis, bounded) of the readers and the box / mask / point transforms.

- Readers: YOLO label files, VOC XML files and COCO json files holding random valid and invalid numbers
  (NaN, infinities, negatives, huge values, words, missing and extra fields) never raise: each file either
  loads with every box inside its image and of positive size, or is skipped with a reason naming it, and
  the good image beside it always loads.
- Transforms: under random flips and resizes a box stays within the image, keeps a non-negative size and
  keeps covering the same cell: the transformed mask of the cell fits the transformed box within a pixel,
  and a point on the cell stays inside its box.

Each test runs a bounded number of examples (``max_examples``, no deadline); all of them take a few seconds.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import tv_tensors

from unihema.data.formats import get_reader
from unihema.data.schema import ReadResult, Task
from unihema.data.transforms import TransformConfig, build_transforms
from unihema.data.vocab import DETECTION_CLASSES

WIDTH, HEIGHT = 40, 30
READER_SETTINGS = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
TRANSFORM_SETTINGS = settings(max_examples=60, deadline=None, database=None)

NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0", "0.5", "", "abc", "1,5", "0x1f", "  7 "]),
)
"""Text of a number field: valid, out of range, not finite, or not a number."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A scratch folder shared by the examples (each writes its own files into a fresh sub-folder)."""
    return tmp_path_factory.mktemp("properties")


_counter = iter(range(10**9))


def _fresh(base: Path) -> Path:
    root = base / f"example_{next(_counter)}"
    root.mkdir()
    return root


def _image(path: Path) -> Path:
    """A flat image, of another colour for each file name (byte-identical images are read once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shade = sum(path.name.encode()) % 200
    Image.new("RGB", (WIDTH, HEIGHT), (shade, 150, 180)).save(path)
    return path


def _read(format: str, root: Path) -> ReadResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_reader(format).read(root)


def _assert_sound(result: ReadResult, bad_item: str, good_id: str) -> None:
    """The good image loaded; the bad item loaded with sound boxes or was skipped naming itself."""
    ids = {sample.sample_id for sample in result.samples}
    assert good_id in ids, result.skipped
    for sample in result.samples:
        height, width = sample.image_size
        boxes = sample.boxes
        assert np.isfinite(boxes).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert all(0 <= int(label) < len(DETECTION_CLASSES) for label in sample.box_labels)
    for item in result.skipped:
        assert item.reason and item.path.startswith(bad_item), item


# ------------------------------------------------------------------------------------------------ YOLO

YOLO_LINE = st.lists(NUMBER_TEXT, min_size=0, max_size=7).map(" ".join)


@READER_SETTINGS
@given(lines=st.lists(YOLO_LINE, max_size=5))
def test_yolo_label_files_of_any_numbers_load_or_are_named(folder, lines) -> None:
    root = _fresh(folder)
    for stem in ("good", "x"):
        _image(root / "images" / f"{stem}.png")
    (root / "labels").mkdir()
    (root / "labels" / "good.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "x.txt").write_text("\n".join(lines))
    (root / "classes.txt").write_text("RBC\nWBC\n")
    _assert_sound(_read("yolo", root), "labels/x.txt", "images/good.png")


# ------------------------------------------------------------------------------------------------- VOC


@READER_SETTINGS
@given(
    size=st.tuples(NUMBER_TEXT, NUMBER_TEXT),
    boxes=st.lists(st.tuples(NUMBER_TEXT, NUMBER_TEXT, NUMBER_TEXT, NUMBER_TEXT), max_size=3),
)
def test_voc_files_of_any_numbers_load_or_are_named(folder, size, boxes) -> None:
    root = _fresh(folder)
    for stem in ("good", "x"):
        _image(root / "JPEGImages" / f"{stem}.png")
    (root / "Annotations").mkdir()

    def xml(name: str, size: tuple[str, str], boxes) -> str:
        objects = "".join(
            f"<object><name>RBC</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
            "</bndbox></object>"
            for a, b, c, d in boxes
        )
        return (
            f"<annotation><filename>{name}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"</size>{objects}</annotation>"
        )

    (root / "Annotations" / "good.xml").write_text(xml("good.png", ("40", "30"), [("2", "2", "9", "9")]))
    (root / "Annotations" / "x.xml").write_text(xml("x.png", size, boxes))
    result = _read("voc", root)
    _assert_sound(result, "Annotations/x.xml", "JPEGImages/good.png")
    assert all(s.image_size == (HEIGHT, WIDTH) for s in result.samples)  # the image's own size, always


# ------------------------------------------------------------------------------------------------ COCO

JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "x.png", "good.png", "RBC", "nan"]),
)  # fmt: skip
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.lists(inner, max_size=4), max_leaves=6)
COCO_KEYS = ("id", "image_id", "category_id", "bbox", "file_name", "width", "height", "name", "iscrowd")
JSON_OBJECT = st.dictionaries(st.sampled_from(COCO_KEYS), JSON_VALUE, max_size=6)
BBOX = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-50, 100)), min_size=4,
                max_size=4)  # fmt: skip


@READER_SETTINGS
@given(
    images=st.lists(st.one_of(JSON_OBJECT, JSON_VALUE), max_size=3),
    annotations=st.one_of(
        st.lists(st.one_of(JSON_OBJECT, st.fixed_dictionaries({"image_id": st.just(2), "category_id": st.just(1),
                                                               "bbox": BBOX})), max_size=4),
        JSON_VALUE,
    ),
    categories=st.lists(st.one_of(JSON_OBJECT, JSON_VALUE), max_size=2),
)  # fmt: skip
def test_coco_files_of_any_values_load_or_are_named(folder, images, annotations, categories) -> None:
    root = _fresh(folder)
    for name in ("good.png", "x.png"):
        _image(root / "images" / name)
    good = {
        "images": [{"id": 1, "file_name": "good.png", "width": WIDTH, "height": HEIGHT}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 5, 5]}],
        "categories": [{"id": 1, "name": "RBC"}],
    }
    (root / "good.json").write_text(json.dumps(good))
    bad = {"images": [{"id": 2, "file_name": "x.png"}, *images], "annotations": annotations,
           "categories": [{"id": 1, "name": "RBC"}, *categories]}  # fmt: skip
    (root / "x.json").write_text(json.dumps(bad))  # NaN and Infinity as Python's json writes them
    _assert_sound(_read("coco", root), "x.json", "images/good.png")


# ------------------------------------------------------------------------------------------ transforms


@st.composite
def cell_fields(draw):
    """An image size, one rectangular cell on it (its box is its mask's extent) and transform settings."""
    height, width = draw(st.integers(24, 96)), draw(st.integers(24, 96))
    x0, y0 = draw(st.integers(0, width - 6)), draw(st.integers(0, height - 6))
    x1, y1 = draw(st.integers(x0 + 6, width)), draw(st.integers(y0 + 6, height))
    shorter = draw(st.integers(24, 160))
    config = TransformConfig(
        det_train_sizes=(shorter,), det_eval_size=shorter, det_max_size=max(shorter, draw(st.integers(24, 320))),
        seg_size=draw(st.integers(16, 128)), hflip_prob=draw(st.sampled_from([0.0, 1.0])),
        vflip_prob=draw(st.sampled_from([0.0, 1.0])), brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
    )  # fmt: skip
    return (height, width), (x0, y0, x1, y1), config


def _cell_input(size: tuple[int, int], box: tuple[int, int, int, int]) -> dict:
    height, width = size
    x0, y0, x1, y1 = box
    mask = torch.zeros((height, width), dtype=torch.uint8)
    mask[y0:y1, x0:x1] = 1
    return {
        "image": tv_tensors.Image(torch.full((3, height, width), 128, dtype=torch.uint8)),
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=(height, width)
        ),  # fmt: skip
        "labels": torch.tensor([1]),
        "attributes": torch.full((1, 6), -1),
        "mask": tv_tensors.Mask(mask),
        "points": tv_tensors.KeyPoints([[(x0 + x1) / 2, (y0 + y1) / 2]], canvas_size=(height, width)),
    }


@TRANSFORM_SETTINGS
@given(field=cell_fields(), train=st.booleans())
def test_a_transform_keeps_each_box_on_its_cell(field, train) -> None:
    size, box, config = field
    out = build_transforms(Task.DETECTION, train=train, config=config)(_cell_input(size, box))
    height, width = out["image"].shape[-2:]
    boxes = out["boxes"].as_subclass(torch.Tensor)
    assert boxes.shape == (1, 4)  # a cell of 6 px or more is never lost
    x0, y0, x1, y1 = boxes[0].tolist()
    assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height  # inside the image, no negative size
    assert all(math.isfinite(v) for v in (x0, y0, x1, y1))
    foreground = out["mask"].as_subclass(torch.Tensor).nonzero()
    my0, mx0 = foreground.min(0).values.tolist()
    my1, mx1 = (foreground.max(0).values + 1).tolist()
    # The cell's pixels and its box agree within a pixel (nearest-neighbour resampling of the mask).
    assert abs(mx0 - x0) <= 1.01 and abs(mx1 - x1) <= 1.01 and abs(my0 - y0) <= 1.01 and abs(my1 - y1) <= 1.01
    px, py = out["points"].as_subclass(torch.Tensor)[0].tolist()
    assert x0 <= px <= x1 and y0 <= py <= y1  # a point on the cell stays inside its box


@TRANSFORM_SETTINGS
@given(field=cell_fields(), train=st.booleans())
def test_a_segmentation_transform_keeps_the_mask_on_the_cell(field, train) -> None:
    size, box, config = field
    data = _cell_input(size, box)
    del data["boxes"], data["labels"], data["attributes"]
    out = build_transforms(Task.SEGMENTATION, train=train, config=config)(data)
    side = config.seg_size
    mask = out["mask"].as_subclass(torch.Tensor)
    assert tuple(mask.shape) == (side, side) and set(mask.unique().tolist()) <= {0, 1}
    height, width = size
    sx, sy = side / width, side / height
    x0, y0, x1, y1 = box
    if config.hflip_prob and train:
        x0, x1 = width - x1, width - x0
    if config.vflip_prob and train:
        y0, y1 = height - y1, height - y0
    expected = torch.zeros_like(mask, dtype=torch.bool)
    rows = slice(max(0, math.ceil(y0 * sy - 1)), math.floor(y1 * sy + 1))
    columns = slice(max(0, math.ceil(x0 * sx - 1)), math.floor(x1 * sx + 1))
    expected[rows, columns] = True
    assert not (mask.bool() & ~expected).any()  # no pixel of the cell moves off its place
