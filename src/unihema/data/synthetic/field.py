"""Fields of view: :func:`generate_field` draws one field (the condition of the patient, the white
cells, red cells and platelets placed on the canvas, the imaging degradations) from its own random
generator (:func:`field_rng`), and returns a :class:`FieldOfView` with its image, segmentation mask and
every :class:`SyntheticCell` with its exact ground truth (box, mask, labels, attributes)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from unihema.data.schema import UNKNOWN
from unihema.data.synthetic.config import SyntheticConfig
from unihema.data.synthetic.labels import (
    ABNORMAL_RBC_TYPES,
    CELL_CLASS_OF_LABEL,
    DISEASE_OF_CONDITION,
    RBC_LABELS,
)
from unihema.data.synthetic.layout import Canvas, place_circles
from unihema.data.synthetic.priors import WhiteCellSpec, fov_indices, sample_white_cell
from unihema.data.synthetic.render import (
    CellPatch,
    rbc_bound,
    render_platelet,
    render_red_cell,
    render_white_cell,
)
from unihema.data.vocab import FOV_ATTRIBUTES, detection_index

MIN_VISIBLE_FRACTION = 0.3
"""A red cell cut by the image border is drawn and labelled only if this fraction of it is visible."""

_TRIANGULAR_NOISE_STD = math.sqrt(2 * (256**2 - 1) / 12)  # std of the sum of two uniform bytes


def field_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of field ``index``: independent of every other field."""
    return np.random.default_rng([int(seed), int(index)])


@dataclass
class SyntheticCell:
    """One cell of a field, with its exact ground truth.

    Attributes:
        label: detection class name (vocabulary spelling, see :data:`DETECTION_LABELS`).
        cell_class: single-cell class name (:data:`CELL_CLASS_OF_LABEL`).
        center: ``(x, y)`` of the cell centre in image pixels.
        box: ``(4,)`` float32 tight ``xyxy`` box of the visible mask.
        mask: the cell's visible pixels as a bool array over the window ``offset`` .. ``offset + shape``.
        offset: ``(x0, y0)`` of ``mask``'s top-left pixel in the image.
        nucleus: nucleus pixels over the same window (white cells; ``None`` otherwise).
        truncated: the image border cuts the cell.
        fov_attributes: ``(6,)`` int64 LeukemiaAttri values (``UNKNOWN`` for non-white cells).
        spec: the white cell's :class:`WhiteCellSpec` (``None`` for other cells).
        parasites: ring-stage parasites inside (``"ring"`` cells).
    """

    label: str
    cell_class: str
    center: tuple[float, float]
    box: np.ndarray
    mask: np.ndarray
    offset: tuple[int, int]
    nucleus: np.ndarray | None = None
    truncated: bool = False
    fov_attributes: np.ndarray = field(
        default_factory=lambda: np.full(len(FOV_ATTRIBUTES), UNKNOWN, np.int64)
    )
    spec: WhiteCellSpec | None = None
    parasites: int = 0

    @property
    def is_wbc(self) -> bool:
        return self.spec is not None

    @property
    def cell_attributes(self) -> np.ndarray | None:
        """``(11,)`` WBCAtt value indices for white cells, ``None`` otherwise."""
        return None if self.spec is None else self.spec.cell_attribute_indices()

    def full_mask(self, shape: tuple[int, int], *, nucleus: bool = False) -> np.ndarray:
        """The cell's (or its nucleus') mask as a full-image ``(H, W)`` bool array."""
        out = np.zeros(shape, dtype=bool)
        local = self.nucleus if nucleus else self.mask
        if local is not None:
            x0, y0 = self.offset
            out[y0 : y0 + local.shape[0], x0 : x0 + local.shape[1]] = local
        return out


