"""Hungarian matching between detection queries and ground-truth boxes (DETR / DINO style).

The matching cost of query ``q`` and ground-truth box ``t`` is

``cost_class * focal_cost(q, label_t) + cost_bbox * |box_q - box_t|_1 + cost_giou * (-GIoU(box_q, box_t))``

where ``focal_cost`` is the difference between the sigmoid focal loss of predicting ``label_t`` as positive
and as negative (the cost used by Deformable-DETR and DINO), boxes are normalised ``cxcywh`` and the GIoU is
computed on ``xyxy``. Each image is matched on its own with :func:`scipy.optimize.linear_sum_assignment`.

:meth:`HungarianMatcher.one_to_many` assigns each target its ``k`` cheapest queries instead (H-DETR's
one-to-many supervision, used on the dense encoder proposals): more positives per step for the same
forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

from unihema.validation import is_int, require

# Finite stand-in for NaN/inf entries of a cost matrix (scipy rejects non-finite costs). Large enough
# that such a pair is only chosen when no finite assignment exists.
_NONFINITE_COST = 1.0e8
# Keeps log() finite for probabilities that saturate at 0 or 1.
_LOG_EPS = 1.0e-8


@dataclass(frozen=True)
class MatcherConfig:
    """Weights of the matching cost.

    Attributes:
        cost_class: weight of the focal classification cost (upstream 2.0).
        cost_bbox: weight of the L1 distance between normalised cxcywh boxes (upstream 5.0).
        cost_giou: weight of the negative generalised IoU (upstream 2.0).
        focal_alpha: alpha of the focal classification cost (0.25).
        focal_gamma: gamma of the focal classification cost (2.0).
    """

    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        for name in ("cost_class", "cost_bbox", "cost_giou", "focal_gamma"):
            require(getattr(self, name) >= 0, f"MatcherConfig.{name}", "must be >= 0", getattr(self, name))
        require(
            any((self.cost_class, self.cost_bbox, self.cost_giou)), "MatcherConfig.cost_*",
            "must not all be 0 (the matching would be arbitrary)",
        )  # fmt: skip
        require(
            0.0 <= self.focal_alpha <= 1.0, "MatcherConfig.focal_alpha", "must be in [0, 1]", self.focal_alpha
        )


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Focal classification cost ``(Q, N)`` of each query (``logits`` ``(Q, C)``) for each label ``(N,)``."""
    prob = logits.float().sigmoid()
    neg_cost = (1 - alpha) * prob.pow(gamma) * -(1 - prob + _LOG_EPS).log()
    pos_cost = alpha * (1 - prob).pow(gamma) * -(prob + _LOG_EPS).log()
    return pos_cost[:, labels] - neg_cost[:, labels]


def matching_cost(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    target_labels: torch.Tensor,
    target_boxes: torch.Tensor,
    config: MatcherConfig,
) -> torch.Tensor:
    """Full ``(Q, N)`` cost matrix for one image (float32, non-finite entries not yet replaced)."""
    boxes = boxes.float()
    target_boxes = target_boxes.float()
    cost = config.cost_class * focal_class_cost(logits, target_labels, config.focal_alpha, config.focal_gamma)
    cost = cost + config.cost_bbox * torch.cdist(boxes, target_boxes, p=1)
    giou = generalized_box_iou(
        box_convert(boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
    )
    return cost - config.cost_giou * giou


class HungarianMatcher:
    """One-to-one assignment of predictions to targets minimising :func:`matching_cost`.

    Call it with ``pred_logits`` ``(B, Q, C)``, ``pred_boxes`` ``(B, Q, 4)`` (sigmoid cxcywh) and one target
    dict per image holding ``labels`` ``(N,)`` and ``boxes`` ``(N, 4)`` (cxcywh, normalised). Returns, per
    image, ``(query_indices, target_indices)`` int64 CPU tensors of equal length ``min(Q, N)``, sorted by
    query index. Images without targets give two empty tensors.
    """

    def __init__(self, config: MatcherConfig | None = None) -> None:
        self.config = config or MatcherConfig()

    def __call__(
        self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self._match(pred_logits, pred_boxes, targets, k=None)

    def one_to_many(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
        k: int,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each target's ``k`` lowest-cost queries (a query wanted by several targets goes to its cheapest
        one), in the format of :meth:`__call__`."""
        require(is_int(k) and k >= 1, "HungarianMatcher.one_to_many k", "must be an int >= 1", k)
        return self._match(pred_logits, pred_boxes, targets, k=k)

    @torch.no_grad()
    def _match(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
        k: int | None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if (
            pred_logits.dim() != 3
            or pred_boxes.shape[:2] != pred_logits.shape[:2]
            or pred_boxes.shape[-1] != 4
        ):
            raise ValueError(
                f"matcher: expected pred_logits (B, Q, C) and pred_boxes (B, Q, 4), got "
                f"{tuple(pred_logits.shape)} and {tuple(pred_boxes.shape)}"
            )
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(
                f"matcher: {len(targets)} target dicts for a batch of {pred_logits.shape[0]} images"
            )
        num_classes = pred_logits.shape[-1]
        indices = []
        for image, target in enumerate(targets):
            labels = target["labels"]
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            bad = labels[(labels < 0) | (labels >= num_classes)]
            if bad.numel():
                raise ValueError(
                    f"matcher: image {image} has label {int(bad[0])} outside the {num_classes} predicted classes"
                )
            cost = matching_cost(pred_logits[image], pred_boxes[image], labels, target["boxes"], self.config)
            cost = torch.nan_to_num(
                cost, nan=_NONFINITE_COST, posinf=_NONFINITE_COST, neginf=-_NONFINITE_COST
            )
            if k is None:
                rows, cols = linear_sum_assignment(cost.cpu().numpy())
                rows = torch.as_tensor(rows, dtype=torch.int64)
                cols = torch.as_tensor(np.asarray(cols), dtype=torch.int64)
            else:
                rows, cols = _k_cheapest(cost.cpu(), k)
            indices.append((rows, cols))
        return indices


def _k_cheapest(cost: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(query_indices, target_indices)`` of each target's ``k`` cheapest queries of ``cost`` ``(Q, N)``."""
    num_queries = cost.shape[0]
    picked = cost.topk(min(k, num_queries), dim=0, largest=False).indices  # (k, N)
    wanted = torch.full_like(cost, float("inf"))
    wanted.scatter_(0, picked, cost.gather(0, picked))
    best_cost, best_target = wanted.min(dim=1)
    rows = torch.nonzero(torch.isfinite(best_cost)).flatten()
    return rows, best_target[rows]
