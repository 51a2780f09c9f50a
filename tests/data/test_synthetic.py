"""The synthetic smear corpus: determinism, exact ground truth, attribute-driven drawing, tasks, I/O."""

from __future__ import annotations

import colorsys
import json
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

from unihema.data.prompts import task_prompt
from unihema.data.schema import UNKNOWN, Task
from unihema.data.synthetic import (
    DETECTION_LABELS,
    WBC_TYPES,
    SyntheticConfig,
    SyntheticCorpus,
    WhiteCellSpec,
    fov_attributes_for,
    generate_corpus,
    generate_field,
    render_red_cell,
    render_white_cell,
    sample_white_cell,
)
from unihema.data.vocab import (
    CELL_ATTRIBUTES,
    CELL_CLASSES,
    DETECTION_CLASSES,
    FOV_ATTRIBUTE_NAMES,
    FOV_ATTRIBUTES,
    detection_index,
)

SMALL = {"image_size": 128, "n_images": 24, "seed": 7}


@pytest.fixture(scope="module")
def corpus() -> SyntheticCorpus:
    return SyntheticCorpus(SyntheticConfig(**SMALL))


def _field(seed: int, **overrides):
    return generate_field(np.random.default_rng(seed), SyntheticConfig(**{**SMALL, **overrides}))


def _lymphocyte(**changes: str) -> WhiteCellSpec:
    base = {
        "cell_size": "small", "cell_shape": "round", "nucleus_shape": "unsegmented-round",
        "nuclear_cytoplasmic_ratio": "low", "chromatin_density": "densely", "cytoplasm_vacuole": "no",
        "cytoplasm_texture": "clear", "cytoplasm_colour": "blue", "granule_type": "nil",
        "granule_colour": "nil", "granularity": "no",
    }  # fmt: skip
    return WhiteCellSpec("lymphocyte", {**base, **changes})


def _mean_rgb(patch, region: np.ndarray) -> np.ndarray:
    return patch.colour[region].mean(axis=0)


def _mean_hue(patch, region: np.ndarray) -> float:
    r, g, b = (_mean_rgb(patch, region) / 255.0).tolist()
    return colorsys.rgb_to_hsv(r, g, b)[0]


def _extent(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def _elongation(mask: np.ndarray) -> float:
    rows, cols = np.nonzero(mask)
    eig = np.linalg.eigvalsh(np.cov(np.stack([rows, cols]).astype(float)))
    return float(np.sqrt(eig[-1] / eig[0]))


# --------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", 40),
        ("image_size", (128, "x")),
        ("n_images", 0),
        ("rbc_density", (0.5, 0.2)),
        ("rbc_density", (0.1, 0.9)),
        ("wbc_per_field", (3, 1)),
        ("wbc_types", ("neutrophil", "megakaryocyte")),
        ("malaria_fraction", 1.5),
        ("abnormal_field_fraction", 0.9),  # with malaria_fraction 0.25: more than all fields
        ("crop_size", 4),
        ("mask_target", "nuclei"),
        ("split_fractions", (0.5, 0.5, 0.5)),
        ("noise_std", -1.0),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"SyntheticConfig.{field}"):
        SyntheticConfig(**{**SMALL, field: value})


def test_config_normalises_image_size() -> None:
    assert SyntheticConfig(image_size=160).image_size == (160, 160)
    cfg = SyntheticConfig(image_size=(128, 192))
    assert (cfg.height, cfg.width) == (128, 192)
    assert _field(0, image_size=(128, 192)).image.shape == (128, 192, 3)


# ---------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_fields_and_different_seed_differs() -> None:
    a, b, c = _field(11), _field(11), _field(12)
    assert a.image.dtype == np.uint8 and a.image.shape == (128, 128, 3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.box_attributes, b.box_attributes)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


def test_corpus_fields_do_not_depend_on_generation_order_or_cache() -> None:
    cfg = SyntheticConfig(**SMALL)
    forward, backward = SyntheticCorpus(cfg), SyntheticCorpus(cfg, cache=False)
    for index in reversed(range(5)):
        backward.field(index)
    for index in range(5):
        np.testing.assert_array_equal(forward.field(index).image, backward.field(index).image)
    other = SyntheticCorpus(SyntheticConfig(**{**SMALL, "seed": 8}))
    assert not np.array_equal(forward.field(0).image, other.field(0).image)
    assert forward.indices("test") == SyntheticCorpus(cfg).indices("test")


