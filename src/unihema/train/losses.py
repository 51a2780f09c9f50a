"""Training losses for every task, consuming the model's typed outputs (:mod:`unihema.model.outputs`) and
the per-sample target dicts.

:class:`UniHemaCriterion` picks the loss family from the batch's task (batches are task-homogeneous):

- detection / fov_morphology: Hungarian matching (:mod:`unihema.train.matcher`) on every decoder layer and
  on the encoder proposals, then sigmoid focal class loss restricted to the classes the sample's dataset
  annotates (``class_mask``: a class a dataset never labels is neither positive nor background there), L1
  and GIoU box losses, and the per-box attribute loss (CE per attribute group or the asymmetric loss, the
  UNKNOWN entries ignored). Denoising queries (``DetectionOutput.denoising``) get the same losses without
  matching: their targets are known by construction. Box losses are normalised by the number of target
  boxes, summed over ranks under DDP.
- segmentation: dice + sigmoid focal loss, per image at the unpadded input size, averaged over images.
- classification / cell_morphology: CE of the single-cell class and CE per WBCAtt attribute (UNKNOWN
  ignored), whichever targets the sample carries.
- vqa / mlm: token CE on ``TextOutput.logits``/``labels`` (-100 ignored), normalised by the number of
  supervised tokens.

The returned dict holds ``"loss"`` (the weighted total to back-propagate) and every weighted term under its
own name (``loss_class``, ``loss_bbox_aux0``, ``loss_giou_enc``, ``loss_class_dn`` ...) for logging.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou, sigmoid_focal_loss

from unihema.data.schema import UNKNOWN, Task
from unihema.data.vocab import CELL_ATTRIBUTES, FOV_ATTRIBUTES
from unihema.model import heads
from unihema.model.outputs import (
    BoxOutput,
    CellOutput,
    DenoisingMeta,
    DetectionOutput,
    ModelOutput,
    SegmentationOutput,
    TextOutput,
)
from unihema.train.distributed import per_rank_normaliser
from unihema.train.matcher import HungarianMatcher, MatcherConfig
from unihema.validation import is_int, is_number, require

TEXT_IGNORE_INDEX = -100
"""Label value of text positions that carry no loss (padding, prompt)."""

ATTRIBUTE_LOSSES = ("ce", "asl")
CLASS_LOSSES = ("focal", "varifocal")

# Every loss family the criterion can emit; trainers use it for fixed CSV columns.
LOSS_FAMILIES: tuple[str, ...] = (
    "loss_class", "loss_bbox", "loss_giou", "loss_attributes", "loss_mask_dice", "loss_mask_focal",
    "loss_cell_class", "loss_cell_attributes", "loss_text",
)  # fmt: skip


@dataclass
class LossConfig:
    """Loss weights and options (defaults: the authors' configuration, see the project notes).

    Attributes:
        cost_class: matching cost weight of the focal class cost.
        cost_bbox: matching cost weight of the L1 box distance.
        cost_giou: matching cost weight of the negative GIoU.
        focal_alpha: alpha of the sigmoid focal losses (class and mask) and of the class matching cost.
        focal_gamma: gamma of the sigmoid focal losses and of the class matching cost.
        class_weight: weight of the detection focal class loss.
        bbox_weight: weight of the L1 loss on normalised cxcywh boxes.
        giou_weight: weight of the GIoU loss.
        attribute_weight: weight of the per-box (FoV morphology) attribute loss.
        attribute_loss: ``"ce"`` (softmax cross-entropy per attribute group, matching the argmax decoding)
            or ``"asl"`` (the authors' sigmoid asymmetric loss on one-hot targets).
        asl_gamma_neg: ASL focusing exponent for negatives.
        asl_gamma_pos: ASL focusing exponent for positives.
        asl_clip: ASL probability margin for negatives.
        class_loss: ``"focal"`` (sigmoid focal loss on one-hot targets: DINO and the authors) or
            ``"varifocal"`` (IoU-aware: a matched query's target is the IoU of its box with its object, so
            the score ranks boxes by how well they fit, VarifocalNet / RT-DETR; negatives as in focal).
        aux_loss: also supervise every earlier decoder layer (``aux_outputs``) with the same weights.
        encoder_loss_weight: multiplier of the class/box losses on the encoder proposals (``enc_outputs``).
        encoder_one_to_many: how many encoder proposals each target box supervises (1: Hungarian one-to-one,
            as DINO; k > 1: its k cheapest proposals, H-DETR's one-to-many supervision, which gives the
            query selection k times the positives per step at no extra forward cost).
        dn_loss_weight: multiplier of the losses on the denoising queries (``dn_outputs``).
        mask_dice_weight: weight of the dice mask loss. The authors' code swaps the names of its two mask
            coefficients, so what it actually trains with is dice x2, focal x1; that is kept here under the
            right names.
        mask_focal_weight: weight of the sigmoid focal mask loss.
        cell_class_weight: weight of the single-cell classification CE.
        cell_attribute_weight: weight of the WBCAtt attribute CE (summed over attributes, each a mean over
            the samples where it is known).
        text_weight: weight of the token CE of VQA / MLM.
    """

    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    class_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    attribute_weight: float = 2.0
    attribute_loss: str = "ce"
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 1.0
    asl_clip: float = 0.08
    class_loss: str = "focal"
    aux_loss: bool = True
    encoder_loss_weight: float = 1.0
    encoder_one_to_many: int = 1
    dn_loss_weight: float = 1.0
    mask_dice_weight: float = 2.0
    mask_focal_weight: float = 1.0
    cell_class_weight: float = 1.0
    cell_attribute_weight: float = 1.0
    text_weight: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if is_number(value):
                require(value >= 0, f"LossConfig.{f.name}", "must be >= 0", value)
        require(
            self.attribute_loss in ATTRIBUTE_LOSSES, "LossConfig.attribute_loss",
            f"must be one of {ATTRIBUTE_LOSSES}", self.attribute_loss,
        )  # fmt: skip
        require(
            self.class_loss in CLASS_LOSSES, "LossConfig.class_loss",
            f"must be one of {CLASS_LOSSES}", self.class_loss,
        )  # fmt: skip
        require(
            is_int(self.encoder_one_to_many) and self.encoder_one_to_many >= 1,
            "LossConfig.encoder_one_to_many", "must be an int >= 1", self.encoder_one_to_many,
        )  # fmt: skip
        require(
            0.0 <= self.focal_alpha <= 1.0, "LossConfig.focal_alpha", "must be in [0, 1]", self.focal_alpha
        )
        require(0.0 <= self.asl_clip < 1.0, "LossConfig.asl_clip", "must be in [0, 1)", self.asl_clip)

    @property
    def matcher(self) -> MatcherConfig:
        return MatcherConfig(
            cost_class=self.cost_class, cost_bbox=self.cost_bbox, cost_giou=self.cost_giou,
            focal_alpha=self.focal_alpha, focal_gamma=self.focal_gamma,
        )  # fmt: skip


def attribute_slices(schema: tuple[tuple[str, tuple[str, ...]], ...]) -> list[slice]:
    """Column slice of each attribute group in a flat ``(..., sum(values))`` logit tensor, in schema order."""
    return list(heads.attribute_slices(schema).values())


def attribute_ce_sum(logits: torch.Tensor, targets: torch.Tensor, schema) -> torch.Tensor:
    """Summed CE over attribute groups of ``logits`` ``(M, sum(values))`` vs ``targets`` ``(M, A)``; UNKNOWN
    entries contribute nothing."""
    total = logits.new_zeros(())
    for a, cols in enumerate(attribute_slices(schema)):
        total = total + F.cross_entropy(logits[:, cols], targets[:, a], ignore_index=UNKNOWN, reduction="sum")
    return total


def asymmetric_loss_sum(
    logits: torch.Tensor, targets: torch.Tensor, schema, gamma_neg: float, gamma_pos: float, clip: float
) -> torch.Tensor:
    """Sigmoid asymmetric loss (Ridnik et al.) on one-hot attribute targets, UNKNOWN entries dropped, summed."""
    total = logits.new_zeros(())
    for a, cols in enumerate(attribute_slices(schema)):
        known = targets[:, a] != UNKNOWN
        if not bool(known.any()):
            continue
        group = logits[known][:, cols]
        onehot = F.one_hot(targets[known, a], num_classes=group.shape[-1]).to(group.dtype)
        prob = group.sigmoid()
        prob_neg = (prob - clip).clamp(min=0) if clip > 0 else prob
        eps = torch.finfo(group.dtype).eps
        pos = onehot * (1 - prob).pow(gamma_pos) * prob.clamp(min=eps).log()
        neg = (1 - onehot) * prob_neg.pow(gamma_neg) * (1 - prob_neg).clamp(min=eps).log()
        total = total - (pos + neg).sum()
    return total


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2|P.G| + s) / (|P| + |G| + s)`` of one image's probabilities and binary target."""
    numerator = 2 * (prob * target).sum() + smooth
    return 1 - numerator / (prob.sum() + target.sum() + smooth)


class UniHemaCriterion(nn.Module):
    """All task losses of UniHema; see the module docstring.

    Args:
        config: weights and options.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self.matcher = HungarianMatcher(self.config.matcher)

    def forward(
        self,
        outputs: ModelOutput,
        targets: Sequence[dict],
        task: Task | str,
        padded_size: tuple[int, int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weighted losses of one task-homogeneous batch.

        Args:
            outputs: the model's forward output for this batch (training mode).
            targets: one target dict per image (see ``docs/architecture.md``).
            task: the batch's task.
            padded_size: ``(H, W)`` of the padded input batch; segmentation uses it to map the masks
                back to each image's unpadded area (defaults to the largest target mask).

        Returns:
            ``{"loss": total, <term>: weighted term, ...}``.
        """
        task = Task(task)
        expected = _OUTPUT_TYPES[task]
        if not isinstance(outputs, expected):
            raise TypeError(f"a {task.value} batch needs a {expected.__name__}, got {type(outputs).__name__}")
        if task.has_boxes:
            losses = self._detection(outputs, targets)
        elif task is Task.SEGMENTATION:
            losses = self._segmentation(outputs, targets, padded_size)
        elif task in (Task.CLASSIFICATION, Task.CELL_MORPHOLOGY):
            losses = self._cell(outputs, targets, task)
        else:
            losses = self._text(outputs)
        total = torch.stack([value for value in losses.values()]).sum()
        return {"loss": total, **losses}

    # ---------------------------------------------------------------- detection
    def _detection(self, outputs: DetectionOutput, targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        cfg = self.config
        reference = outputs.logits
        device = reference.device
        targets = [_detection_target(t, reference.shape[-1], i) for i, t in enumerate(targets)]
        num_boxes = per_rank_normaliser(
            torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        )

        losses: dict[str, torch.Tensor] = {}
        decoder_layers = [("", outputs)]
        if cfg.aux_loss:
            decoder_layers += [(f"_aux{i}", aux) for i, aux in enumerate(outputs.aux)]
        for suffix, layer in decoder_layers:
            indices = self.matcher(layer.logits, layer.boxes, targets)
            terms = self._set_losses(layer, targets, indices, num_boxes, True)
            losses.update({f"{name}{suffix}": value for name, value in terms.items()})
        if outputs.encoder is not None and cfg.encoder_loss_weight > 0:
            encoder, k = outputs.encoder, cfg.encoder_one_to_many
            if k == 1:
                indices = self.matcher(encoder.logits, encoder.boxes, targets)
            else:
                indices = self.matcher.one_to_many(encoder.logits, encoder.boxes, targets, k)
            # Normalised by the positives one-to-many matching can give, so k does not scale the term.
            terms = self._set_losses(encoder, targets, indices, num_boxes * k, False)
            losses.update({f"{name}_enc": cfg.encoder_loss_weight * value for name, value in terms.items()})

        denoising = outputs.denoising
        if denoising is not None and denoising.meta is not None and cfg.dn_loss_weight > 0:
            indices, groups, supervised = _dn_indices(denoising.meta, targets, denoising.logits.shape[1])
            dn_layers: list[tuple[str, BoxOutput]] = [("_dn", denoising)]
            if cfg.aux_loss:
                dn_layers += [(f"_dn_aux{i}", aux) for i, aux in enumerate(denoising.aux)]
            for suffix, layer in dn_layers:
                terms = self._set_losses(layer, targets, indices, num_boxes * groups, True, supervised)
                losses.update(
                    {f"{name}{suffix}": cfg.dn_loss_weight * value for name, value in terms.items()}
                )
        return losses

    def _set_losses(
        self,
        layer: BoxOutput,
        targets: Sequence[dict],
        indices: Sequence[tuple[torch.Tensor, torch.Tensor]],
        num_boxes: torch.Tensor,
        with_attributes: bool,
        supervised: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Class, box and attribute losses of one decoder layer given the query/target assignment.

        ``supervised`` ``(B, Q)`` bool restricts the class loss to some queries (denoising: positives and
        negatives, not the unused padding slots); all queries by default.
        """
        cfg = self.config
        logits = layer.logits.float()
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([src for src, _ in indices]).to(device)

        # One-hot class targets on matched queries; every other query is background for the classes its
        # image's dataset annotates. Classes outside `class_mask` are ignored (zero weight, zero gradient).
        onehot = torch.zeros_like(logits)
        matched_labels = torch.cat(
            [t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)]
        )
        onehot[batch_idx, query_idx, matched_labels.to(device)] = 1.0
        class_mask = torch.stack([t["class_mask"] for t in targets]).to(device=device, dtype=logits.dtype)
        pred_boxes = layer.boxes.float()[batch_idx, query_idx]
        target_boxes = torch.cat(
            [t["boxes"][tgt.to(t["boxes"].device)] for t, (_, tgt) in zip(targets, indices)]
        )
        target_boxes = target_boxes.to(device=device, dtype=pred_boxes.dtype)
        if cfg.class_loss == "varifocal":
            iou = matched_iou(pred_boxes.detach(), target_boxes)
            class_terms = varifocal_loss(
                logits, onehot, iou, batch_idx, query_idx, cfg.focal_alpha, cfg.focal_gamma
            )
        else:
            class_terms = sigmoid_focal_loss(
                logits, onehot, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="none"
            )
        weight = class_mask[:, None, :]
        if supervised is not None:
            weight = weight * supervised.to(device=device, dtype=logits.dtype)[:, :, None]
        loss_class = (class_terms * weight).sum() / num_boxes
        loss_bbox = F.l1_loss(pred_boxes, target_boxes, reduction="sum") / num_boxes
        if len(pred_boxes):
            giou = torch.diag(
                generalized_box_iou(
                    box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
                )
            )
            loss_giou = (1 - giou).sum() / num_boxes
        else:
            loss_giou = pred_boxes.sum()
        terms = {
            "loss_class": cfg.class_weight * loss_class,
            "loss_bbox": cfg.bbox_weight * loss_bbox,
            "loss_giou": cfg.giou_weight * loss_giou,
        }
        attributes = layer.attributes
        if with_attributes and attributes is not None:
            matched = attributes.float()[batch_idx, query_idx]
            target_attrs = torch.cat(
                [t["attributes"][tgt.to(t["attributes"].device)] for t, (_, tgt) in zip(targets, indices)]
            )
            target_attrs = target_attrs.to(device)
            if cfg.attribute_loss == "ce":
                summed = attribute_ce_sum(matched, target_attrs, FOV_ATTRIBUTES)
            else:
                summed = asymmetric_loss_sum(
                    matched, target_attrs, FOV_ATTRIBUTES, cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip
                )
            terms["loss_attributes"] = cfg.attribute_weight * summed / num_boxes
        return terms

    # ---------------------------------------------------------------- segmentation
    def _segmentation(
        self, outputs: SegmentationOutput, targets: Sequence[dict], padded_size: tuple[int, int] | None
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        pred = outputs.masks
        if pred.dim() != 4 or pred.shape[1] != 1 or pred.shape[0] != len(targets):
            raise ValueError(
                f"SegmentationOutput.masks must be (B, 1, H, W) for {len(targets)} targets, got {tuple(pred.shape)}"
            )
        masks = []
        for i, target in enumerate(targets):
            if "mask" not in target:
                raise ValueError(f"segmentation target {i} has no 'mask'")
            masks.append(target["mask"])
        if padded_size is None:
            padded_size = (max(m.shape[-2] for m in masks), max(m.shape[-1] for m in masks))
        logits = pred.float()
        if tuple(logits.shape[-2:]) != tuple(padded_size):
            logits = F.interpolate(logits, size=tuple(padded_size), mode="bilinear", align_corners=False)
        dice_terms, focal_terms = [], []
        for i, mask in enumerate(masks):
            height, width = mask.shape[-2:]
            if height > padded_size[0] or width > padded_size[1]:
                raise ValueError(
                    f"segmentation target {i}: mask {tuple(mask.shape)} larger than the input {padded_size}"
                )
            image_logits = logits[i, 0, :height, :width]
            gt = mask.to(device=image_logits.device, dtype=image_logits.dtype)
            dice_terms.append(dice_loss(image_logits.sigmoid(), gt))
            focal_terms.append(
                sigmoid_focal_loss(
                    image_logits, gt, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="mean"
                )
            )
        return {
            "loss_mask_dice": cfg.mask_dice_weight * torch.stack(dice_terms).mean(),
            "loss_mask_focal": cfg.mask_focal_weight * torch.stack(focal_terms).mean(),
        }

    # ---------------------------------------------------------------- single cell
    def _cell(self, outputs: CellOutput, targets: Sequence[dict], task: Task) -> dict[str, torch.Tensor]:
        cfg = self.config
        losses: dict[str, torch.Tensor] = {}
        if any("cell_class" in t for t in targets):
            logits = outputs.class_logits.float()
            labels = torch.stack(
                [
                    torch.as_tensor(t.get("cell_class", UNKNOWN), dtype=torch.int64).reshape(())
                    for t in targets
                ]
            ).to(logits.device)
            count = per_rank_normaliser((labels != UNKNOWN).sum())
            summed = F.cross_entropy(logits, labels, ignore_index=UNKNOWN, reduction="sum")
            losses["loss_cell_class"] = cfg.cell_class_weight * summed / count
        if any("cell_attributes" in t for t in targets):
            logits = outputs.attribute_logits.float()
            attrs = torch.stack(
                [
                    torch.as_tensor(t["cell_attributes"], dtype=torch.int64)
                    if "cell_attributes" in t
                    else torch.full((len(CELL_ATTRIBUTES),), UNKNOWN, dtype=torch.int64)
                    for t in targets
                ]
            ).to(logits.device)
            counts = per_rank_normaliser((attrs != UNKNOWN).sum(0))
            total = logits.new_zeros(())
            for a, cols in enumerate(attribute_slices(CELL_ATTRIBUTES)):
                ce = F.cross_entropy(logits[:, cols], attrs[:, a], ignore_index=UNKNOWN, reduction="sum")
                total = total + ce / counts[a]
            losses["loss_cell_attributes"] = cfg.cell_attribute_weight * total
        if not losses:
            raise ValueError(f"{task.value} batch: no target carries cell_class or cell_attributes")
        return losses

    # ---------------------------------------------------------------- text
    def _text(self, outputs: TextOutput) -> dict[str, torch.Tensor]:
        if outputs.logits is None or outputs.labels is None:
            raise ValueError("text batch: the model output has no logits/labels (were targets passed?)")
        logits = outputs.logits.float()
        labels = outputs.labels.to(logits.device)
        if logits.shape[:2] != labels.shape:
            raise ValueError(
                f"TextOutput.logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree"
            )
        count = per_rank_normaliser((labels != TEXT_IGNORE_INDEX).sum())
        summed = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=TEXT_IGNORE_INDEX,
            reduction="sum",
        )
        return {"loss_text": self.config.text_weight * summed / count}


def matched_iou(pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """IoU ``(M,)`` of each matched pair of normalised cxcywh boxes (``(M, 4)`` each)."""
    if not len(pred_boxes):
        return pred_boxes.new_zeros(0)
    pairs = box_iou(box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"))
    return torch.diag(pairs)


def varifocal_loss(
    logits: torch.Tensor,
    onehot: torch.Tensor,
    iou: torch.Tensor,
    batch_idx: torch.Tensor,
    query_idx: torch.Tensor,
    alpha: float,
    gamma: float,
) -> torch.Tensor:
    """Element-wise varifocal loss ``(B, Q, C)``: the matched class of a matched query is trained towards
    its box's ``iou`` (weighted by that IoU), every other entry towards 0 with the focal weight
    ``alpha * p^gamma``."""
    target = onehot.clone()
    target[batch_idx, query_idx] *= iou[:, None].to(target.dtype)
    prob = logits.sigmoid().detach()
    weight = alpha * prob.pow(gamma) * (1 - onehot) + target
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")


def _detection_target(target: dict, num_classes: int, index: int) -> dict[str, torch.Tensor]:
    """Validated view of a detection target with ``class_mask`` defaulting to all classes."""
    for key in ("boxes", "labels"):
        if key not in target:
            raise ValueError(f"detection target {index} has no {key!r}")
    labels = target["labels"]
    class_mask = target.get("class_mask")
    if class_mask is None:
        class_mask = torch.ones(num_classes, dtype=torch.bool, device=labels.device)
    elif class_mask.shape != (num_classes,):
        raise ValueError(
            f"detection target {index}: class_mask has shape {tuple(class_mask.shape)}, the model predicts {num_classes} classes"
        )
    if len(labels) and not bool(class_mask[labels].all()):
        raise ValueError(f"detection target {index}: a box label is outside the sample's class_mask")
    attributes = target.get("attributes")
    if attributes is None:
        attributes = torch.full(
            (len(labels), len(FOV_ATTRIBUTES)), UNKNOWN, dtype=torch.int64, device=labels.device
        )
    return {"boxes": target["boxes"], "labels": labels, "class_mask": class_mask, "attributes": attributes}


def _dn_indices(
    meta: DenoisingMeta, targets: Sequence[dict], num_dn_queries: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int, torch.Tensor | None]:
    """Known query/target pairs of the denoising queries, the number of groups and the supervised queries.

    ``meta`` comes from :func:`unihema.model.denoising.build_denoising_queries`: ``positive_matches``
    (per image, DN query and target indices) and ``negative_indices`` (per image, DN queries that must
    predict no object). Without those lists the DINO layout is assumed from ``pad_size`` and ``num_groups``:
    positive ``g * group_size + j`` reconstructs target ``j``, the second half of each group is negative.
    Returns ``supervised`` ``(B, num_dn_queries)`` bool (positives and negatives), or ``None`` when every DN
    query is supervised.
    """
    groups, pad_size = int(meta.num_groups), int(meta.pad_size)
    if groups <= 0 or pad_size <= 0 or pad_size % groups or pad_size > num_dn_queries:
        raise ValueError(
            f"dn_meta (pad_size {pad_size}, groups {groups}) is inconsistent with {num_dn_queries} denoising queries"
        )
    if meta.positive_matches is not None:
        if len(targets) != len(meta.positive_matches):
            raise ValueError(
                f"dn_meta has matches for {len(meta.positive_matches)} images, the batch has {len(targets)}"
            )
        indices = [(src.cpu().long(), tgt.cpu().long()) for src, tgt in meta.positive_matches]
        for i, ((src, tgt), target) in enumerate(zip(indices, targets)):
            if len(src) != len(tgt) or (len(tgt) and int(tgt.max()) >= len(target["labels"])):
                raise ValueError(
                    f"dn_meta positive_matches of image {i} do not fit its {len(target['labels'])} targets"
                )
            if len(src) and int(src.max()) >= num_dn_queries:
                raise ValueError(
                    f"dn_meta positive_matches of image {i} point past the {num_dn_queries} DN queries"
                )
        supervised = None
        if meta.negative_indices is not None:
            supervised = torch.zeros(len(targets), num_dn_queries, dtype=torch.bool)
            for i, ((src, _), negatives) in enumerate(zip(indices, meta.negative_indices)):
                supervised[i, src] = True
                supervised[i, negatives.cpu().long()] = True
        return indices, groups, supervised
    group_size = pad_size // groups
    indices = []
    for target in targets:
        n = len(target["labels"])
        if 2 * n > group_size:
            raise ValueError(
                f"dn_meta group size {group_size} cannot hold {n} positive and {n} negative queries"
            )
        arange = torch.arange(n, dtype=torch.int64)
        src = (torch.arange(groups, dtype=torch.int64)[:, None] * group_size + arange[None, :]).reshape(-1)
        indices.append((src, arange.repeat(groups)))
    return indices, groups, None


_OUTPUT_TYPES: dict[Task, type] = {
    Task.DETECTION: DetectionOutput,
    Task.FOV_MORPHOLOGY: DetectionOutput,
    Task.SEGMENTATION: SegmentationOutput,
    Task.CLASSIFICATION: CellOutput,
    Task.CELL_MORPHOLOGY: CellOutput,
    Task.VQA: TextOutput,
    Task.MLM: TextOutput,
}
