"""Losses on hand-made tensors: perfect predictions, UNKNOWN attributes, partial labels, DN, masks, text."""

from __future__ import annotations

import pytest
import torch

from unihema.data.schema import UNKNOWN, Task
from unihema.data.vocab import CELL_ATTRIBUTES, FOV_ATTRIBUTES
from unihema.model.outputs import (
    BoxOutput,
    CellOutput,
    DenoisingMeta,
    DenoisingOutput,
    DetectionOutput,
    SegmentationOutput,
    TextOutput,
)
from unihema.train.losses import LossConfig, UniHemaCriterion, attribute_slices

NUM_CLASSES = 5
NUM_FOV = sum(len(v) for _, v in FOV_ATTRIBUTES)
NUM_CELL_ATTR = sum(len(v) for _, v in CELL_ATTRIBUTES)
CONFIDENT = 12.0


def _target(boxes, labels, attributes=None, class_mask=None) -> dict:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(labels, dtype=torch.int64)
    if attributes is None:
        attributes = torch.full((len(labels), len(FOV_ATTRIBUTES)), UNKNOWN, dtype=torch.int64)
    mask = torch.ones(NUM_CLASSES, dtype=torch.bool) if class_mask is None else torch.tensor(class_mask)
    return {"boxes": boxes, "labels": labels, "attributes": torch.as_tensor(attributes), "class_mask": mask}


def _perfect_outputs(target: dict, queries: int = 4) -> DetectionOutput:
    """Queries 0..N-1 predict the targets exactly; the rest predict confident background."""
    n = len(target["labels"])
    logits = torch.full((1, queries, NUM_CLASSES), -CONFIDENT)
    logits[0, torch.arange(n), target["labels"]] = CONFIDENT
    boxes = torch.full((1, queries, 4), 0.1)
    boxes[0, :n] = target["boxes"]
    attrs = torch.zeros(1, queries, NUM_FOV)
    for a, cols in enumerate(attribute_slices(FOV_ATTRIBUTES)):
        for i in range(n):
            value = int(target["attributes"][i, a])
            if value != UNKNOWN:
                attrs[0, i, cols.start + value] = CONFIDENT
    return DetectionOutput(logits, boxes, attrs)


def test_detection_perfect_prediction_has_low_loss_and_wrong_one_high() -> None:
    target = _target(
        [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.1, 0.3]], [1, 3], [[0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0]]
    )
    criterion = UniHemaCriterion()
    perfect = criterion(_perfect_outputs(target), [target], Task.FOV_MORPHOLOGY)
    assert float(perfect["loss"]) < 1e-3
    wrong = _perfect_outputs(target)
    wrong.boxes[0, :2] = torch.tensor([[0.8, 0.2, 0.1, 0.1], [0.2, 0.8, 0.3, 0.1]])
    wrong.logits[0, :2] = -CONFIDENT
    wrong.attributes = -wrong.attributes
    losses = criterion(wrong, [target], Task.FOV_MORPHOLOGY)
    assert float(losses["loss"]) > 5.0
    for name in ("loss_class", "loss_bbox", "loss_giou", "loss_attributes"):
        assert float(losses[name]) > 0.1, name


def test_partial_labels_give_no_gradient_to_unannotated_classes() -> None:
    # The dataset annotates classes 0, 1, 2 only: classes 3 and 4 must be neither positive nor background.
    mask = [True, True, True, False, False]
    target = _target([[0.5, 0.5, 0.2, 0.2]], [1], class_mask=mask)
    logits = torch.randn(1, 6, NUM_CLASSES, requires_grad=True)
    enc_logits = torch.randn(1, 6, NUM_CLASSES, requires_grad=True)
    aux_logits = torch.randn(1, 6, NUM_CLASSES, requires_grad=True)
    boxes = torch.rand(1, 6, 4) * 0.5 + 0.25
    outputs = DetectionOutput(
        logits, boxes, aux=[BoxOutput(aux_logits, boxes)], encoder=BoxOutput(enc_logits, boxes)
    )
    UniHemaCriterion()(outputs, [target], Task.DETECTION)["loss"].backward()
    for tensor in (logits, aux_logits, enc_logits):
        assert torch.all(tensor.grad[..., 3:] == 0)
        assert torch.all(tensor.grad[..., :3].abs().sum(dim=1) > 0)


def test_label_outside_class_mask_is_rejected() -> None:
    target = _target([[0.5, 0.5, 0.2, 0.2]], [4], class_mask=[True, True, True, False, False])
    outputs = DetectionOutput(torch.zeros(1, 2, NUM_CLASSES), torch.full((1, 2, 4), 0.5))
    with pytest.raises(ValueError, match="outside the sample's class_mask"):
        UniHemaCriterion()(outputs, [target], Task.DETECTION)