def test_parallel_generation_gives_the_same_fields() -> None:
    cfg = SyntheticConfig(image_size=96, n_images=8, seed=5, rbc_radius=7.0)
    parallel, sequential = SyntheticCorpus(cfg), SyntheticCorpus(cfg)
    parallel.generate(workers=2)
    for index in range(len(parallel)):
        a, b = parallel.field(index), sequential.field(index)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.mask, b.mask)
    with pytest.raises(ValueError, match="workers"):
        parallel.generate(workers=0)


# --------------------------------------------------------------------------------------- ground truth


def test_boxes_are_inside_the_image_and_tight_around_each_cell_mask(corpus: SyntheticCorpus) -> None:
    height, width = corpus.config.height, corpus.config.width
    background = None
    for index in range(8):
        fov = corpus.field(index)
        assert len(fov.cells) > 10
        occupied = np.zeros((height, width), dtype=np.int32)
        for cell in fov.cells:
            x0, y0, x1, y1 = cell.box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            full = cell.full_mask((height, width))
            occupied += full
            rows, cols = np.nonzero(full)
            # Tight: the box is exactly the extent of the cell's pixels.
            assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert occupied.max() == 1, "cells overlap"
        # Pixels outside every cell are background: bright and unsaturated.
        background = fov.image[occupied == 0].astype(float).mean(axis=0)
        assert background.min() > 200
        for cell in fov.cells:
            mask = cell.full_mask((height, width))
            inside = fov.image[mask].astype(float).mean(axis=0)
            assert np.abs(inside - background).max() > 15, f"{cell.label} not visibly drawn"
            # The mask follows the drawn outline: two pixels outside it the image is already the local
            # background (compared with a ring further out, as the illumination varies across the field).
            free = occupied == 0
            halo = (
                ndimage.binary_dilation(mask, iterations=3)
                & ~ndimage.binary_dilation(mask, iterations=2)
                & free
            )
            far = (
                ndimage.binary_dilation(mask, iterations=8)
                & ~ndimage.binary_dilation(mask, iterations=5)
                & free
            )
            if halo.sum() >= 10 and far.sum() >= 10:
                step = fov.image[halo].astype(float).mean(axis=0) - fov.image[far].astype(float).mean(axis=0)
                assert np.abs(step).max() < 8, f"{cell.label} drawn beyond its mask"


def test_white_cells_and_platelets_are_whole_and_border_red_cells_flagged(corpus: SyntheticCorpus) -> None:
    seen_truncated = False
    for index in range(8):
        for cell in corpus.field(index).cells:
            if cell.label in WBC_TYPES or cell.label == "platelet":
                assert not cell.truncated
            x0, y0, x1, y1 = cell.box
            touches = x0 == 0 or y0 == 0 or x1 == corpus.config.width or y1 == corpus.config.height
            if cell.truncated:  # a cut cell reaches the border (a whole one may just touch it)
                assert touches
            seen_truncated |= cell.truncated
    assert seen_truncated


def test_labels_and_attributes_follow_the_vocabulary(corpus: SyntheticCorpus) -> None:
    labels_seen = set()
    for index in range(len(corpus)):
        fov = corpus.field(index)
        for cell, label, attrs in zip(fov.cells, fov.labels, fov.box_attributes):
            assert DETECTION_CLASSES[label] == cell.label
            labels_seen.add(cell.label)
            if cell.is_wbc:
                expected = fov_attributes_for(cell.spec)
                decoded = {name: dict(FOV_ATTRIBUTES)[name][v] for name, v in zip(FOV_ATTRIBUTE_NAMES, attrs)}
                assert decoded == expected
                assert (cell.cell_attributes >= 0).all()
            else:
                assert (attrs == UNKNOWN).all()
                assert cell.cell_attributes is None
            if cell.label == "ring":
                assert fov.condition == "malaria" and cell.parasites >= 1
    assert labels_seen <= set(DETECTION_LABELS)
    assert {"rbc", "platelet"} <= labels_seen and labels_seen & set(WBC_TYPES)


