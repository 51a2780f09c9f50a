"""The bad-input catalog, part 1: dataset folders (images, labels, annotation files, masks, descriptors).

Each case builds a small folder in a native layout holding good images and one bad input, runs
``unihema data check --json`` on it as a user would, and asserts

- the exact message the user sees for the bad input (the skipped or fixed entry naming its file, or the
  one-line error), matched in full;
- that the rest of the work completed: the good samples loaded, and every sample the reader returns
  without verification (what ``train`` and ``eval`` get) either decodes or fails with an error naming its
  file;
- that nothing already written was lost: the dataset folder's bytes are unchanged.

Part 2 (``test_bad_inputs_cli.py``) covers configurations, model folders, the other commands and writes.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from bad_input_builders import (
    GOOD_LABEL,
    SIZE,
    coco_set,
    disc,
    label_map,
    mask_set,
    noisy_pixels,
    snapshot,
    voc_set,
    voc_xml,
    write_photo,
    yolo_set,
)
from PIL import Image

from unihema.cli import main
from unihema.data.formats import read_dataset
from unihema.data.loader import UnreadableSampleWarning, build_loader
from unihema.data.schema import Task, UnreadableImageError
from unihema.data.transforms import TransformConfig

NON_UTF8 = os.fsdecode(b"caf\xe9 cell")  # a file name whose bytes are not UTF-8 (Latin-1 e-acute)
TRUNCATED = r"image file is truncated(?: \(\d+ bytes not processed\))?"  # PIL's words, JPEG or PNG
SMALL = TransformConfig(det_train_sizes=(32,), det_eval_size=32, det_max_size=64, seg_size=32)


# ------------------------------------------------------------------------------------------ image writers


def truncated(path: Path) -> None:
    write_photo(path)
    path.write_bytes(path.read_bytes()[:2000])


def zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def grey16(path: Path) -> None:
    Image.fromarray(noisy_pixels(path.name)[..., 0].astype(np.uint16) * 257).save(path)


def cmyk(path: Path) -> None:
    Image.fromarray(noisy_pixels(path.name)).convert("CMYK").save(path, format="JPEG")


def palette(path: Path) -> None:
    image = Image.fromarray(noisy_pixels(path.name)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 0
    image.save(path, transparency=0)


def grey(path: Path) -> None:
    Image.fromarray(noisy_pixels(path.name)[..., 0]).save(path)


def rgba(path: Path) -> None:
    pixels = np.dstack([noisy_pixels(path.name), np.full(SIZE[::-1], 128, np.uint8)])
    Image.fromarray(pixels, mode="RGBA").save(path)


def big(path: Path) -> None:
    """400 x 300 = 120,000 pixels (the catalog lowers PIL's decompression-bomb limit to match)."""
    write_photo(path, size=(400, 300))


# ------------------------------------------------------------------------------------------ the cases


@dataclass(frozen=True)
class Case:
    """One bad input in a dataset folder.

    Attributes:
        name: the case id.
        build: writes the folder (given its root).
        kind: ``"skipped"`` or ``"fixed"``: the list of the ``data check`` report the message is in;
            ``"loaded"``: the input is accepted without a message (``item`` names the sample).
        item: the file (relative to the root) the message names.
        message: regular expression the whole message must match.
        samples: how many samples load.
        options: ``--option`` values given to ``data check``.
        max_pixels: PIL's decompression-bomb limit during the case (``None``: the default).
        warning: regular expression of a warning decoding the images must give (``None``: none asked).
    """

    name: str
    build: Callable[[Path], Path]
    kind: str
    item: str
    message: str
    samples: int
    options: tuple[str, ...] = ()
    max_pixels: int | None = None
    warning: str | None = None


def _text(pattern: str) -> str:
    return re.escape(pattern)


BAD_LINE = "0 0.5 0.5 -0.2 0.4"
CASES = [
    # -- images of every kind, in a YOLO set (images/ + labels/ + classes.txt)
    Case("truncated image", lambda r: yolo_set(r, {"bad.png": truncated}), "skipped", "images/bad.png",
         rf"unreadable image \({TRUNCATED}\)", 2),
    Case("zero-byte image", lambda r: yolo_set(r, {"bad.png": zero_bytes}), "skipped", "images/bad.png",
         _text("unreadable image (cannot identify its format: an empty file, or not an image)"), 2),
    Case("16-bit grey image", lambda r: yolo_set(r, {"deep.png": grey16}), "loaded", "images/deep.png", "", 3),
    Case("CMYK image", lambda r: yolo_set(r, {"print.jpg": cmyk}), "loaded", "images/print.jpg", "", 3),
    Case("palette image with transparency", lambda r: yolo_set(r, {"pal.png": palette}), "loaded",
         "images/pal.png", "", 3),
    Case("grey image", lambda r: yolo_set(r, {"grey.png": grey}), "loaded", "images/grey.png", "", 3),
    Case("RGBA image", lambda r: yolo_set(r, {"alpha.png": rgba}), "loaded", "images/alpha.png", "", 3),
    Case("decompression bomb", lambda r: yolo_set(r, {"bomb.png": big}), "skipped", "images/bomb.png",
         r"image too large to decode safely, a possible decompression bomb \(Image size \(120000 pixels\) "
         r"exceeds limit of 40000 pixels, could be decompression bomb DOS attack\.\)", 2, max_pixels=20_000),
    Case("huge pixel count under the bomb limit", lambda r: yolo_set(r, {"huge.png": big}), "loaded",
         "images/huge.png", "", 3, max_pixels=100_000,
         warning=_text("Image size (120000 pixels) exceeds limit of 100000 pixels, could be decompression bomb "
                       "DOS attack.")),
    Case("non-UTF-8 file name", lambda r: yolo_set(r, {f"{NON_UTF8}.png": write_photo}), "loaded",
         "images/caf\\xe9 cell.png", "", 3),
    Case("broken image with a non-UTF-8 name", lambda r: yolo_set(r, {f"{NON_UTF8}.png": zero_bytes}),
         "skipped", "images/caf\\xe9 cell.png",
         _text("unreadable image (cannot identify its format: an empty file, or not an image)"), 2),
    Case("file name with spaces", lambda r: yolo_set(r, {"my cell 01.png": write_photo}), "loaded",
         "images/my cell 01.png", "", 3),
    # -- YOLO label files
    Case("empty YOLO label file", lambda r: yolo_set(r, labels={"empty": ""}), "fixed", "labels/empty.txt",
         _text("empty label file: read as an image without objects (YOLO convention)"), 3),
    Case("YOLO class nan", lambda r: yolo_set(r, labels={"x": "nan 0.5 0.5 0.1 0.1\n"}), "skipped",
         "labels/x.txt", _text("line 1: class id nan is not one of 0..2"), 2),
    Case("YOLO class inf", lambda r: yolo_set(r, labels={"x": GOOD_LABEL + "inf 0.5 0.5 0.1 0.1\n"}),
         "skipped", "labels/x.txt", _text("line 2: class id inf is not one of 0..2"), 2),
    Case("YOLO coordinate nan", lambda r: yolo_set(r, labels={"x": "1 nan 0.5 0.1 0.1\n"}), "skipped",
         "labels/x.txt", _text("line 1: a coordinate is not a finite number in '1 nan 0.5 0.1 0.1'"), 2),
    Case("YOLO box with negative size", lambda r: yolo_set(r, labels={"x": BAD_LINE + "\n"}), "skipped",
         "labels/x.txt", _text(f"line 1: negative width or height in {BAD_LINE!r}"), 2),
    Case("YOLO box outside the image", lambda r: yolo_set(r, labels={"x": GOOD_LABEL + "1 1.6 1.6 0.1 0.1\n"}),
         "fixed", "labels/x.txt", _text("dropped wbc box (99.2, 74.4, 105.6, 79.2): it lies outside the image (64x48)"), 3),
    Case("YOLO line with 4 fields", lambda r: yolo_set(r, labels={"x": "0 0.5 0.5 0.2\n"}), "skipped",
         "labels/x.txt", _text("line 1: expected 5 fields 'class cx cy w h', got 4: '0 0.5 0.5 0.2'"), 2),
    Case("YOLO class not a number", lambda r: yolo_set(r, labels={"x": "rbc 0.5 0.5 0.2 0.2\n"}), "skipped",
         "labels/x.txt", _text("line 1: not a number in 'rbc 0.5 0.5 0.2 0.2'"), 2),
    Case("malformed data.yaml", lambda r: _with(yolo_set(r), "data.yaml", "names: [RBC, WBC\ntrain: : x\n"),
         "fixed", "data.yaml",
         _text("not a readable YAML file (expected ',' or ']', but got ':' at line 2, column 6): ignored; folders and "
               "class names found without it"), 2),
    Case("data.yaml names of the wrong type", lambda r: _with(yolo_set(r), "data.yaml", "names: 3\n"), "fixed",
         "data.yaml", _text("`names` must be a list or a mapping id -> name, got 3: class names taken from "
                            "classes.txt or obj.names or the names= option"), 2),
    # -- Pascal VOC
    Case("malformed XML", lambda r: voc_set(r, {"bad": "<annotation><object>"}), "skipped", "Annotations/bad.xml",
         _text("malformed XML (no element found: line 1, column 20)"), 2),
    Case("empty XML file", lambda r: voc_set(r, {"bad": ""}), "skipped", "Annotations/bad.xml",
         _text("malformed XML (no element found: line 1, column 0)"), 2),
    Case("VOC box with negative size", lambda r: voc_set(r, {"bad": voc_xml("bad.jpg", [("RBC", (30, 5, 20, 20))])}),
         "skipped", "Annotations/bad.xml", _text("box 0 (RBC) has max < min: (30, 5, 20, 20)"), 2),
    Case("VOC coordinate not a number", lambda r: voc_set(r, {"bad": voc_xml("bad.jpg", [("RBC", ("ab", 5, 20, 20))])}),
         "skipped", "Annotations/bad.xml", _text("object 0 (RBC): <xmin> is not a number: 'ab'"), 2),
    Case("VOC <size> disagreeing with the image",
         lambda r: voc_set(r, {"small": voc_xml("small.jpg", [("RBC", (5, 5, 60, 40))], size=(32, 24))}),
         "fixed", "Annotations/small.xml",
         _text("<size> 32x24 differs from the image 64x48: used the image's size"), 3),
    Case("split list with an unknown id", lambda r: voc_set(r, split_lists={"test": "good_1\nghost\n"}), "fixed",
         "ImageSets/Main/test.txt", _text("1 id(s) name no annotation file ('ghost'): not used"), 2),
    # -- COCO
    Case("malformed JSON", lambda r: coco_set(r, {"instances_val.json": '{"images": [], "annotations": ['}),
         "skipped", "annotations/instances_val.json",
         _text("unreadable json (Expecting value: line 1 column 32 (char 31))"), 2),
    Case("COCO file without annotations", lambda r: coco_set(r, {"instances_val.json": json.dumps(
         {"images": [{"id": 1, "file_name": "good_1.png"}], "categories": [{"id": 1, "name": "RBC"}]})}),
         "skipped", "annotations/instances_val.json",
         _text("no `annotations` list: its 1 images would read as holding no objects; not read"), 2),
    Case("COCO annotations without image_id", lambda r: coco_set(r, {"instances_val.json": json.dumps(
         {"images": [{"id": 1, "file_name": "good_1.png"}], "categories": [{"id": 1, "name": "RBC"}],
          "annotations": [{"id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]}]})}),
         "skipped", "annotations/instances_val.json",
         _text("none of its 1 annotations names an image by `image_id`; not read"), 2),
    Case("COCO bbox with NaN", lambda r: coco_set(r, {"instances_val.json":
         '{"images": [{"id": 1, "file_name": "good_1.png", "width": NaN, "height": 48}], "categories": '
         '[{"id": 1, "name": "RBC"}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, '
         '"bbox": [NaN, 1, 5, 5]}]}'}),
         "skipped", "annotations/instances_val.json: image 1 (good_1.png)",
         _text("box 0 (rbc) has a non-finite coordinate (nan, 1, nan, 6)"), 2),
    # -- masks (images/ + masks/)
    Case("label-map mask 0/1/2", lambda r: mask_set(r, {"labels": label_map()}),
         "fixed", "masks/labels.png",
         _text("values 0, 1, 2 are class indices, not the grey levels of mapping 'cell': every nonzero label read as "
               "foreground (give mapping=[...] to choose labels)"), 3, options=("mapping=cell",)),
    Case("all-black mask", lambda r: mask_set(r, {"black": np.zeros(SIZE[::-1])}), "fixed", "masks/black.png",
         _text("no pixel is foreground under mapping 'nonzero' (most common value 0)"), 3),
    Case("all-white mask", lambda r: mask_set(r, {"white": np.full(SIZE[::-1], 255)}), "fixed", "masks/white.png",
         _text("every pixel is foreground under mapping 'nonzero' (no black pixel; most common value 255): if the "
               "background has another value, give colour_map or mapping"), 3),
    Case("malformed class CSV", lambda r: mask_set(r, files={"masks classes.csv": "image,class\ngood_1,lymphocyte\ngood_2\n"}),
         "skipped", "masks classes.csv", _text("line 3: expected 'image id,class', got ['good_2']"), 2),
    Case("truncated mask", lambda r: _truncate(mask_set(r, {"cut": disc(255)}), "masks/cut.png"), "skipped",
         "masks/cut.png", rf"unreadable mask \({TRUNCATED}\)", 2),
]  # fmt: skip


def _with(root: Path, name: str, text: str) -> Path:
    (root / name).write_text(text)
    return root


def _truncate(root: Path, name: str) -> Path:
    path = root / name
    path.write_bytes(path.read_bytes()[:80])
    return root


def _check(root: Path, options: tuple[str, ...], capsys) -> tuple[int, dict | None, str]:
    args = ["data", "check", str(root), "--json", *[f"--option={o}" for o in options]]
    code = main(args)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_bad_input_is_named_and_the_rest_loads(case: Case, tmp_path, capsys, monkeypatch) -> None:
    if case.max_pixels is not None:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", case.max_pixels)
    root = case.build(tmp_path / "data")
    before = snapshot(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, report, err = _check(root, case.options, capsys)
    assert code == 0, err
    if case.kind == "loaded":
        assert not report["skipped"], report["skipped"]
    else:
        key = "reason" if case.kind == "skipped" else "what"
        messages = [entry[key] for entry in report[case.kind] if entry["path"] == case.item]
        assert any(re.fullmatch(case.message, message) for message in messages), report[case.kind]
    assert report["samples"] == case.samples
    # What train and eval get (no verification): every sample decodes, or fails naming its file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = read_dataset(root, options=dict(o.split("=", 1) for o in case.options))
    ids = {sample.sample_id for sample in result.samples}
    if case.kind == "loaded":
        assert case.item in ids
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for sample in result.samples:
            try:
                image = sample.load_image()
                mask = sample.load_mask()
            except UnreadableImageError as error:
                assert case.item.rsplit("/", 1)[-1] in str(error), error
                continue
            assert image.mode == "RGB" and image.size == (sample.image_size[1], sample.image_size[0])
            if mask is not None:
                assert mask.shape == sample.image_size and mask.dtype == bool
    if case.warning is not None:
        assert any(re.fullmatch(case.warning, str(w.message)) for w in caught), [
            str(w.message) for w in caught
        ]
    assert snapshot(root) == before  # reading never changes what is on disk


def test_a_label_map_reads_as_its_nonzero_labels(tmp_path) -> None:
    labels = label_map()
    root = mask_set(tmp_path / "data", {"labels": labels})
    with pytest.warns(UserWarning, match="read as label maps"):
        result = read_dataset(root, options={"mapping": "cell"})
    sample = next(s for s in result.samples if s.sample_id == "images/labels.jpg")
    np.testing.assert_array_equal(sample.load_mask(), labels > 0)


def test_voc_size_disagreement_is_read_the_same_by_check_train_and_eval(tmp_path) -> None:
    root = voc_set(
        tmp_path / "data", {"small": voc_xml("small.jpg", [("RBC", (5, 5, 60, 40))], size=(32, 24))}
    )
    with pytest.warns(UserWarning, match="<size> 32x24 differs"):
        result = read_dataset(root)  # as train and eval read it
    sample = next(s for s in result.samples if "small" in s.sample_id)
    assert sample.image_size == (48, 64)
    np.testing.assert_array_equal(sample.boxes, [[5, 5, 60, 40]])  # not clipped to the wrong <size>


def test_split_list_ids_may_hold_spaces(tmp_path) -> None:
    root = voc_set(tmp_path / "data", {"my cell 01": voc_xml("my cell 01.jpg", [("WBC", (2, 2, 30, 30))])},
                   split_lists={"test": "my cell 01\n", "train": "good_1\ngood_2\n"})  # fmt: skip
    result = read_dataset(root)
    assert {s.sample_id: s.split for s in result.samples} == {
        "JPEGImages/good_1.jpg": "train", "JPEGImages/good_2.jpg": "train", "JPEGImages/my cell 01.jpg": "test",
    }  # fmt: skip


def test_a_bad_descriptor_is_named_and_nothing_is_read(tmp_path, capsys) -> None:
    root = _with(yolo_set(tmp_path / "data"), "unihema.yaml", "format: yolo\noptions: [a\n")
    code, _, err = _check(root, (), capsys)
    assert code == 2
    assert err.strip() == (
        f"unihema: error: {root / 'unihema.yaml'}: not a readable YAML file (expected ',' or ']', but got "
        "'<stream end>' at line 3, column 1)"
    )


# ------------------------------------------------------------------------------- decoded in train and eval


def _training_batches(samples, task: Task) -> tuple[list[str], list[str]]:
    """The sample ids of every batch of a training loader, and the warnings it gave."""
    loader = build_loader(samples, task, 2, train=True, transform_config=SMALL, drop_last=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = [sample.sample_id for batch in loader for sample in batch["samples"]]
    return seen, [str(w.message) for w in caught if issubclass(w.category, UnreadableSampleWarning)]


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncate", rf"unreadable image \({TRUNCATED}\)"),
        ("bomb", r"image too large to decode safely, a possible decompression bomb \(Image size \(120000 pixels\) "
                 r"exceeds limit of 40000 pixels, could be decompression bomb DOS attack\.\)"),
    ],
)  # fmt: skip
def test_training_skips_an_image_that_fails_when_decoded_and_names_it(damage, reason, tmp_path, monkeypatch):
    root = yolo_set(tmp_path / "data", {"late.png": big})
    samples = read_dataset(root).samples  # headers only: the damage is found when a batch decodes the image
    if damage == "truncate":
        _truncate(root, "images/late.png")
    else:  # a limit lowered after reading stands for a bomb that only decoding reveals
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    seen, messages = _training_batches(samples, Task.DETECTION)
    assert len(seen) == 3 and "images/late.png" not in seen  # a readable sample took its place
    (message,) = messages
    assert re.fullmatch(
        rf"skipped sample data/images/late\.png: {re.escape(str(root / 'images' / 'late.png'))}: {reason}; the next "
        "readable detection sample takes its place",
        message,
    )


def test_training_gives_up_naming_the_file_when_nothing_near_it_reads(tmp_path, monkeypatch) -> None:
    samples = read_dataset(yolo_set(tmp_path / "data")).samples
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"^no readable detection sample near index 0: 2 in a row could not be "
                                         r"read; first: .*good_1\.png: image too large to decode safely"):  # fmt: skip
        _training_batches(samples, Task.DETECTION)


def test_a_mask_that_fails_when_decoded_is_named_in_training(tmp_path) -> None:
    root = mask_set(tmp_path / "data", {"late": disc(255)})
    samples = read_dataset(root).samples
    _truncate(root, "masks/late.png")
    seen, messages = _training_batches(samples, Task.SEGMENTATION)
    assert len(seen) == 3 and "images/late.jpg" not in seen
    (message,) = messages
    assert message.startswith(
        f"skipped sample data/images/late.jpg: {root / 'masks' / 'late.png'}: unreadable image"
    )


def test_evaluation_names_an_image_that_fails_when_decoded(tmp_path) -> None:
    from unihema.evaluate.evaluator import EvalConfig, EvalRun

    root = yolo_set(tmp_path / "data", {"late.png": write_photo})
    samples = read_dataset(root).samples
    _truncate(root, "images/late.png")
    run = EvalRun(EvalConfig(batch_size=2, transforms=SMALL), device=None)  # type: ignore[arg-type]
    batches = list(run.batches(samples, Task.DETECTION))
    assert sum(len(b["samples"]) for b in batches) == 2
    (skipped,) = run.skipped
    assert skipped["sample"] == "data/images/late.png"
    assert re.fullmatch(
        rf"UnreadableImageError: {re.escape(str(root / 'images' / 'late.png'))}: unreadable image \({TRUNCATED}\)",
        skipped["reason"],
    )
