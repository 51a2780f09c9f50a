"""Overlapping tiles for fields larger than the model's input, and the merging of their results.

A field is cut into ``tile_size`` windows (the last row and column shifted inwards to end at the edge)
that overlap by ``overlap`` pixels. Each window has a *core*: the window minus half the overlap on every
side it shares with a neighbour. The cores tile the image exactly, without gaps or overlap, so

- a detection is kept by the one window whose core holds its box centre: a cell cut by one window's edge
  is whole in the neighbour that keeps it, as long as the overlap is at least the cell's diameter;
- each mask pixel is written by the window whose core holds it.

A class-wise NMS across windows then removes the rare duplicates of cells with a centre close to a core
border (a box that two windows see slightly differently). Memory is bounded by the windows of one batch,
not by the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class Window:
    """One tile: pixel bounds ``[y0, y1) x [x0, x1)`` in the field and its core (same frame)."""

    y0: int
    x0: int
    y1: int
    x1: int
    core_y0: int
    core_x0: int
    core_y1: int
    core_x1: int

    @property
    def size(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def _cores(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """Core span of each window along one axis: split every overlap at its middle."""
    cores = []
    for i, start in enumerate(starts):
        begin = 0 if i == 0 else (start + min(starts[i - 1] + tile, length)) // 2
        end = length if i == len(starts) - 1 else (starts[i + 1] + min(start + tile, length)) // 2
        cores.append((begin, end))
    return cores


def make_windows(height: int, width: int, tile_size: int, overlap: int) -> list[Window]:
    """The windows covering a ``height`` x ``width`` field (one window when it fits in a tile)."""
    if tile_size < 1 or not 0 <= overlap < tile_size:
        raise ValueError(
            f"tiling needs tile_size >= 1 and 0 <= overlap < tile_size, got {tile_size}, {overlap}"
        )
    ys, xs = _starts(height, tile_size, overlap), _starts(width, tile_size, overlap)
    core_y, core_x = _cores(ys, tile_size, height), _cores(xs, tile_size, width)
    return [
        Window(y, x, min(y + tile_size, height), min(x + tile_size, width), cy[0], cx[0], cy[1], cx[1])
        for y, cy in zip(ys, core_y)
        for x, cx in zip(xs, core_x)
    ]


def batches(windows: list[Window], batch_size: int) -> Iterator[list[Window]]:
    for start in range(0, len(windows), batch_size):
        yield windows[start : start + batch_size]


def in_core(boxes: Tensor, window: Window) -> Tensor:
    """(N,) bool: which ``xyxy`` field-frame boxes have their centre in ``window``'s core."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx >= window.core_x0) & (cx < window.core_x1) & (cy >= window.core_y0) & (cy < window.core_y1)


def merge_detections(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_detections: int
) -> Tensor:
    """Indices of the detections kept after class-wise NMS across windows, highest score first."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    keep = batched_nms(boxes.float(), scores.float(), labels, iou_threshold)
    return keep[:max_detections]