@pytest.mark.parametrize("target", ["wbc", "wbc_nucleus", "rbc", "all"])
def test_segmentation_mask_is_the_union_of_the_target_cells(target: str) -> None:
    fov = _field(5, mask_target=target, malaria_fraction=1.0, abnormal_field_fraction=0.0)
    shape = fov.mask.shape
    expected = np.zeros(shape, dtype=bool)
    for cell in fov.cells:
        if target == "all" or (target == "wbc" and cell.is_wbc):
            expected |= cell.full_mask(shape)
        elif target == "wbc_nucleus" and cell.is_wbc:
            nucleus = cell.full_mask(shape, nucleus=True)
            assert (nucleus <= cell.full_mask(shape)).all()
            expected |= nucleus
        elif target == "rbc" and cell.label in ("rbc", "ring", "sickle cell", "target cell", "elliptocyte"):
            expected |= cell.full_mask(shape)
    assert expected.any()
    np.testing.assert_array_equal(fov.mask, expected)
    # Every mask pixel lies inside the box of a target cell.
    in_boxes = np.zeros(shape, dtype=bool)
    for cell in fov.cells:
        x0, y0, x1, y1 = cell.box.astype(int)
        in_boxes[y0:y1, x0:x1] = True
    assert (fov.mask <= in_boxes).all()


# ---------------------------------------------------------------------------- attribute-driven drawing


def test_cytoplasm_colour_sets_the_hue_of_the_cytoplasm() -> None:
    hues = {}
    for colour in ("light blue", "blue", "purple blue"):
        patch = render_white_cell(np.random.default_rng(0), _lymphocyte(cytoplasm_colour=colour))
        hues[colour] = _mean_hue(patch, patch.cytoplasm)
    assert hues["purple blue"] - hues["light blue"] > 0.06
    assert hues["purple blue"] - hues["blue"] > 0.04
    assert all(0.5 < h < 0.8 for h in hues.values())  # all in the blue-violet range


@pytest.mark.parametrize("cell_type", WBC_TYPES)
def test_cell_size_changes_the_cell_extent(cell_type: str) -> None:
    rng = np.random.default_rng(1)
    spec = sample_white_cell(rng, cell_type).with_attributes(cell_shape="round")
    big = render_white_cell(np.random.default_rng(2), spec.with_attributes(cell_size="big"))
    small = render_white_cell(np.random.default_rng(2), spec.with_attributes(cell_size="small"))
    assert min(_extent(big.mask)) >= max(_extent(small.mask)) + 3


def test_nucleus_attributes_drive_the_nucleus_drawing() -> None:
    high = render_white_cell(np.random.default_rng(3), _lymphocyte(nuclear_cytoplasmic_ratio="high"))
    low = render_white_cell(np.random.default_rng(3), _lymphocyte(nuclear_cytoplasmic_ratio="low"))
    assert high.nucleus.sum() / high.mask.sum() > 0.45 > low.nucleus.sum() / low.mask.sum()

    dense = render_white_cell(np.random.default_rng(3), _lymphocyte(chromatin_density="densely"))
    loose = render_white_cell(np.random.default_rng(3), _lymphocyte(chromatin_density="loosely"))
    assert _mean_rgb(dense, dense.nucleus).sum() + 60 < _mean_rgb(loose, loose.nucleus).sum()

    # Lobed and indented nuclei are far from convex; a round one is convex.
    def solidity(shape: str) -> float:
        patch = render_white_cell(np.random.default_rng(4), _lymphocyte(nucleus_shape=shape))
        points = np.argwhere(patch.nucleus).astype(float)
        return len(points) / ConvexHull(points).volume

    round_ = solidity("unsegmented-round")
    assert round_ > 0.95
    assert solidity("segmented-multilobed") < 0.8 * round_
    assert solidity("segmented-bilobed") < 0.85 * round_
    assert solidity("unsegmented-band") < 0.85 * round_
    assert solidity("unsegmented-indented") < 0.95 * round_


