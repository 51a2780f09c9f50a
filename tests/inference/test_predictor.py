"""The predictor on real tiny models (inputs, outputs, errors) and on a local detector (tiling)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from support.testers import SMALL_INPUTS, small_test_config
from unihema.data.transforms import TransformConfig
from unihema.inference.image_processor import ImageInputError, load_image
from unihema.inference.predictor import Predictor
from unihema.inference.preprocessor import PreprocessorConfig
from unihema.inference.results import Prediction
from unihema.model.outputs import DetectionOutput, SegmentationOutput, VisionOutput
from unihema.model.unihema import UniHema


@pytest.fixture(scope="module")
def model() -> UniHema:
    model = UniHema.from_config(small_test_config()).eval()
    model.preprocessor = SMALL_INPUTS
    return model


def _field(height: int = 60, width: int = 90, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def test_predict_accepts_paths_pil_arrays_lists_and_generators(model: UniHema, tmp_path) -> None:
    path = tmp_path / "field.png"
    Image.fromarray(_field()).save(path)
    single = model.predict(path, tasks=["detection"], score_threshold=0.0)
    assert isinstance(single, Prediction) and single.source == str(path) and single.image_size == (60, 90)
    from_pil = model.predict(Image.open(path), tasks="detection", score_threshold=0.0)
    from_array = model.predict(_field(), tasks="detection", score_threshold=0.0)
    assert (
        [c.box for c in from_pil.cells] == [c.box for c in single.cells] == [c.box for c in from_array.cells]
    )
    many = model.predict([path, _field(seed=1)], tasks="detection")
    lazy = model.predict((_field(seed=s) for s in range(3)), tasks="detection")
    assert len(many) == 2 and len(lazy) == 3 and all(isinstance(p, Prediction) for p in many + lazy)
    (tmp_path / "slide" / "more").mkdir(parents=True)
    Image.fromarray(_field(seed=2)).save(tmp_path / "slide" / "b.png")
    Image.fromarray(_field(seed=3)).save(tmp_path / "slide" / "more" / "a.png")
    folder = model.predict(tmp_path / "slide", tasks="detection")
    assert [Path(p.source).name for p in folder] == ["b.png", "a.png"]  # sorted paths, recursively
    grey = model.predict(_field()[..., 0], tasks="detection", score_threshold=0.0)
    assert grey.image_size == (60, 90)


def test_prediction_fields_are_in_original_pixels(model: UniHema) -> None:
    result = model.predict(
        _field(), tasks=["detection", "fov_morphology", "segmentation", "classification", "vqa"],
        question="What is the shape of the nucleus?", score_threshold=0.0, max_new_tokens=3,
    )  # fmt: skip
    boxes = result.boxes()
    assert len(result.cells) == model.config.vision.num_queries  # one cell per query at threshold 0
    assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= 90).all() and (boxes[:, [1, 3]] <= 60).all()
    assert [c.score for c in result.cells] == sorted((c.score for c in result.cells), reverse=True)
    assert all(
        len(c.attributes) == 6 and all(0.5 <= p <= 1 for p in c.attribute_scores.values())
        for c in result.cells
    )
    assert result.mask.shape == (60, 90) and result.mask.dtype == bool
    assert sum(result.cell_class_probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert isinstance(result.answer, str) and result.question.startswith("What")
    assert result.timings["total"] >= result.timings["model"] > 0
    capped = model.predict(_field(), tasks="detection", score_threshold=0.0, max_detections=5)
    assert [c.box for c in capped.cells] == [c.box for c in result.cells[:5]]
    confident = model.predict(_field(), tasks="detection", score_threshold=0.5)
    assert all(c.score >= 0.5 for c in confident.cells)


def test_untrained_model_warns(tmp_path) -> None:
    untrained = UniHema.from_config(small_test_config()).eval()
    with pytest.warns(UserWarning, match="untrained"):
        result = untrained.predict(_field(), tasks="classification")
    assert any("untrained" in w for w in result.warnings)


def test_bad_inputs_are_named(model: UniHema, tmp_path) -> None:
    with pytest.raises(ImageInputError, match="missing.png: no such image file"):
        model.predict(tmp_path / "missing.png", tasks="detection")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageInputError, match="broken.png: not a readable image"):
        load_image(broken)
    with pytest.raises(ImageInputError, match=r"float images must hold finite values in \[0, 1\]"):
        load_image(np.full((4, 4, 3), 2.0))
    with pytest.raises(ValueError, match="vqa task needs a question"):
        model.predict(_field(), tasks="vqa")
    with pytest.raises(ValueError, match="unknown task"):
        model.predict(_field(), tasks="counting")


def test_exports_round_trip(model: UniHema, tmp_path) -> None:
    import geojson
    import pandas as pd

    result = model.predict(_field(), tasks=["fov_morphology", "segmentation"], score_threshold=0.0)
    paths = result.save(tmp_path, stem="f1")
    assert {p.name for p in paths.values()} == {"f1.json", "f1.geojson", "f1.mask.png", "f1.overlay.png"}
    data = json.loads(paths["json"].read_text())
    assert data["image_size"] == {"height": 60, "width": 90} and len(data["cells"]) == len(result.cells)
    collection = geojson.loads(paths["geojson"].read_text())
    assert collection.is_valid and len(collection["features"]) == len(result.cells)
    first = collection["features"][0]
    assert first["properties"]["objectType"] == "detection"
    assert first["properties"]["classification"]["name"] == result.cells[0].class_name
    x0, y0, x1, y1 = result.cells[0].box
    ring = first["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and min(p[0] for p in ring) == pytest.approx(x0, abs=0.01)
    assert max(p[1] for p in ring) == pytest.approx(y1, abs=0.01)
    mask = np.asarray(Image.open(paths["mask"]))
    assert mask.shape == (60, 90) and np.array_equal(mask > 0, result.mask)
    frame = result.to_dataframe()
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(result.cells)
    assert frame["class"].tolist() == [c.class_name for c in result.cells]
    coco = result.to_coco(image_id=7)
    assert coco["images"][0]["id"] == 7 and len(coco["annotations"]) == len(result.cells)
    annotation = coco["annotations"][0]
    assert annotation["bbox"][2] == pytest.approx(x1 - x0, abs=0.01)
    assert coco["categories"][annotation["category_id"] - 1]["name"] == result.cells[0].class_name


class LocalBlobDetector(nn.Module):
    """A detector whose answer for a pixel depends only on its neighbourhood: every dark blob is a cell
    (class 0) and the dark pixels are the mask. Tiling must reproduce its whole-field answer exactly."""

    preprocessor = PreprocessorConfig(
        transforms=TransformConfig(det_train_sizes=(64,), det_eval_size=64, det_max_size=160),
        pad_to_multiple=1,
    )

    def __init__(
        self, queries: int = 64, dark_below: float = 0.0, preprocessor: PreprocessorConfig | None = None
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.queries = queries
        self.dark_below = dark_below  # normalised red channel; 0 = the ImageNet mean
        if preprocessor is not None:
            self.preprocessor = preprocessor

    def forward_fields(self, images, prompts, tasks, image_mask):
        batch = images.shape[0]
        logits = torch.full((batch, self.queries, 3), -10.0)
        boxes = torch.full((batch, self.queries, 4), 0.5)
        dark = images[:, 0] < self.dark_below
        for i in range(batch):
            height = int((~image_mask[i]).any(1).sum())
            width = int((~image_mask[i]).any(0).sum())
            labelled, count = ndimage.label(dark[i, :height, :width].numpy())
            for q, (ys, xs) in enumerate(ndimage.find_objects(labelled)[: self.queries]):
                x0, x1, y0, y1 = xs.start, xs.stop, ys.start, ys.stop
                boxes[i, q] = torch.tensor([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height,
                                            (x1 - x0) / width, (y1 - y0) / height])  # fmt: skip
                logits[i, q, 0] = 5.0
        masks = torch.where(dark, 10.0, -10.0)[:, None]
        return VisionOutput(DetectionOutput(logits, boxes), SegmentationOutput(masks, masks))


def _cells_field(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 230, np.uint8)
    yy, xx = np.mgrid[:height, :width]
    centres: list[tuple[int, int]] = []
    while len(centres) < 18:  # separate cells (touching ones would merge into one blob)
        cy, cx = int(rng.integers(7, height - 7)), int(rng.integers(7, width - 7))
        if all((cy - y) ** 2 + (cx - x) ** 2 > 15**2 for y, x in centres):
            centres.append((cy, cx))
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 40
    return image


def test_tiled_result_equals_untiled_for_a_local_detector() -> None:
    # 64 x 160 fits whole (shorter side 64, longer 160) and in 64 px tiles: the same scale both ways.
    image = _cells_field(64, 160, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor(LocalBlobDetector())
    tasks = ["detection", "segmentation"]
    whole = predictor.predict(image, tasks=tasks, tiling={"mode": "never"})[0]
    tiled = predictor.predict(image, tasks=tasks, tiling={"mode": "always", "tile_size": 64, "overlap": 32})[
        0
    ]
    assert "overlapping tiles" in " ".join(tiled.warnings) and len(whole.cells) > 10

    def boxes(result):
        return sorted(tuple(round(v, 3) for v in c.box) for c in result.cells)

    assert boxes(tiled) == boxes(whole)
    assert np.array_equal(tiled.mask, whole.mask)
    # Without the core rule the seams would double-count: the windows see more cells than there are.
    raw = predictor.predict(image, tasks=tasks, tiling={"mode": "always", "tile_size": 64, "overlap": 32,
                                                        "iou_threshold": 1.0})[0]  # fmt: skip
    assert boxes(raw) == boxes(whole)


def _one_to_one(size: int, longest: int) -> PreprocessorConfig:
    """Inputs whose shorter side is ``size`` (and longer at most ``longest``) pass unresized."""
    sizes = TransformConfig(det_train_sizes=(size,), det_eval_size=size, det_max_size=longest)
    return PreprocessorConfig(transforms=sizes, pad_to_multiple=1)


@pytest.mark.realdata
def test_tiled_thick_smear_field_gives_the_cells_of_the_whole_field() -> None:
    from support.paths import dataset_path

    root = dataset_path("fiocruz_malaria_thick")
    path = sorted(root.glob("*/*/images/*.jpg"))[0]
    image = load_image(path)
    assert image.size == (3000, 4000)  # a 12-megapixel thick-smear field
    # Parasites and white-cell nuclei: the pixels darker than 100 in red, blobs of at most ~280 px, which
    # 600 px of overlap holds whole (each tile and the whole field are analysed at their own pixel size).
    dark = (100 / 255 - 0.485) / 0.229
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole_field = Predictor(LocalBlobDetector(256, dark, _one_to_one(3000, 4000)))
        tiles = Predictor(LocalBlobDetector(256, dark, _one_to_one(1024, 1024)))
    tasks = ["detection", "segmentation"]
    whole = whole_field.predict(image, tasks=tasks, tiling={"mode": "never"})[0]
    tiled = tiles.predict(image, tasks=tasks, tiling={"tile_size": 1024, "overlap": 600})[0]
    assert "overlapping tiles" in " ".join(tiled.warnings) and len(whole.cells) >= 5

    def boxes(result):
        return sorted(tuple(round(v, 2) for v in c.box) for c in result.cells)

    assert boxes(tiled) == boxes(whole)
    assert np.array_equal(tiled.mask, whole.mask)


def test_predict_samples_with_the_gather_core(model: UniHema, monkeypatch) -> None:
    # Inference records no gradient, so every deformable attention takes the faster gather core; the
    # grid_sample core (training, ONNX export) must not run.
    from unihema.model import deformable

    gathered = []
    gather = deformable.ms_deform_attn_gather

    def refuse(*args):
        raise AssertionError("predict ran the grid_sample core")

    monkeypatch.setattr(deformable, "ms_deform_attn_grid_sample", refuse)
    monkeypatch.setattr(deformable, "ms_deform_attn_gather", lambda *a: gathered.append(1) or gather(*a))
    result = model.predict(_field(), tasks=["detection", "segmentation"], score_threshold=0.0)
    assert result.image_size == (60, 90)
    assert gathered  # the encoder's and the decoder's layers
