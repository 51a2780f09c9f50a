"""Contrastive denoising (CDN) queries for DINO-style training.

Ground-truth boxes and labels are corrupted and fed to the decoder as extra queries that must
reconstruct them: *positive* copies (small box noise) regress to their box and class, *negative*
copies (larger box noise) must be classified as no-object. Queries are laid out in ``num_groups``
groups of ``2 * max_targets`` slots::

    group g: [g*2*N, g*2*N + N)  positives (slot j of the image encodes its target j, j < n_b)
             [g*2*N + N, (g+1)*2*N)  negatives (slot N + j encodes target j, j < n_b)

with N = ``max_targets`` (largest target count in the batch) and n_b the count of image b; slots
j >= n_b are unused padding. All DN queries precede the matching queries in the decoder.

The attention mask stops matching queries from seeing any DN query (they would otherwise read the
answers) and stops each DN group from seeing other groups; DN queries may read matching queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from unihema.model.outputs import DenoisingMeta

# Boxes are clamped into the image before the inverse sigmoid.
_EPS = 1e-5


def inverse_sigmoid(x: Tensor, eps: float = _EPS) -> Tensor:
    """Logit of ``x`` clamped to [eps, 1 - eps]."""
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


@dataclass
class DenoisingQueries:
    """Denoising queries of one batch.

    Attributes:
        content: (B, pad_size, d) label embeddings of the noised labels (zeros in unused slots).
        anchors: (B, pad_size, 4) inverse-sigmoid of the noised cxcywh boxes.
        attn_mask: (pad_size + num_queries, pad_size + num_queries) bool, True = may NOT attend.
        meta: the layout the loss needs (:class:`~unihema.model.outputs.DenoisingMeta`).
    """

    content: Tensor
    anchors: Tensor
    attn_mask: Tensor
    meta: DenoisingMeta


def _check_targets(targets: list[dict], num_classes: int) -> None:
    for i, target in enumerate(targets):
        if "labels" not in target or "boxes" not in target:
            raise ValueError(f"denoising targets[{i}] needs 'labels' and 'boxes', has {sorted(target)}")
        labels, boxes = target["labels"], target["boxes"]
        if labels.dim() != 1 or boxes.shape != (labels.shape[0], 4):
            raise ValueError(
                f"denoising targets[{i}]: labels {tuple(labels.shape)} and boxes {tuple(boxes.shape)} "
                "must be (N,) and (N, 4)"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"denoising targets[{i}]: labels must lie in [0, {num_classes}), got {labels.tolist()}"
            )


def build_denoising_queries(
    targets: list[dict],
    label_embedding: nn.Embedding,
    num_queries: int,
    num_classes: int,
    dn_number: int,
    label_noise_ratio: float,
    box_noise_scale: float,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """Build CDN queries from ``targets`` (per-image ``labels`` (N,) and cxcywh normalised ``boxes`` (N, 4)).

    Args:
        label_embedding: table of ``num_classes + 1`` rows giving the content of a DN query.
        num_queries: matching queries that follow the DN queries (for the attention mask).
        dn_number: budget of denoising pairs; ``num_groups = max(1, dn_number // max_targets)``.
        label_noise_ratio: a label is replaced by a uniformly random class with probability
            ``label_noise_ratio / 2``.
        box_noise_scale: corner noise in units of half the box size: positives move each corner by
            up to ``scale`` half-sizes, negatives by ``scale`` to ``2 * scale``.
        generator: optional RNG for reproducible noise.

    Returns:
        ``None`` when no image has a target, else :class:`DenoisingQueries` whose ``meta`` holds:

        * ``pad_size`` (int): number of DN queries (``2 * max_targets * num_groups``).
        * ``num_groups`` (int), ``max_targets`` (int): the layout above.
        * ``positive_matches``: per image, ``(query_index, target_index)`` long tensors of equal
          length ``num_groups * n_b`` (the same format as a Hungarian matcher's output; indices into
          the DN queries and into that image's targets).
        * ``negative_indices``: per image, long tensor of the negative DN query indices (to be
          supervised as no-object).
    """
    if dn_number <= 0:
        return None
    _check_targets(targets, num_classes)
    device = label_embedding.weight.device
    counts = [int(t["labels"].numel()) for t in targets]
    max_targets = max(counts, default=0)
    if max_targets == 0:
        return None
    num_groups = max(1, dn_number // max_targets)
    group_size = 2 * max_targets
    pad_size = group_size * num_groups
    batch = len(targets)

    # One row per (image, group, polarity, target), gathered in that order.
    labels = torch.cat([t["labels"].to(device) for t in targets])
    boxes = torch.cat([t["boxes"].to(device=device, dtype=torch.float32) for t in targets])
    image_of = torch.repeat_interleave(
        torch.arange(batch, device=device), torch.tensor(counts, device=device)
    )
    target_of = torch.cat([torch.arange(n, device=device) for n in counts])
    # (groups, 2, T): copies of every target per group and polarity (0 = positive, 1 = negative).
    total = labels.numel()
    rows_labels = labels[None, None].expand(num_groups, 2, total).clone()
    rows_boxes = boxes[None, None].expand(num_groups, 2, total, 4).clone()
    negative = torch.zeros(num_groups, 2, total, dtype=torch.bool, device=device)
    negative[:, 1] = True
    group_ids = torch.arange(num_groups, device=device)[:, None, None].expand_as(negative)
    slots = group_ids * group_size + negative.long() * max_targets + target_of[None, None]
    images = image_of[None, None].expand_as(negative)

    if label_noise_ratio > 0:
        flip = torch.rand(rows_labels.shape, device=device, generator=generator) < label_noise_ratio * 0.5
        random_labels = torch.randint(0, num_classes, rows_labels.shape, device=device, generator=generator)
        rows_labels = torch.where(flip, random_labels, rows_labels)
    if box_noise_scale > 0:
        corners = box_convert(rows_boxes, "cxcywh", "xyxy")
        half = rows_boxes[..., 2:].repeat(1, 1, 1, 2) * 0.5
        sign = torch.randint(0, 2, corners.shape, device=device, generator=generator).float() * 2 - 1
        magnitude = (
            torch.rand(corners.shape, device=device, generator=generator) + negative[..., None].float()
        )
        corners = (corners + sign * magnitude * half * box_noise_scale).clamp(0.0, 1.0)
        rows_boxes = box_convert(corners, "xyxy", "cxcywh")

    embed = label_embedding(rows_labels.flatten())
    content = embed.new_zeros(batch, pad_size, embed.shape[-1])
    anchors = torch.zeros(batch, pad_size, 4, device=device, dtype=torch.float32)
    content[images.flatten(), slots.flatten()] = embed
    anchors[images.flatten(), slots.flatten()] = inverse_sigmoid(rows_boxes.reshape(-1, 4))

    size = pad_size + num_queries
    attn_mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    attn_mask[pad_size:, :pad_size] = True
    group_of = torch.arange(pad_size, device=device) // group_size
    attn_mask[:pad_size, :pad_size] = group_of[:, None] != group_of[None, :]

    positive_matches = []
    negative_indices = []
    group_offsets = torch.arange(num_groups, device=device)[:, None] * group_size
    for n in counts:
        local = torch.arange(n, device=device)[None]
        positive_matches.append(((group_offsets + local).flatten(), local.expand(num_groups, n).flatten()))
        negative_indices.append((group_offsets + max_targets + local).flatten())
    meta = DenoisingMeta(
        pad_size=pad_size,
        num_groups=num_groups,
        max_targets=max_targets,
        positive_matches=positive_matches,
        negative_indices=negative_indices,
    )
    return DenoisingQueries(content=content, anchors=anchors, attn_mask=attn_mask, meta=meta)
