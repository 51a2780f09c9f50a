"""From the model's typed outputs to boxes, classes, attributes, masks and probabilities in pixels.

One decoding for evaluation (:mod:`unihema.evaluate.evaluator`), the demo and the predictor
(:mod:`unihema.inference.predictor`):

- detections: sigmoid class scores over queries x classes; the best ``max_detections`` (query, class) pairs
  (COCO-style evaluation, where a query may propose two classes) or one best class per query (what a user
  counts: one cell per box); a score threshold; boxes as ``xyxy`` pixels of the size the caller gives, so
  passing the original image size maps them back to the original pixels (the model's boxes are normalised
  to the unpadded image, whatever it was resized to);
- attributes: argmax per attribute group, with its softmax probability;
- masks: bilinear resize of the mask logits to the padded input, crop of the unpadded area, then a resize
  to the original image size;
- cell classes: softmax over the cell-class logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert

from unihema.model.heads import AttributeSchema, attribute_slices
from unihema.model.outputs import BoxOutput


@dataclass
class DecodedDetections:
    """Detections of one image.

    Attributes:
        boxes: (K, 4) ``xyxy`` pixels in the frame of the size given to :func:`decode_detections`.
        scores: (K,) sigmoid class scores, highest first.
        labels: (K,) indices into ``DETECTION_CLASSES``.
        queries: (K,) the decoder query each detection came from (to read per-query heads for it).
        attributes: (K, n) attribute value indices, or ``None`` when the output has no attribute logits.
        attribute_scores: (K, n) softmax probability of each chosen attribute value, or ``None``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    queries: Tensor
    attributes: Tensor | None = None
    attribute_scores: Tensor | None = None


def decode_attributes(flat_logits: Tensor, schema: AttributeSchema) -> tuple[Tensor, Tensor]:
    """Argmax per attribute group: (..., sum(values)) -> values (..., n) int64 and their probabilities."""
    values, probabilities = [], []
    for columns in attribute_slices(schema).values():
        best = flat_logits[..., columns].float().softmax(-1).max(-1)
        values.append(best.indices)
        probabilities.append(best.values)
    return torch.stack(values, dim=-1), torch.stack(probabilities, dim=-1)


def decode_detections(
    output: BoxOutput,
    sizes: Tensor | Sequence[Sequence[float]],
    max_detections: int,
    score_threshold: float = 0.0,
    one_per_query: bool = False,
    attribute_schema: AttributeSchema | None = None,
) -> list[DecodedDetections]:
    """Decode one batch of box predictions.

    Args:
        output: the model's box predictions (``logits`` (B, Q, C), ``boxes`` (B, Q, 4), ``attributes``).
        sizes: (B, 2) ``(height, width)`` of the frame to express the boxes in.
        max_detections: most detections kept per image.
        score_threshold: detections below this score are dropped.
        one_per_query: keep only each query's best class (one box per cell) instead of the best
            (query, class) pairs over all classes.
        attribute_schema: decode ``output.attributes`` with this schema (``FOV_ATTRIBUTES``).
    """
    probabilities = output.logits.float().sigmoid()
    batch, num_queries, num_classes = probabilities.shape
    if one_per_query:
        best = probabilities.max(-1)
        k = min(max_detections, num_queries)
        scores, queries = best.values.topk(k, dim=1)
        labels = best.indices.gather(1, queries)
    else:
        k = min(max_detections, num_queries * num_classes)
        scores, flat_index = probabilities.flatten(1).topk(k, dim=1)
        queries, labels = flat_index // num_classes, flat_index % num_classes
    boxes = box_convert(output.boxes.float(), "cxcywh", "xyxy")
    sizes = torch.as_tensor(sizes, dtype=torch.float32, device=boxes.device).reshape(batch, 2)
    decoded_attributes = None
    if attribute_schema is not None and output.attributes is not None:
        decoded_attributes = decode_attributes(output.attributes, attribute_schema)
    results = []
    for i in range(batch):
        height, width = sizes[i]
        keep = scores[i] >= score_threshold
        query = queries[i][keep]
        detections = DecodedDetections(
            boxes=boxes[i, query] * torch.stack([width, height, width, height]),
            scores=scores[i][keep], labels=labels[i][keep], queries=query,
        )  # fmt: skip
        if decoded_attributes is not None:
            detections.attributes = decoded_attributes[0][i, query]
            detections.attribute_scores = decoded_attributes[1][i, query]
        results.append(detections)
    return results


def mask_logits_at_input(masks: Tensor, padded_size: Sequence[int]) -> Tensor:
    """Mask logits (B, 1, h, w) resized (bilinear, as in the training loss) to the padded input size.

    A model configured with a fixed mask size (``qgmf_mask_size`` an integer) predicts over the whole
    padded input at that resolution, so it must be resized before each image's unpadded area is cropped.
    """
    logits = masks.float()
    size = tuple(int(v) for v in padded_size)
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


def mask_probabilities(
    masks: Tensor,
    padded_size: Sequence[int],
    input_sizes: Sequence[Sequence[int]],
    output_sizes: Sequence[Sequence[int]] | None = None,
) -> list[Tensor]:
    """Foreground probabilities per image: the unpadded ``input_sizes[i]`` area of the mask at the padded
    input, resized (bilinear) to ``output_sizes[i]`` (the original image; default: the input size)."""
    probabilities = mask_logits_at_input(masks, padded_size).sigmoid()[:, 0]
    results = []
    for i, (height, width) in enumerate(input_sizes):
        image = probabilities[i, : int(height), : int(width)]
        if output_sizes is not None and tuple(output_sizes[i]) != (int(height), int(width)):
            size = tuple(int(v) for v in output_sizes[i])
            image = F.interpolate(image[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        results.append(image)
    return results


def cell_class_probabilities(class_logits: Tensor) -> Tensor:
    """Softmax over the cell classes: (B, len(CELL_CLASSES))."""
    return class_logits.float().softmax(-1)