def test_vacuoles_and_granules_are_drawn_from_their_attributes() -> None:
    def near_white(patch) -> int:
        return int((patch.colour[patch.cytoplasm].min(axis=1) > 200).sum())

    monocyte = sample_white_cell(np.random.default_rng(5), "monocyte").with_attributes(
        nuclear_cytoplasmic_ratio="low", cytoplasm_colour="blue", cytoplasm_texture="clear"
    )
    with_vac = render_white_cell(np.random.default_rng(5), monocyte.with_attributes(cytoplasm_vacuole="yes"))
    without = render_white_cell(np.random.default_rng(5), monocyte.with_attributes(cytoplasm_vacuole="no"))
    assert near_white(with_vac) > near_white(without) + 10

    def redness(granule: str, colour: str) -> float:
        spec = _lymphocyte(
            cytoplasm_colour="light blue", granule_type=granule, granule_colour=colour, granularity="yes"
        )
        patch = render_white_cell(np.random.default_rng(6), spec)
        r, _, b = _mean_rgb(patch, patch.cytoplasm)
        return float(r - b)

    plain = _lymphocyte(cytoplasm_colour="light blue")
    patch = render_white_cell(np.random.default_rng(6), plain)
    r, _, b = _mean_rgb(patch, patch.cytoplasm)
    assert redness("round", "red") > float(r - b) + 40
    assert redness("coarse", "purple") < redness("small", "pink")


def test_sickle_cells_are_elongated_and_normal_cells_round() -> None:
    rng = np.random.default_rng(8)
    sickles = [render_red_cell(rng, "sickle cell", 10.0) for _ in range(20)]
    normals = [render_red_cell(rng, "rbc", 10.0) for _ in range(20)]
    ellipses = [render_red_cell(rng, "elliptocyte", 10.0) for _ in range(20)]
    assert min(_elongation(p.mask) for p in sickles) > 2.0
    assert max(_elongation(p.mask) for p in normals) < 1.15
    assert min(_elongation(p.mask) for p in ellipses) > 1.4

    def aspect(mask: np.ndarray) -> float:
        h, w = _extent(mask)
        return max(h, w) / min(h, w)

    assert (
        np.mean([aspect(p.mask) for p in sickles]) > 1.25 > 1.1 > np.mean([aspect(p.mask) for p in normals])
    )
    # In a sickle-cell field the boxes of sickle cells are elongated too.
    cfg = SyntheticConfig(
        image_size=192, malaria_fraction=0.0, abnormal_field_fraction=1.0, abnormal_rbc_fraction=(1.0, 1.0)
    )
    fields = (generate_field(np.random.default_rng(seed), cfg) for seed in range(30))
    fov = next(f for f in fields if f.condition == "sickle cell")
    assert fov.disease == "sickle cell disease"
    boxes = fov.boxes[(fov.labels == detection_index("sickle cell"))]
    boxes = boxes[(boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < 192) & (boxes[:, 3] < 192)]
    sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    assert len(boxes) >= 3 and (sides.max(axis=1) / sides.min(axis=1)).mean() > 1.25


def test_ring_stage_parasites_darken_the_red_cell() -> None:
    infected = render_red_cell(np.random.default_rng(10), "ring", 10.0, parasites=1)
    clean = render_red_cell(np.random.default_rng(10), "rbc", 10.0)
    assert infected.parasites == 1 and clean.parasites == 0
    blue_dark = lambda p: int(((p.colour[..., 2] > p.colour[..., 0]) & p.mask).sum())  # noqa: E731
    assert blue_dark(infected) > 5 and blue_dark(clean) == 0


def test_white_cell_spec_validates_attributes() -> None:
    with pytest.raises(ValueError, match="cytoplasm_colour"):
        _lymphocyte(cytoplasm_colour="green")
    with pytest.raises(ValueError, match="cell_type"):
        WhiteCellSpec("erythrocyte", _lymphocyte().attributes)
    with pytest.raises(ValueError, match="missing"):
        WhiteCellSpec("lymphocyte", {"cell_size": "big"})
    spec = sample_white_cell(np.random.default_rng(0), "monocyte")
    assert (spec.attributes["granule_type"] == "nil") == (spec.attributes["granularity"] == "no")


# ----------------------------------------------------------------------------------------------- tasks


