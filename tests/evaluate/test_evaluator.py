import numpy as np
import pytest
import torch
from torch import nn

from unihema.data.schema import ArrayImage, ArrayMask, Sample, Task
from unihema.data.transforms import TransformConfig
from unihema.data.vocab import CELL_ATTRIBUTES
from unihema.evaluate import metrics
from unihema.evaluate.evaluator import (
    EvalConfig,
    decode_attributes,
    decode_detections,
    evaluate,
    evaluate_task,
)

SMALL = EvalConfig(
    batch_size=2, transforms=TransformConfig(seg_size=32, cls_size=32, text_size=32), pad_to_multiple=1
)


class ConstantModel(nn.Module):
    """Answers every segmentation pixel as foreground, every cell as class 3, every question with its prompt."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, images, task, prompts=None, targets=None, image_mask=None):
        batch = images.shape[0]
        if Task(task) is Task.SEGMENTATION:
            return {"pred_masks": torch.full((batch, 1, *images.shape[-2:]), 10.0)}
        logits = torch.zeros(batch, 50)
        logits[:, 3] = 1
        return {"pred_cell_logits": logits, "pred_cell_attributes": torch.zeros(batch, 31)}

    def generate_text(self, images, prompts, image_mask=None, num_beams=1, max_new_tokens=32):
        return [p.removeprefix("Q: ") for p in prompts]


def _image():
    return ArrayImage(np.full((32, 32, 3), 128, np.uint8))


def test_decode_detections_top_pairs_in_pixels():
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 2, 1] = 5.0
    logits[0, 0, 3] = 2.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.25, 0.5, 0.5, 1.0]]])
    found = decode_detections(
        {"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100.0, 200.0]]), 2
    )[0]
    assert found["labels"].tolist() == [1, 3] and found["queries"].tolist() == [2, 0]
    assert torch.allclose(found["boxes"][0], torch.tensor([0.0, 0.0, 100.0, 100.0]))


def test_decode_attributes_argmax_per_group():
    flat = torch.zeros(1, 31)
    flat[0, 1] = 1  # cell_size -> small
    flat[0, 4 + 4] = 1  # nucleus_shape -> segmented-multilobed
    decoded = decode_attributes(flat, CELL_ATTRIBUTES)[0]
    assert decoded[0] == 1 and decoded[2] == 4 and decoded.shape == (11,)


def test_segmentation_dice_matches_hand_computation():
    masks = [np.zeros((32, 32), bool) for _ in range(3)]
    masks[0][:8] = True
    masks[1][:, :16] = True
    samples = [
        Sample(_image(), Task.SEGMENTATION, "t", f"s{i}", mask=ArrayMask(m)) for i, m in enumerate(masks)
    ]
    result = evaluate_task(ConstantModel(), samples, Task.SEGMENTATION, SMALL)
    expected = np.mean([metrics.dice_scores([np.ones_like(m)], [m])[0] for m in masks])
    assert result.metric == "Dice" and result.value == pytest.approx(expected)


class FixedSizeMaskModel(nn.Module):
    """Predicts a 64 x 64 mask (like a fixed ``qgmf_mask_size``) whose left half is foreground."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, images, task, prompts=None, targets=None, image_mask=None):
        logits = torch.full((images.shape[0], 1, 64, 64), -10.0)
        logits[..., :32] = 10.0
        return {"pred_masks": logits}


def test_segmentation_resizes_fixed_size_masks_to_the_input():
    # The 32 px inputs are covered by the whole 64 px prediction, not by its top-left 32 px corner.
    mask = np.zeros((32, 32), bool)
    mask[:, :16] = True
    samples = [Sample(_image(), Task.SEGMENTATION, "t", "s0", mask=ArrayMask(mask))]
    result = evaluate_task(FixedSizeMaskModel(), samples, Task.SEGMENTATION, SMALL)
    assert result.value == pytest.approx(1.0)


def test_classification_and_text_metrics():
    samples = [
        Sample(_image(), Task.CLASSIFICATION, "t", f"c{i}", cell_class=c) for i, c in enumerate([3, 3, 5, 7])
    ]
    text = [
        Sample(
            _image(),
            Task.VQA,
            "t",
            "q0",
            prompt="Q: the nucleus is round",
            text_target="the nucleus is round",
        ),
        Sample(_image(), Task.VQA, "t", "q1", prompt="Q: big", text_target="small"),
    ]
    results = evaluate(ConstantModel(), {Task.CLASSIFICATION: samples, Task.VQA: text}, SMALL)
    assert results[Task.CLASSIFICATION].details["accuracy"] == pytest.approx(0.5)
    assert results[Task.VQA].details["exact_match"] == pytest.approx(0.5)
    assert results[Task.VQA].value == pytest.approx(
        metrics.bleu4(["the nucleus is round", "big"], ["the nucleus is round", "small"])
    )
    with pytest.raises(ValueError, match="no samples"):
        evaluate_task(ConstantModel(), [], Task.CLASSIFICATION)


def test_eval_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(ValueError, match="mask_threshold"):
        EvalConfig(mask_threshold=2.0)


class OneQueryTwoClassesModel(nn.Module):
    """Query 0 covers the left cell and scores high for two classes; query 1 is elsewhere and unsure."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, images, task, prompts=None, targets=None, image_mask=None):
        batch = images.shape[0]
        logits = torch.full((batch, 2, 47), -10.0)
        logits[:, 0, 3] = 5.0
        logits[:, 0, 4] = 4.0
        boxes = torch.tensor([[0.25, 0.5, 0.5, 1.0], [0.9, 0.9, 0.05, 0.05]]).expand(batch, 2, 4)
        return {"pred_logits": logits, "pred_boxes": boxes, "pred_box_attributes": torch.zeros(batch, 2, 12)}


def test_fov_morphology_scores_one_box_per_query():
    boxes = np.array([[0, 0, 16, 32], [0, 1, 16, 32]], dtype=np.float32)  # two overlapping cells
    sample = Sample(
        _image(),
        Task.FOV_MORPHOLOGY,
        "t",
        "f0",
        boxes=boxes,
        box_labels=[3, 4],
        box_attributes=np.zeros((2, 6), int),
    )
    config = EvalConfig(
        batch_size=1,
        transforms=TransformConfig(det_train_sizes=(32,), det_eval_size=32, det_max_size=64),
        pad_to_multiple=1,
    )
    result = evaluate_task(OneQueryTwoClassesModel(), [sample], Task.FOV_MORPHOLOGY, config)
    assert result.details["cells_with_attributes"] == 2
    assert result.details["cells_matched"] == 1
    assert result.value == pytest.approx(0.5)
