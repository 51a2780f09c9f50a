"""Single-cell crops: which cells of a field are cut out for the classification and cell-morphology
tasks (every whole white cell, then a seeded choice of whole abnormal or infected red cells, normal red
cells and platelets, at most the ``*_crops_per_field`` numbers of the config) and the square window
each is cut from (:class:`CellCrop`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unihema.data.synthetic.config import SyntheticConfig
from unihema.data.synthetic.field import FieldOfView, SyntheticCell


@dataclass(frozen=True)
class CellCrop:
    """A single-cell crop: the cell and the square window (xyxy) it is cut from."""

    cell_index: int
    window: tuple[int, int, int, int]


def select_crops(config: SyntheticConfig, index: int, fov: FieldOfView) -> list[CellCrop]:
    """The crops :meth:`~unihema.data.synthetic.corpus.SyntheticCorpus.crops` returns for field ``index``
    (``fov``); the random choice comes from a generator of its own, seeded by ``(seed, index)``."""
    rng = np.random.default_rng([int(config.seed), int(index), 0xC0])
    chosen: list[int] = []
    abnormal, normal, platelets = [], [], []
    for i, cell in enumerate(fov.cells):
        if cell.truncated:
            continue  # a cut cell would teach a partial look
        if cell.is_wbc:
            chosen.append(i)
        elif cell.label == "rbc":
            normal.append(i)
        elif cell.label == "platelet":
            platelets.append(i)
        else:
            abnormal.append(i)
    quotas = (
        (abnormal, config.abnormal_rbc_crops_per_field),
        (normal, config.rbc_crops_per_field),
        (platelets, config.platelet_crops_per_field),
    )
    for pool, k in quotas:
        if pool and k:
            chosen.extend(sorted(rng.choice(pool, size=min(k, len(pool)), replace=False).tolist()))
    return [CellCrop(i, crop_window(config, fov.cells[i])) for i in chosen]


def crop_window(config: SyntheticConfig, cell: SyntheticCell) -> tuple[int, int, int, int]:
    """The square ``xyxy`` window cut around ``cell``: at least ``config.crop_size`` and ``crop_scale``
    times the cell's box side plus 4 px, inside the image."""
    height, width = config.height, config.width
    x0, y0, x1, y1 = cell.box.tolist()
    extent = max(x1 - x0, y1 - y0) * config.crop_scale
    side = max(config.crop_size, int(math.ceil(extent)) + 4)
    side = min(side, height, width)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(min(max(round(cx - side / 2.0), 0), width - side))
    top = int(min(max(round(cy - side / 2.0), 0), height - side))
    return left, top, left + side, top + side