@pytest.mark.parametrize("attribute_loss", ["ce", "asl"])
def test_unknown_attributes_are_ignored(attribute_loss: str) -> None:
    known = [0, UNKNOWN, 1, UNKNOWN, UNKNOWN, 0]
    target = _target([[0.5, 0.5, 0.2, 0.2]], [2], [known])
    outputs = _perfect_outputs(target, queries=3)
    outputs.attributes = torch.randn(1, 3, NUM_FOV, requires_grad=True)
    criterion = UniHemaCriterion(LossConfig(attribute_loss=attribute_loss, aux_loss=False))
    losses = criterion(outputs, [target], Task.FOV_MORPHOLOGY)
    losses["loss"].backward()
    grad = outputs.attributes.grad[0, 0]
    for a, cols in enumerate(attribute_slices(FOV_ATTRIBUTES)):
        if known[a] == UNKNOWN:
            assert torch.all(grad[cols] == 0), a
        else:
            assert torch.any(grad[cols] != 0), a
    # Unmatched queries carry no attribute supervision at all.
    assert torch.all(outputs.attributes.grad[0, 1:] == 0)
    assert float(losses["loss_attributes"].detach()) > 0


def test_image_without_targets_learns_background_only() -> None:
    target = _target(torch.zeros(0, 4).tolist(), [])
    logits = torch.zeros(1, 3, NUM_CLASSES, requires_grad=True)
    outputs = DetectionOutput(logits, torch.full((1, 3, 4), 0.5), torch.zeros(1, 3, NUM_FOV))
    losses = UniHemaCriterion()(outputs, [target], Task.DETECTION)
    assert float(losses["loss_bbox"]) == 0 and float(losses["loss_giou"]) == 0
    losses["loss"].backward()
    assert torch.all(logits.grad > 0)  # pushed towards background everywhere


def test_denoising_losses_use_known_assignment() -> None:
    target = _target([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]], [0, 2])
    groups, group_size = 2, 4  # each group: 2 positive then 2 negative queries
    dn_logits = torch.full((1, groups * group_size, NUM_CLASSES), -CONFIDENT)
    dn_boxes = torch.full((1, groups * group_size, 4), 0.5)
    for g in range(groups):
        for j in range(2):
            dn_logits[0, g * group_size + j, target["labels"][j]] = CONFIDENT
            dn_boxes[0, g * group_size + j] = target["boxes"][j]
    outputs = _perfect_outputs(target)
    dino_layout = DenoisingMeta(pad_size=8, num_groups=2)  # no explicit matches: the DINO layout
    outputs.denoising = DenoisingOutput(dn_logits, dn_boxes, meta=dino_layout)
    criterion = UniHemaCriterion(LossConfig(aux_loss=False))
    good = criterion(outputs, [target], Task.DETECTION)
    assert float(good["loss_bbox_dn"]) == 0 and float(good["loss_class_dn"]) < 1e-3
    # Swapping the two positives of group 1 must be penalised (no matching would have fixed it).
    swapped = dn_boxes.clone()
    swapped[0, [4, 5]] = dn_boxes[0, [5, 4]]
    outputs.denoising = DenoisingOutput(dn_logits, swapped, meta=dino_layout)
    bad = criterion(outputs, [target], Task.DETECTION)
    expected_l1 = 5.0 * (target["boxes"][0] - target["boxes"][1]).abs().sum() * 2 / (2 * groups)
    assert float(bad["loss_bbox_dn"]) == pytest.approx(float(expected_l1), rel=1e-5)
    outputs.denoising = DenoisingOutput(dn_logits, dn_boxes, meta=DenoisingMeta(pad_size=2, num_groups=2))
    with pytest.raises(ValueError, match="cannot hold"):
        criterion(outputs, [target], Task.DETECTION)


def test_segmentation_perfect_low_and_padding_ignored() -> None:
    mask = torch.zeros(6, 8)
    mask[1:4, 2:6] = 1
    logits = torch.where(mask.bool(), CONFIDENT, -CONFIDENT)
    padded = torch.full((1, 1, 10, 10), -CONFIDENT)
    padded[0, 0, :6, :8] = logits
    padded[0, 0, 6:, :] = CONFIDENT  # garbage in the padding must not matter
    padded.requires_grad_(True)
    losses = UniHemaCriterion()(
        SegmentationOutput(padded, padded), [{"mask": mask}], Task.SEGMENTATION, padded_size=(10, 10)
    )
    assert float(losses["loss"].detach()) < 1e-3
    losses["loss"].backward()
    assert torch.all(padded.grad[0, 0, 6:] == 0)
    inverted = UniHemaCriterion()(
        SegmentationOutput(-padded.detach(), padded),
        [{"mask": mask}],
        Task.SEGMENTATION,
        padded_size=(10, 10),
    )
    assert float(inverted["loss_mask_dice"]) > 1.5  # dice weight 2 x dice loss close to 1
    assert float(inverted["loss_mask_focal"]) > 0.5


