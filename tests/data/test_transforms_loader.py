from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from support.paths import dataset_path
from unihema.data.loader import (
    SampleDataset,
    build_loader,
    build_multitask_loader,
    class_masks_from_read_results,
    collate,
    collate_by_task,
)
from unihema.data.sampler import MultiTaskBatchSampler
from unihema.data.schema import UNKNOWN, ArrayImage, ArrayMask, FileImage, ReadResult, Sample, Task
from unihema.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, build_transforms
from unihema.data.vocab import DETECTION_CLASSES, detection_index

NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
SQUARE = (10, 5, 20, 15)  # x0, y0, x1, y1 of the white square on the 60x40 test image


def _square_image(height: int = 40, width: int = 60, square=SQUARE) -> np.ndarray:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = square
    array[y0:y1, x0:x1] = 255
    return array


def _white_bbox(image: torch.Tensor) -> tuple[int, int, int, int]:
    """xyxy bounds of the bright pixels of a normalised (3, H, W) image."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    bright = ((image * std + mean).mean(0) > 0.5).nonzero()
    return (
        int(bright[:, 1].min()),
        int(bright[:, 0].min()),
        int(bright[:, 1].max()) + 1,
        int(bright[:, 0].max()) + 1,
    )


def _det_input(array: np.ndarray, boxes, labels, attributes=None) -> dict:
    h, w = array.shape[:2]
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    return {
        "image": tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1)),
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
        "labels": torch.as_tensor(labels, dtype=torch.int64),
        "attributes": torch.as_tensor(attributes if attributes is not None else np.full((n, 6), UNKNOWN)),
    }


# ---------------------------------------------------------------------------------------------- config


def test_transform_config_validation():
    with pytest.raises(ValueError, match="seg_size"):
        TransformConfig(seg_size=0)
    with pytest.raises(ValueError, match="det_max_size"):
        TransformConfig(det_max_size=600)
    with pytest.raises(ValueError, match="hflip_prob"):
        TransformConfig(hflip_prob=1.5)
    with pytest.raises(ValueError, match="hue"):
        TransformConfig(hue=0.7)
    with pytest.raises(ValueError, match="std"):
        TransformConfig(std=(0.2, 0.0, 0.2))
    config = TransformConfig()
    assert (config.seg_size, config.cls_size, config.text_size) == (512, 512, 256)
    assert config.input_size(Task.CELL_MORPHOLOGY) == 512 and config.input_size(Task.MLM) == 256
    assert config.input_size(Task.DETECTION) is None


# ---------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("hflip,vflip", [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_detection_boxes_and_points_follow_flips_and_resize_exactly(hflip, vflip):
    config = TransformConfig(det_train_sizes=(80,), det_eval_size=80, det_max_size=400, hflip_prob=hflip,
                             vflip_prob=vflip, **NO_COLOUR)  # fmt: skip
    data = _det_input(_square_image(), [SQUARE], [3])
    data["points"] = tv_tensors.KeyPoints([[14.0, 9.0]], canvas_size=(40, 60))  # a pixel inside the square
    out = build_transforms(Task.DETECTION, train=True, config=config)(data)
    assert out["image"].shape == (3, 80, 120) and out["image"].dtype == torch.float32
    box = out["boxes"].as_subclass(torch.Tensor)[0].tolist()
    assert box == pytest.approx(list(_white_bbox(out["image"])), abs=1.0)
    expected_x = (80.0, 100.0) if hflip else (20.0, 40.0)
    expected_y = (50.0, 70.0) if vflip else (10.0, 30.0)
    assert box == pytest.approx([min(expected_x), min(expected_y), max(expected_x), max(expected_y)])
    x, y = (int(round(v)) for v in out["points"][0].tolist())
    assert _within(box[0], x, box[2]) and _within(box[1], y, box[3])
    assert out["image"][:, y, x].mean() > 1.5  # white after normalisation


def _within(low: float, value: int, high: float) -> bool:
    return low <= value < high


def test_detection_scale_jitter_keeps_boxes_on_the_object():
    torch.manual_seed(0)
    config = TransformConfig(det_train_sizes=(40, 64, 100), det_eval_size=64, det_max_size=400)
    pipeline = build_transforms(Task.DETECTION, train=True, config=config)
    shorter_sides = set()
    for _ in range(30):
        out = pipeline(_det_input(_square_image(), [SQUARE], [1]))
        shorter_sides.add(min(out["image"].shape[-2:]))
        box = out["boxes"].as_subclass(torch.Tensor)[0].tolist()
        assert box == pytest.approx(list(_white_bbox(out["image"])), abs=1.5)
    assert shorter_sides == {40, 64, 100}


def test_detection_eval_resize_and_max_size():
    config = TransformConfig(det_train_sizes=(64,), det_eval_size=80, det_max_size=100, **NO_COLOUR)
    out = build_transforms(Task.DETECTION, train=False, config=config)(
        _det_input(_square_image(), [SQUARE], [1])
    )
    assert out["image"].shape[-2:] == (66, 100)  # 40x60 -> shorter side 80 would make the longer 120 > 100
    assert out["boxes"].as_subclass(torch.Tensor)[0].tolist() == pytest.approx(
        [10 * 100 / 60, 5 * 66 / 40, 20 * 100 / 60, 15 * 66 / 40]
    )


def test_detection_eval_max_size_equal_to_the_shorter_side():
    # Valid config (det_max_size >= det_eval_size); torchvision's Resize alone rejects the equal cap.
    config = TransformConfig(det_train_sizes=(64,), det_eval_size=64, det_max_size=64, **NO_COLOUR)
    for train in (False, True):
        out = build_transforms(Task.DETECTION, train=train, config=config)(
            _det_input(_square_image(), [SQUARE], [1])
        )
        assert out["image"].shape[-2:] == (42, 64)  # the longer side 60 -> 64, the shorter 40 -> 42


def test_degenerate_boxes_are_removed_with_their_labels_and_attributes():
    config = TransformConfig(det_train_sizes=(40,), det_eval_size=40, det_max_size=400, min_box_size=2.0)
    attributes = np.array([[0, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0]])
    boxes = [
        SQUARE,
        (30, 30, 30, 35),
        (40, 10, 41, 30),
        (50, 20, 70, 50),
    ]  # ok, zero width, 1 px wide, half out
    out = build_transforms(Task.DETECTION, train=False, config=config)(
        _det_input(_square_image(), boxes, [5, 6, 7, 8], attributes)
    )
    assert out["labels"].tolist() == [5, 8]
    assert out["attributes"].tolist() == [attributes[0].tolist(), attributes[3].tolist()]
    assert out["boxes"].as_subclass(torch.Tensor)[1].tolist() == [50, 20, 60, 40]  # clamped to the image


# ---------------------------------------------------------------------------------------------- fixed-size tasks


@pytest.mark.parametrize("hflip,vflip", [(0.0, 0.0), (1.0, 1.0)])
def test_segmentation_mask_follows_image_with_nearest(hflip, vflip):
    config = TransformConfig(seg_size=30, hflip_prob=hflip, vflip_prob=vflip)
    array = _square_image()
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[5:15, 10:20] = 1
    out = build_transforms(Task.SEGMENTATION, train=True, config=config)(
        {
            "image": tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1)),
            "mask": tv_tensors.Mask(torch.from_numpy(mask)),
        }
    )
    assert out["image"].shape == (3, 30, 30) and out["mask"].shape == (30, 30)
    assert set(out["mask"].unique().tolist()) == {0, 1}  # nearest: no interpolated values
    ys, xs = out["mask"].nonzero(as_tuple=True)
    mask_box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    assert mask_box == pytest.approx(_white_bbox(out["image"]), abs=1)
    assert (mask_box[0] > 15) == bool(hflip) and (mask_box[1] > 15) == bool(vflip)


@pytest.mark.parametrize(
    "task,size", [(Task.CLASSIFICATION, 24), (Task.CELL_MORPHOLOGY, 24), (Task.VQA, 16), (Task.MLM, 16)]
)
def test_fixed_size_tasks_and_imagenet_normalisation(task, size):
    config = TransformConfig(cls_size=24, text_size=16)
    white = tv_tensors.Image(torch.full((3, 40, 60), 255, dtype=torch.uint8))
    out = build_transforms(task, train=False, config=config)({"image": white})
    assert out["image"].shape == (3, size, size)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert out["image"].mean(dim=(1, 2)).tolist() == pytest.approx(expected, abs=1e-5)
    jittered = build_transforms(task, train=True, config=config)({"image": white})
    assert jittered["image"].shape == (3, size, size)


# ---------------------------------------------------------------------------------------------- dataset + collate

SMALL = TransformConfig(det_train_sizes=(40,), det_eval_size=40, det_max_size=400, seg_size=20, cls_size=16,
                        text_size=12, **NO_COLOUR)  # fmt: skip


def _det_sample(sample_id: str, height: int, width: int, dataset: str = "bccd") -> Sample:
    attrs = np.full((1, 6), UNKNOWN)
    attrs[0, 2] = 1
    return Sample(image=ArrayImage(_square_image(height, width)), task=Task.DETECTION, dataset=dataset,
                  sample_id=sample_id, prompt="detect cells", boxes=[SQUARE], box_labels=[detection_index("wbc")],
                  box_attributes=attrs)  # fmt: skip


def _eval_pipelines() -> dict[Task, object]:
    return {t: build_transforms(t, train=False, config=SMALL) for t in Task}


def test_collate_detection_batch_contract():
    masks = {"bccd": [detection_index(n) for n in ("rbc", "wbc", "platelet")]}
    dataset = SampleDataset(
        [_det_sample("a", 40, 60), _det_sample("b", 40, 40)], _eval_pipelines(), class_masks=masks
    )
    batch = collate([dataset[0], dataset[1]])
    assert batch["task"] is Task.DETECTION
    assert batch["images"].shape == (2, 3, 40, 60) and batch["images"].dtype == torch.float32
    assert batch["image_mask"].dtype == torch.bool
    assert not batch["image_mask"][0].any()
    assert batch["image_mask"][1, :, 40:].all() and not batch["image_mask"][1, :, :40].any()
    assert (batch["images"][1, :, :, 40:] == 0).all()
    assert batch["prompts"] == ["detect cells", "detect cells"]
    assert [s.sample_id for s in batch["samples"]] == ["a", "b"]
    target0, target1 = batch["targets"]
    # cxcywh normalised by the unpadded size of each image
    assert target0["boxes"].shape == (1, 4) and target0["boxes"].dtype == torch.float32
    assert target0["boxes"][0].tolist() == pytest.approx([15 / 60, 10 / 40, 10 / 60, 10 / 40])
    assert target1["boxes"][0].tolist() == pytest.approx([15 / 40, 10 / 40, 10 / 40, 10 / 40])
    assert target0["labels"].dtype == torch.int64 and target0["labels"].tolist() == [detection_index("wbc")]
    assert target0["attributes"].tolist() == [[-1, -1, 1, -1, -1, -1]]
    assert (
        target0["class_mask"].shape == (len(DETECTION_CLASSES),) and target0["class_mask"].dtype == torch.bool
    )
    assert target0["class_mask"].nonzero().flatten().tolist() == sorted(masks["bccd"])
    assert target1["size"].tolist() == [40, 40] and target0["size"].tolist() == [40, 60]

    padded = collate([dataset[0], dataset[1]], pad_to_multiple=32)
    assert padded["images"].shape[-2:] == (64, 64) and padded["image_mask"][0, 40:, :].all()

    with pytest.raises(KeyError, match="'other' has no entry in class_masks"):
        SampleDataset([_det_sample("c", 40, 40, dataset="other")], _eval_pipelines(), class_masks=masks)[0]
    with pytest.raises(ValueError, match="outside DETECTION_CLASSES"):
        SampleDataset([], class_masks={"bad": [len(DETECTION_CLASSES)]})


def test_class_masks_from_read_results():
    results = [
        ReadResult(dataset="bccd", format="voc", annotated_classes=("RBC", "WBC", "Platelets")),
        ReadResult(dataset="pbc", format="folders", annotated_classes=("immature granulocyte",)),
    ]
    masks = class_masks_from_read_results(results)
    assert masks["bccd"] == tuple(sorted(detection_index(n) for n in ("rbc", "wbc", "platelet")))
    assert masks["pbc"] == ()


def _other_task_samples() -> list[Sample]:
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:15, 10:20] = True
    image = ArrayImage(_square_image())
    return [
        Sample(image=image, task=Task.SEGMENTATION, dataset="seg", sample_id="s", mask=ArrayMask(mask), prompt="wbc"),
        Sample(image=image, task=Task.CLASSIFICATION, dataset="pbc", sample_id="c", cell_class=7),
        Sample(image=image, task=Task.CELL_MORPHOLOGY, dataset="wbcatt", sample_id="m",
               cell_attributes=[0, 1, 2, 0, 1, 0, 1, 2, 3, 3, UNKNOWN]),
        Sample(image=image, task=Task.CELL_MORPHOLOGY, dataset="wbcatt", sample_id="m2"),
        Sample(image=image, task=Task.VQA, dataset="vqa", sample_id="q", prompt="Which cell?", text_target="a wbc"),
    ]  # fmt: skip


def test_targets_of_the_other_tasks():
    dataset = SampleDataset(_other_task_samples(), _eval_pipelines())
    seg = collate([dataset[0]])
    assert seg["images"].shape == (1, 3, 20, 20)
    mask = seg["targets"][0]["mask"]
    assert (
        mask.shape == (20, 20) and mask.dtype == torch.float32 and set(mask.unique().tolist()) == {0.0, 1.0}
    )
    assert seg["prompts"] == ["wbc"]
    assert collate([dataset[1]])["targets"][0]["cell_class"].tolist() == 7
    morph = collate([dataset[2], dataset[3]])["targets"]
    assert morph[0]["cell_attributes"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 3, -1]
    assert morph[1]["cell_attributes"].tolist() == [-1] * 11
    vqa = collate([dataset[4]])
    assert vqa["images"].shape == (1, 3, 12, 12) and vqa["targets"][0]["text"] == "a wbc"

    with pytest.raises(ValueError, match="one task"):
        collate([dataset[0], dataset[1]])
    grouped = collate_by_task([dataset[1], dataset[0], dataset[2]])
    assert list(grouped) == [Task.CLASSIFICATION, Task.SEGMENTATION, Task.CELL_MORPHOLOGY]
    no_label = Sample(
        image=ArrayImage(_square_image()), task=Task.CLASSIFICATION, dataset="pbc", sample_id="x"
    )
    with pytest.raises(ValueError, match="pbc/x: classification sample without cell_class"):
        SampleDataset([no_label], _eval_pipelines())[0]


# ---------------------------------------------------------------------------------------------- loaders


def test_build_loader_with_workers():
    samples = [_det_sample(f"s{i}", 40, 40 + 4 * i) for i in range(5)]
    loader = build_loader(samples, Task.DETECTION, batch_size=2, train=True, num_workers=2,
                          transform_config=SMALL, seed=3)  # fmt: skip
    batches = list(loader)
    assert len(batches) == 2  # drop_last in training
    ids = [s.sample_id for b in batches for s in b["samples"]]
    assert len(set(ids)) == 4
    for batch in batches:
        assert batch["images"].shape[0] == 2 and batch["task"] is Task.DETECTION
        widths = [int(t["size"][1]) for t in batch["targets"]]
        assert batch["images"].shape[-1] == max(widths)
    assert [s.sample_id for b in build_loader(samples, Task.DETECTION, 2, False, 0, transform_config=SMALL)
            for s in b["samples"]] == [f"s{i}" for i in range(5)]  # fmt: skip
    with pytest.raises(ValueError, match="has task 'vqa'"):
        build_loader(samples + _other_task_samples()[4:], Task.DETECTION, 2, True)


def test_multitask_loader_joint_and_round_robin():
    by_task = {
        Task.DETECTION: [_det_sample(f"d{i}", 40, 40) for i in range(4)],
        Task.CLASSIFICATION: [
            Sample(image=ArrayImage(_square_image()), task=Task.CLASSIFICATION, dataset="pbc", sample_id=f"c{i}",
                   cell_class=i)
            for i in range(6)
        ],
    }  # fmt: skip
    joint = build_multitask_loader(by_task, 2, train=True, mode="joint", transform_config=SMALL)
    assert isinstance(joint.batch_sampler, MultiTaskBatchSampler)
    groups = list(joint)
    assert len(groups) == 2
    for group in groups:
        assert set(group) == {Task.DETECTION, Task.CLASSIFICATION}
        assert group[Task.DETECTION]["images"].shape == (2, 3, 40, 40)
        assert group[Task.CLASSIFICATION]["images"].shape == (2, 3, 16, 16)
    rr = list(build_multitask_loader(by_task, {Task.DETECTION: 2, Task.CLASSIFICATION: 3}, train=False,
                                     transform_config=SMALL))  # fmt: skip
    assert [b["task"] for b in rr] == [Task.DETECTION, Task.CLASSIFICATION] * 2
    assert [len(b["samples"]) for b in rr] == [2, 3, 2, 3]


def test_unaugmented_tasks_see_the_same_crop_each_draw_while_the_others_are_augmented():
    def crops(task: Task) -> list[Sample]:
        # An asymmetric random crop, so that any flip or colour jitter changes its tensor.
        pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        return [Sample(image=ArrayImage(pixels), task=task, dataset="pbc", sample_id="c", cell_class=1)]

    augmented = TransformConfig(cls_size=16, hflip_prob=1.0, brightness=0.5)
    by_task = {
        Task.CLASSIFICATION: crops(Task.CLASSIFICATION),
        Task.CELL_MORPHOLOGY: crops(Task.CELL_MORPHOLOGY),
    }
    draws = {task: [] for task in by_task}
    for seed in range(3):
        loader = build_multitask_loader(by_task, 1, train=True, mode="joint", seed=seed,
                                        transform_config=augmented, unaugmented_tasks=["classification"])  # fmt: skip
        [group] = list(loader)
        for task, batch in group.items():
            draws[task].append(batch["images"][0])
    plain = build_transforms(Task.CLASSIFICATION, train=False, config=augmented)
    expected = plain(
        tv_tensors.Image(torch.from_numpy(by_task[Task.CLASSIFICATION][0].image.array).permute(2, 0, 1))
    )
    for image in draws[Task.CLASSIFICATION]:  # resized and normalised as in evaluation, never flipped
        torch.testing.assert_close(image, expected)
    assert not torch.allclose(draws[Task.CELL_MORPHOLOGY][0], expected)  # flipped every time


@pytest.mark.realdata
def test_real_pbc_cells_through_a_worker_loader():
    root = dataset_path("pbc") / "PBC_dataset_normal_DIB"
    files = [sorted((root / name).glob("*.jpg"))[0] for name in ("basophil", "eosinophil", "platelet")]
    samples = [
        Sample(image=FileImage(p), task=Task.CLASSIFICATION, dataset="pbc", sample_id=p.name, cell_class=i,
               source_path=p)
        for i, p in enumerate(files)
    ]  # fmt: skip
    config = TransformConfig(cls_size=64)
    batches = list(
        build_loader(samples, Task.CLASSIFICATION, 3, train=True, num_workers=1, transform_config=config)
    )
    assert len(batches) == 1
    batch = batches[0]
    assert batch["images"].shape == (3, 3, 64, 64) and not batch["image_mask"].any()
    assert sorted(int(t["cell_class"]) for t in batch["targets"]) == [0, 1, 2]
    assert torch.isfinite(batch["images"]).all() and batch["images"].std() > 0.1