def test_every_task_has_correctly_shaped_samples(corpus: SyntheticCorpus) -> None:
    height, width = corpus.config.height, corpus.config.width
    for task in Task:
        samples = corpus.samples(task, "train")
        assert samples, f"no {task.value} samples"
        for sample in samples[:40]:
            assert sample.task == task and sample.dataset == "synthetic" and sample.split == "train"
            image = sample.load_image()
            assert image.mode == "RGB" and (image.height, image.width) == sample.image_size
            if task in (Task.DETECTION, Task.FOV_MORPHOLOGY, Task.SEGMENTATION):
                assert sample.image_size == (height, width) and sample.prompt == ""
                assert sample.disease in (
                    "healthy",
                    "malaria",
                    "sickle cell disease",
                    "thalassaemia",
                    "hereditary elliptocytosis",
                )
                assert sample.disease in task_prompt(sample)
            if task.has_boxes:
                assert sample.boxes.shape == (len(sample.box_labels), 4) and len(sample.boxes) > 0
                assert sample.box_attributes.shape == (len(sample.boxes), len(FOV_ATTRIBUTES))
            if task == Task.FOV_MORPHOLOGY:
                assert all(DETECTION_CLASSES[label] in WBC_TYPES for label in sample.box_labels)
                assert (sample.box_attributes >= 0).all()
            if task == Task.SEGMENTATION:
                mask = sample.load_mask()
                assert mask.shape == (height, width) and mask.dtype == bool and mask.any()
            if task in (Task.CLASSIFICATION, Task.CELL_MORPHOLOGY):
                assert min(sample.image_size) >= corpus.config.crop_size
                assert CELL_CLASSES[sample.cell_class] in SyntheticCorpus.annotated_classes(task) or (
                    task == Task.CLASSIFICATION
                )
            if task == Task.CELL_MORPHOLOGY:
                assert sample.cell_attributes.shape == (len(CELL_ATTRIBUTES),)
                assert (sample.cell_attributes >= 0).all()
                assert CELL_CLASSES[sample.cell_class] in WBC_TYPES
            if task == Task.VQA:
                assert sample.prompt.startswith("Q: ") and sample.text_target
            if task == Task.MLM:
                assert sample.prompt.startswith("mask: ") and "<extra_id_0>" in sample.prompt
                assert "<extra_id" not in sample.text_target


def test_disease_context_follows_the_field_and_can_be_turned_off(corpus: SyntheticCorpus) -> None:
    for sample in corpus.samples(Task.DETECTION):
        fov = corpus.field(sample.extra["field_index"])
        assert sample.disease == fov.disease
        has_rings = detection_index("ring") in sample.box_labels.tolist()
        assert has_rings <= (sample.disease == "malaria")
    plain = SyntheticCorpus(SyntheticConfig(**SMALL, disease_context=False))
    assert all(s.disease is None for s in plain.samples(Task.SEGMENTATION, "val"))


def test_classification_crops_are_centred_on_their_cell(corpus: SyntheticCorpus) -> None:
    classes = set()
    for sample in corpus.samples(Task.CLASSIFICATION):
        fov = corpus.field(sample.extra["field_index"])
        cell = fov.cells[sample.extra["cell_index"]]
        x0, y0, x1, y1 = sample.extra["crop"]
        bx0, by0, bx1, by1 = cell.box
        assert x0 <= bx0 and y0 <= by0 and bx1 <= x1 and by1 <= y1, "cell not wholly inside its crop"
        np.testing.assert_array_equal(np.asarray(sample.load_image()), fov.image[y0:y1, x0:x1])
        classes.add(CELL_CLASSES[sample.cell_class])
    assert {"normal rbc", "platelet"} <= classes and classes & set(WBC_TYPES)


def test_text_samples_come_from_the_white_cell_attributes(corpus: SyntheticCorpus) -> None:
    vqa = corpus.samples(Task.VQA, "train")
    morph = {s.sample_id: s for s in corpus.samples(Task.CELL_MORPHOLOGY, "train")}
    assert len(vqa) <= corpus.config.max_vqa_per_cell * len(morph)
    for sample in vqa[:20]:
        source = morph[sample.extra["source_sample_id"]]
        np.testing.assert_array_equal(sample.image.array, source.image.array)
        assert sample.extra["split_group"] == source.extra["split_group"]