def test_segmentation_lower_resolution_prediction_is_upsampled() -> None:
    mask = torch.zeros(16, 16)
    mask[:8] = 1
    low = torch.full((1, 1, 4, 4), -CONFIDENT)
    low[0, 0, :2] = CONFIDENT
    losses = UniHemaCriterion()(
        SegmentationOutput(low, low), [{"mask": mask}], Task.SEGMENTATION, padded_size=(16, 16)
    )
    assert float(losses["loss_mask_dice"]) < 0.15


def test_cell_class_and_attributes_ignore_unknown() -> None:
    logits = torch.full((2, 7), -5.0)
    logits[0, 3] = 5.0
    logits[1, 6] = 5.0
    attrs = torch.zeros(2, NUM_CELL_ATTR, requires_grad=True)
    targets = [
        {"cell_class": torch.tensor(3), "cell_attributes": torch.tensor([0] + [UNKNOWN] * 10)},
        {"cell_class": torch.tensor(6), "cell_attributes": torch.full((11,), UNKNOWN)},
    ]
    losses = UniHemaCriterion()(CellOutput(torch.zeros(2, 4), logits, attrs), targets, Task.CELL_MORPHOLOGY)
    assert float(losses["loss_cell_class"]) < 1e-3
    # Only attribute 0 of sample 0 is known: CE of 2 uniform logits = log 2.
    assert float(losses["loss_cell_attributes"].detach()) == pytest.approx(
        float(torch.log(torch.tensor(2.0))), rel=1e-5
    )
    losses["loss"].backward()
    assert torch.all(attrs.grad[1] == 0)
    assert torch.all(attrs.grad[0, 2:] == 0) and torch.all(attrs.grad[0, :2] != 0)


def test_text_loss_ignores_padding_positions() -> None:
    vocab = 6
    labels = torch.tensor([[2, 4, -100, -100], [1, -100, -100, -100]])
    logits = torch.full((2, 4, vocab), -8.0, requires_grad=False)
    for b in range(2):
        for t in range(4):
            logits[b, t, max(int(labels[b, t]), 0)] = 8.0
    logits[:, :, 5] = torch.where(labels == -100, 100.0, -8.0)  # wild logits on ignored positions
    memory = torch.zeros(2, 3, 4)
    outputs = TextOutput(memory, torch.ones(2, 3), logits=logits, labels=labels)
    losses = UniHemaCriterion()(outputs, [{}, {}], Task.VQA)
    assert float(losses["loss_text"]) < 1e-3
    with pytest.raises(ValueError, match="no logits/labels"):
        UniHemaCriterion()(TextOutput(memory, torch.ones(2, 3)), [{}], Task.MLM)


def test_output_of_the_wrong_task_is_rejected() -> None:
    masks = torch.zeros(1, 1, 4, 4)
    with pytest.raises(TypeError, match="detection batch needs a DetectionOutput, got SegmentationOutput"):
        UniHemaCriterion()(SegmentationOutput(masks, masks), [{}], Task.DETECTION)


def test_loss_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="LossConfig.bbox_weight"):
        LossConfig(bbox_weight=-1)
    with pytest.raises(ValueError, match="LossConfig.attribute_loss"):
        LossConfig(attribute_loss="bce")