@dataclass
class FieldOfView:
    """One generated field with its ground truth.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        cells: every labelled cell (white cells first, then red cells, then platelets).
        mask: ``(H, W)`` bool segmentation mask of the configured :attr:`SyntheticConfig.mask_target`.
        condition: ``"healthy"``, ``"malaria"`` or the dominant abnormal red-cell shape.
        disease: disease context of the field (:data:`DISEASE_OF_CONDITION`).
    """

    image: np.ndarray
    cells: list[SyntheticCell]
    mask: np.ndarray
    condition: str
    disease: str

    @property
    def boxes(self) -> np.ndarray:
        """``(N, 4)`` float32 xyxy boxes of every cell."""
        return (
            np.stack([c.box for c in self.cells]).astype(np.float32)
            if self.cells
            else np.zeros((0, 4), np.float32)
        )

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` int64 indices into :data:`~unihema.data.vocab.DETECTION_CLASSES`."""
        return np.array([detection_index(c.label) for c in self.cells], dtype=np.int64)

    @property
    def box_attributes(self) -> np.ndarray:
        """``(N, 6)`` int64 FoV attributes (``UNKNOWN`` for non-white cells)."""
        if not self.cells:
            return np.zeros((0, len(FOV_ATTRIBUTES)), np.int64)
        return np.stack([c.fov_attributes for c in self.cells]).astype(np.int64)


def _choose_condition(rng: np.random.Generator, config: SyntheticConfig) -> str:
    u = rng.random()
    if u < config.malaria_fraction:
        return "malaria"
    if u < config.malaria_fraction + config.abnormal_field_fraction:
        return ABNORMAL_RBC_TYPES[int(rng.integers(len(ABNORMAL_RBC_TYPES)))]
    return "healthy"


def _rbc_labels(rng: np.random.Generator, config: SyntheticConfig, condition: str, count: int) -> list[str]:
    labels = np.array(["rbc"] * count, dtype=object)
    if condition == "malaria":
        infected = rng.random(count) < rng.uniform(*config.parasitaemia)
        labels[infected] = "ring"
    elif condition in ABNORMAL_RBC_TYPES:
        abnormal = rng.random(count) < rng.uniform(*config.abnormal_rbc_fraction)
        # Mostly the field's dominant shape, some of the other two.
        weights = np.array([0.8 if t == condition else 0.1 for t in ABNORMAL_RBC_TYPES])
        kinds = rng.choice(len(ABNORMAL_RBC_TYPES), size=count, p=weights / weights.sum())
        labels[abnormal] = np.array(ABNORMAL_RBC_TYPES, dtype=object)[kinds[abnormal]]
    return labels.tolist()


def generate_field(rng: np.random.Generator, config: SyntheticConfig) -> FieldOfView:
    """Generate one field of view (image, cells with exact ground truth, segmentation mask)."""
    height, width = config.height, config.width
    scale = config.scale
    condition = _choose_condition(rng, config)
    canvas = Canvas(height, width)
    centres: list[tuple[float, float]] = []
    bounds: list[float] = []

    # White cells first (they need the most room), wholly inside the image.
    n_wbc = int(rng.integers(config.wbc_per_field[0], config.wbc_per_field[1] + 1))
    types = [config.wbc_types[i] for i in rng.integers(0, len(config.wbc_types), n_wbc)]
    specs = [sample_white_cell(rng, t) for t in types]
    wbc_patches = [render_white_cell(rng, spec, config.rbc_radius) for spec in specs]
    order = np.argsort([-p.half for p in wbc_patches], kind="stable")
    wbc_items = [(specs[i], wbc_patches[i]) for i in order]
    wbc_at = place_circles(
        rng, [float(p.half) for _, p in wbc_items], centres, bounds, width, height, inside=True
    )

    # Red cells: as many as the drawn area density asks for; border cells allowed.
    density = rng.uniform(*config.rbc_density)
    n_rbc = int(round(density * height * width / (math.pi * config.rbc_radius**2)))
    rbc_labels = _rbc_labels(rng, config, condition, n_rbc)
    rbc_radii = config.rbc_radius * rng.uniform(0.92, 1.08, n_rbc)
    rbc_bounds = [rbc_bound(label, r) for label, r in zip(rbc_labels, rbc_radii)]
    rbc_at = place_circles(rng, rbc_bounds, centres, bounds, width, height, inside=False)

    n_platelets = int(rng.integers(config.platelets_per_field[0], config.platelets_per_field[1] + 1))
    platelet_radii = scale * rng.uniform(2.2, 3.6, n_platelets)
    platelet_at = place_circles(
        rng, [1.25 * r for r in platelet_radii], centres, bounds, width, height, inside=True
    )

    cells: list[SyntheticCell] = []

    def record(patch: CellPatch, at: tuple[float, float], label: str, **extra: Any) -> None:
        windows = canvas.window(patch, *at)
        if windows is None:
            return
        (ix0, iy0, ix1, iy1), (px0, py0, px1, py1) = windows
        mask = patch.mask[py0:py1, px0:px1]
        full = patch.area
        whole = (px0, py0, px1, py1) == (0, 0, *patch.mask.shape[::-1])
        if whole:
            visible = full
            r0, c0, r1, c1 = patch.bbox
        else:
            rows, cols = np.nonzero(mask)
            visible = len(rows)
            if visible == 0 or visible < MIN_VISIBLE_FRACTION * full:
                return  # mostly outside: not drawn, so nothing visible goes unlabelled
            r0, c0, r1, c1 = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
        canvas.composite(patch, windows)
        box = np.array([ix0 + c0, iy0 + r0, ix0 + c1, iy0 + r1], np.float32)
        nucleus = patch.nucleus[py0:py1, px0:px1] if extra.get("spec") is not None else None
        cells.append(
            SyntheticCell(
                label=label,
                cell_class=CELL_CLASS_OF_LABEL[label],
                center=(float(at[0]), float(at[1])),
                box=box,
                mask=mask.copy(),
                offset=(ix0, iy0),
                nucleus=None if nucleus is None else nucleus.copy(),
                truncated=visible < full,
                parasites=patch.parasites,
                **extra,
            )
        )

    for (spec, patch), at in zip(wbc_items, wbc_at):
        if at is not None:
            record(patch, at, spec.cell_type, spec=spec, fov_attributes=fov_indices(spec))
    for label, radius, at in zip(rbc_labels, rbc_radii, rbc_at):
        if at is not None:
            parasites = 1 + int(rng.random() < 0.15) if label == "ring" else 0
            record(render_red_cell(rng, label, float(radius), parasites=parasites, scale=scale), at, label)
    for radius, at in zip(platelet_radii, platelet_at):
        if at is not None:
            record(render_platelet(rng, float(radius), scale), at, "platelet")

    image = _finish_image(rng, canvas.image, config)
    return FieldOfView(
        image=image,
        cells=cells,
        mask=_segmentation_mask(cells, (height, width), config.mask_target),
        condition=condition,
        disease=DISEASE_OF_CONDITION[condition],
    )


def _finish_image(rng: np.random.Generator, image: np.ndarray, config: SyntheticConfig) -> np.ndarray:
    """Illumination gradient, stain tint, optical blur and sensor noise; returns uint8."""
    height, width = image.shape[:2]
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * math.pi)
    gradient = (
        0.5 * config.illumination * rng.uniform(0.3, 1.0) * (math.cos(angle) * xs + math.sin(angle) * ys)
    )
    vignette = 0.5 * config.illumination * (xs * xs + ys * ys) / 2.0
    light = (1.0 + gradient - vignette).astype(np.float32)
    tint = (1.0 + rng.normal(0.0, 0.015, 3)).astype(np.float32)
    image = image * (light[..., None] * tint)
    if config.blur_sigma > 0:
        image = ndimage.gaussian_filter(image, (config.blur_sigma, config.blur_sigma, 0), truncate=3.0)
    if config.noise_std > 0:
        # Triangular noise from two random bytes per value: close to Gaussian, and several times faster
        # to draw than normal deviates (the noise is a large share of a field's cost).
        raw = np.frombuffer(rng.bytes(2 * image.size), dtype=np.uint8).reshape(2, *image.shape)
        noise = raw[0].astype(np.float32)
        noise += raw[1]
        noise -= 255.0
        image += noise * np.float32(config.noise_std / _TRIANGULAR_NOISE_STD)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _segmentation_mask(cells: list[SyntheticCell], shape: tuple[int, int], target: str) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for cell in cells:
        if (
            target == "all"
            or (target == "wbc" and cell.is_wbc)
            or (target == "rbc" and cell.label in RBC_LABELS)
        ):
            local = cell.mask
        elif target == "wbc_nucleus" and cell.is_wbc:
            local = cell.nucleus
        else:
            continue
        x0, y0 = cell.offset
        mask[y0 : y0 + local.shape[0], x0 : x0 + local.shape[1]] |= local
    return mask