def test_both_checks_balance_the_training_verdicts_and_leave_the_test_questions_alone() -> None:
    paired = SyntheticCorpus(SyntheticConfig(**SMALL, vqa_checks="both", max_vqa_per_cell=None))
    plain = SyntheticCorpus(SyntheticConfig(**SMALL, max_vqa_per_cell=None))

    def verdicts(c: SyntheticCorpus, split: str) -> list[str]:
        return [
            s.text_target.split(",")[0]
            for s in c.samples(Task.VQA, split)
            if s.prompt.startswith("Q: Is this")
        ]

    train = verdicts(paired, "train")
    assert train and train.count("Yes") == train.count("No")  # every class check has its complement
    assert len(train) == 2 * len(verdicts(plain, "train"))
    pairs = lambda c: [(s.prompt, s.text_target) for s in c.samples(Task.VQA, "test")]  # noqa: E731
    assert pairs(paired) == pairs(plain)
    with pytest.raises(ValueError, match="vqa_checks"):
        SyntheticConfig(**SMALL, vqa_checks="all")


def test_splits_are_disjoint_cover_every_field_and_agree_across_tasks(corpus: SyntheticCorpus) -> None:
    by_split = {split: set(corpus.indices(split)) for split in ("train", "val", "test")}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    assert set().union(*by_split.values()) == set(range(len(corpus)))
    assert all(by_split.values())
    for task in (Task.DETECTION, Task.CLASSIFICATION, Task.VQA):
        for split, indices in by_split.items():
            assert {s.extra["field_index"] for s in corpus.samples(task, split)} <= indices
    with pytest.raises(ValueError, match="unknown split"):
        corpus.indices("training")


# ---------------------------------------------------------------------------------------------- write


def test_write_output_reads_back(tmp_path) -> None:
    from faster_coco_eval import COCO

    from unihema.data.manifest import iter_manifest

    cfg = SyntheticConfig(image_size=96, n_images=10, seed=3, rbc_radius=7.0)
    corpus = generate_corpus(cfg, tmp_path)
    summary = json.loads((tmp_path / "synthetic.json").read_text())
    assert summary["config"]["n_images"] == 10
    total_images = total_boxes = 0
    for split in ("train", "val", "test"):
        indices = corpus.indices(split)
        coco = COCO(str(tmp_path / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == len(indices) == summary["splits"][split]["n_images"]
        n_boxes = sum(len(corpus.field(i).cells) for i in indices)
        assert len(coco.getAnnIds()) == n_boxes
        for image_info in coco.loadImgs(coco.getImgIds()):
            index = image_info["id"] - 1
            fov = corpus.field(index)
            pixels = np.asarray(Image.open(tmp_path / split / image_info["file_name"]))
            np.testing.assert_array_equal(pixels, fov.image)
            mask = np.asarray(Image.open(tmp_path / "masks" / split / image_info["file_name"])) == 255
            np.testing.assert_array_equal(mask, fov.mask)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_info["id"]]))
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float32)
            np.testing.assert_allclose(xywh[:, :2] + xywh[:, 2:], fov.boxes[:, 2:])
            names = [coco.cats[a["category_id"]]["name"] for a in anns]
            assert names == [c.label for c in fov.cells]
        total_images += len(indices)
        total_boxes += n_boxes
    assert total_images == 10 and total_boxes > 0
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"

    read_back = list(iter_manifest(tmp_path / "manifest.jsonl"))
    expected = sum(len(corpus.samples(task)) for task in Task)
    assert len(read_back) == expected
    detection = [s for s in read_back if s.task == Task.DETECTION]
    assert sum(len(s.boxes) for s in detection) == total_boxes
    crop = next(s for s in read_back if s.task == Task.CLASSIFICATION)
    original = next(s for s in corpus.samples(Task.CLASSIFICATION) if s.sample_id == crop.sample_id)
    np.testing.assert_array_equal(np.asarray(crop.load_image()), np.asarray(original.load_image()))


# -------------------------------------------------------------------------------------- learnability