def test_denoising_meta_of_the_model_supervises_positives_and_negatives_only() -> None:
    from torch import nn

    from unihema.model.denoising import build_denoising_queries

    targets = [
        _target([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]], [0, 2]),
        _target([[0.5, 0.5, 0.3, 0.3]], [1]),
    ]
    queries = build_denoising_queries(
        targets, nn.Embedding(NUM_CLASSES + 1, 8), num_queries=3, num_classes=NUM_CLASSES, dn_number=4,
        label_noise_ratio=0.0, box_noise_scale=0.0,
    )  # fmt: skip
    meta = queries.meta
    pad = meta.pad_size
    dn_logits = torch.zeros(2, pad, NUM_CLASSES, requires_grad=True)
    dn_boxes = torch.full((2, pad, 4), 0.5)
    outputs = DetectionOutput(
        torch.zeros(2, 3, NUM_CLASSES), torch.full((2, 3, 4), 0.5),
        denoising=DenoisingOutput(dn_logits, dn_boxes, meta=meta),
    )  # fmt: skip
    UniHemaCriterion(LossConfig(aux_loss=False))(outputs, targets, Task.DETECTION)["loss"].backward()
    per_query = dn_logits.grad.abs().sum(-1)
    max_targets = meta.max_targets
    for g in range(meta.num_groups):
        base = g * 2 * max_targets
        # Image 1 has one target: slot 1 of each half is unused padding and gets no gradient.
        assert per_query[1, base + 1] == 0 and per_query[1, base + max_targets + 1] == 0
        assert per_query[1, base] > 0 and per_query[1, base + max_targets] > 0
        assert torch.all(per_query[0, base : base + 2 * max_targets] > 0)


def test_varifocal_class_target_is_the_matched_iou() -> None:
    target = _target([[0.5, 0.5, 0.2, 0.2]], [2])
    criterion = UniHemaCriterion(LossConfig(class_loss="varifocal", aux_loss=False))
    exact = _perfect_outputs(target)
    # A confident score is right for an exact box and over-confident for a half-overlapping one.
    assert float(criterion(exact, [target], Task.DETECTION)["loss_class"]) < 1e-3
    shifted = _perfect_outputs(target)
    shifted.boxes[0, 0] = torch.tensor([0.6, 0.5, 0.2, 0.2])  # IoU 1/3 with its target
    focal = UniHemaCriterion(LossConfig(aux_loss=False))
    over_confident = float(criterion(shifted, [target], Task.DETECTION)["loss_class"])
    focal_over_confident = float(focal(shifted, [target], Task.DETECTION)["loss_class"])
    shifted.logits[0, 0, 2] = torch.logit(torch.tensor(1 / 3))
    calibrated = float(criterion(shifted, [target], Task.DETECTION)["loss_class"])
    assert calibrated < over_confident
    # The focal loss wants the confident score whatever the overlap.
    assert float(focal(shifted, [target], Task.DETECTION)["loss_class"]) > focal_over_confident


def test_varifocal_class_loss_gradient_moves_the_score_towards_the_iou() -> None:
    target = _target([[0.5, 0.5, 0.2, 0.2]], [2])
    outputs = _perfect_outputs(target)
    outputs.boxes[0, 0] = torch.tensor([0.6, 0.5, 0.2, 0.2])
    criterion = UniHemaCriterion(LossConfig(class_loss="varifocal", aux_loss=False))
    for start, direction in ((3.0, 1.0), (-3.0, -1.0)):  # p 0.95 must fall, p 0.05 must rise to 1/3
        logits = outputs.logits.detach().clone()
        logits[0, 0, 2] = start
        logits.requires_grad_(True)
        outputs.logits = logits
        criterion(outputs, [target], Task.DETECTION)["loss_class"].backward()
        assert float(logits.grad[0, 0, 2]) * direction > 0


def test_encoder_one_to_many_supervises_k_proposals_per_target() -> None:
    target = _target([[0.3, 0.3, 0.2, 0.2]], [1])
    decoder = _perfect_outputs(target)
    # Every encoder proposal sits on the target, but only query 0 says so.
    enc_boxes = target["boxes"].expand(1, 4, 4).clone()
    enc_logits = torch.full((1, 4, NUM_CLASSES), -CONFIDENT)
    enc_logits[0, 0, 1] = CONFIDENT
    decoder.encoder = BoxOutput(enc_logits, enc_boxes)
    one = UniHemaCriterion(LossConfig(aux_loss=False))(decoder, [target], Task.DETECTION)
    many = UniHemaCriterion(LossConfig(aux_loss=False, encoder_one_to_many=3))(
        decoder, [target], Task.DETECTION
    )
    # One-to-one: query 0 is the match and the others are right to say background.
    assert float(one["loss_class_enc"]) < 1e-3
    # One-to-many: queries 1 and 2 must also claim the cell, so their confident background is wrong.
    assert float(many["loss_class_enc"]) > 1.0
    assert float(many["loss_bbox_enc"]) < 1e-6 and float(many["loss_giou_enc"]) < 1e-6


def test_loss_options_are_validated() -> None:
    with pytest.raises(ValueError, match="LossConfig.class_loss"):
        LossConfig(class_loss="bce")
    with pytest.raises(ValueError, match="LossConfig.encoder_one_to_many"):
        LossConfig(encoder_one_to_many=0)
