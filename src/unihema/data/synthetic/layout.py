"""Field layout: the :class:`Canvas` a field is drawn on, which works out where a cell patch lands in
the image (clipped at the border) and composites it, and :func:`place_circles`, which finds random
non-overlapping centres for the cells' bounding circles, wholly inside the image or cut by its border.
Cells never overlap, so every cell mask is the cell's visible area."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unihema.data.synthetic.palette import BACKGROUND
from unihema.data.synthetic.render import CellPatch

PLACEMENT_GAP_PX = 1.5
"""Minimum free space between the bounding circles of two cells (cells never overlap)."""

_PLACEMENT_TRIES = 24  # random candidate centres tried per cell before giving up on it


class Canvas:
    """The field being drawn, with the bookkeeping to paste cell patches and record their masks."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.image = np.empty((height, width, 3), np.float32)
        self.image[:] = BACKGROUND

    def window(
        self, patch: CellPatch, cx: float, cy: float
    ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]] | None:
        """Where ``patch`` centred at pixel ``(cx, cy)`` lands: the (image, patch) windows, or None when
        it falls wholly outside."""
        half = patch.half
        x0, y0 = int(math.floor(cx)) - half, int(math.floor(cy)) - half
        size = 2 * half + 1
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + size, self.width), min(y0 + size, self.height)
        if ix0 >= ix1 or iy0 >= iy1:
            return None
        px0, py0 = ix0 - x0, iy0 - y0
        px1, py1 = px0 + (ix1 - ix0), py0 + (iy1 - iy0)
        return (ix0, iy0, ix1, iy1), (px0, py0, px1, py1)

    def composite(self, patch: CellPatch, windows: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        (ix0, iy0, ix1, iy1), (px0, py0, px1, py1) = windows
        region = self.image[iy0:iy1, ix0:ix1]
        region *= patch.transmittance[py0:py1, px0:px1]
        region += patch.premultiplied[py0:py1, px0:px1]


def place_circles(
    rng: np.random.Generator,
    radii: Sequence[float],
    centres: list[tuple[float, float]],
    bounds: list[float],
    width: int,
    height: int,
    *,
    inside: bool,
) -> list[tuple[float, float] | None]:
    """Random non-overlapping centres for circles of ``radii`` among already placed ones (mutated).

    ``inside`` keeps each circle wholly within the image; otherwise the centre may lie up to 0.6 radius
    outside (cells cut by the border). Returns ``None`` for a circle that found no room.
    """
    n_old, n_new = len(centres), len(radii)
    pos = np.empty((n_old + n_new, 2), np.float64)
    rad = np.empty(n_old + n_new, np.float64)
    pos[:n_old] = np.asarray(centres, np.float64).reshape(-1, 2)
    rad[:n_old] = bounds
    count = n_old
    # All candidates at once: one generator call per placement batch, not per cell.
    unit = rng.random((n_new, _PLACEMENT_TRIES, 2))
    placed: list[tuple[float, float] | None] = []
    for k, r in enumerate(radii):
        margin = r + 1.0 if inside else -0.6 * r
        span_x, span_y = width - 2 * margin, height - 2 * margin
        if span_x <= 0 or span_y <= 0:
            placed.append(None)
            continue
        cand_x = margin + unit[k, :, 0] * span_x
        cand_y = margin + unit[k, :, 1] * span_y
        if count:
            dx = cand_x[:, None] - pos[None, :count, 0]
            dy = cand_y[:, None] - pos[None, :count, 1]
            reach = rad[None, :count] + (r + PLACEMENT_GAP_PX)
            ok = np.all(dx * dx + dy * dy >= reach * reach, axis=1)
            hits = np.flatnonzero(ok)
            if len(hits) == 0:
                placed.append(None)
                continue
            first = int(hits[0])
        else:
            first = 0
        cx, cy = float(cand_x[first]), float(cand_y[first])
        pos[count] = cx, cy
        rad[count] = r
        count += 1
        placed.append((cx, cy))
        centres.append((cx, cy))
        bounds.append(float(r))
    return placed