def test_white_cell_types_are_separable_by_simple_features() -> None:
    """Colour and size features alone must classify the five white-cell types far above chance."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features, labels = [], []
    for k, cell_type in enumerate(WBC_TYPES):
        for _ in range(40):
            patch = render_white_cell(rng, sample_white_cell(rng, cell_type))
            colour = patch.colour[patch.mask]
            nucleus = patch.colour[patch.nucleus] if patch.nucleus.any() else colour
            features.append(
                np.concatenate(
                    [
                        colour.mean(0),
                        colour.std(0),
                        nucleus.mean(0),
                        [patch.mask.sum() ** 0.5, patch.nucleus.mean()],
                    ]
                )
            )
            labels.append(k)
    x, y = np.array(features), np.array(labels)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    train = np.arange(len(y)) % 2 == 0
    accuracy = LogisticRegression(max_iter=2000).fit(x[train], y[train]).score(x[~train], y[~train])
    assert accuracy > 0.85  # chance is 0.2


# ------------------------------------------------------------------------------------------------ speed


def test_hundred_fields_generate_quickly() -> None:
    cfg = SyntheticConfig(n_images=100, seed=1)
    start = time.perf_counter()
    corpus = generate_corpus(cfg)
    elapsed = time.perf_counter() - start
    assert len(corpus.samples(Task.DETECTION)) == 100
    # Not a benchmark (see benchmarks/bench_synthetic.py): only catches an order-of-magnitude regression.
    assert elapsed < 30.0, f"100 fields of 256x256 took {elapsed:.1f} s"


def test_written_corpus_is_read_by_the_coco_reader(tmp_path) -> None:
    from unihema.data.formats.base import detect_format, get_reader

    corpus = generate_corpus(SyntheticConfig(image_size=96, n_images=8, seed=4, rbc_radius=7.0), tmp_path)
    assert detect_format(tmp_path) == "coco"
    result = get_reader("coco").read(tmp_path, dataset="synthetic")
    assert not result.skipped
    assert len(result.samples) == len(corpus)
    by_id = {}
    for index, fov in corpus.fields():
        by_id[f"field_{index:05d}"] = (corpus.split_of(index), fov)
    for sample in result.samples:
        key = next(k for k in by_id if k in sample.sample_id)
        split, fov = by_id[key]
        assert sample.split == split
        assert sorted(map(tuple, sample.boxes.tolist())) == sorted(map(tuple, fov.boxes.tolist()))
        assert sorted(sample.box_labels.tolist()) == sorted(fov.labels.tolist())


def test_tight_crops_centre_their_cell_and_scale_with_it() -> None:
    # Wide fixed windows (crop_scale 1, crop_size 48 on 7 px red cells) hold several cells, and a red-cell
    # crop and a platelet crop then look alike; tight windows make the labelled cell fill the crop.
    corpus = SyntheticCorpus(
        SyntheticConfig(n_images=6, image_size=128, rbc_radius=7.0, crop_size=16, crop_scale=1.6)
    )
    samples = corpus.samples(Task.CLASSIFICATION, "train") + corpus.samples(Task.CLASSIFICATION, "test")
    assert samples
    for sample in samples:
        x0, y0, x1, y1 = sample.extra["crop"]
        fov = corpus.field(sample.extra["field_index"])
        cell = fov.cells[sample.extra["cell_index"]]
        bx0, by0, bx1, by1 = cell.box.tolist()
        side = x1 - x0
        assert side == y1 - y0
        assert x0 <= bx0 and y0 <= by0 and bx1 <= x1 and by1 <= y1, "the crop holds its whole cell"
        extent = max(bx1 - bx0, by1 - by0)
        assert side == min(max(16, int(np.ceil(extent * 1.6)) + 4), 128)
        inside_border = x0 > 0 and y0 > 0 and x1 < 128 and y1 < 128
        if inside_border:
            assert abs((x0 + x1) / 2 - (bx0 + bx1) / 2) <= 1.0
            assert abs((y0 + y1) / 2 - (by0 + by1) / 2) <= 1.0
    with pytest.raises(ValueError, match="crop_scale"):
        SyntheticConfig(crop_scale=0.5)
