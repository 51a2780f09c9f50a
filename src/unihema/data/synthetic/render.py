"""Cell rendering: :class:`CellPatch`, one cell drawn on a small square patch with its colour, coverage
and nucleus/cytoplasm/cell masks, and the renderers that produce it: :func:`render_white_cell`, whose
look follows the cell's WBCAtt attributes, :func:`render_red_cell` (normal, sickle, target and oval red
cells, from a cache of body templates, and malaria ring stages drawn over them) and
:func:`render_platelet`."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from unihema.data.synthetic.labels import RBC_LABELS
from unihema.data.synthetic.palette import (
    CHROMATIN_COLOUR,
    CHROMATIN_TEXTURE,
    CYTOPLASM_COLOUR,
    CYTOPLASM_TEXTURE,
    GRANULE_COLOUR,
    GRANULES,
    MONOCYTE_GREY,
    MONOCYTE_GREY_MIX,
    NUCLEOLUS_COLOUR,
    PLATELET_BODY,
    PLATELET_GRANULOMERE,
    RADIUS_JITTER,
    RBC_BODY,
    RBC_PALLOR,
    RBC_RIM,
    REFERENCE_RBC_RADIUS,
    RING_CHROMATIN,
    RING_CYTOPLASM,
    SICKLE_BODY,
    VACUOLE_COLOUR,
    WBC_RADIUS,
)
from unihema.data.synthetic.priors import WhiteCellSpec
from unihema.data.synthetic.shapes import (
    grid,
    lerp,
    rotate,
    sdf_arc,
    sdf_capsule,
    sdf_coverage,
    sdf_disc,
    sdf_ellipse,
    sdf_wobbly_disc,
    smooth_noise,
    splat,
)


@dataclass
class CellPatch:
    """A rendered cell on a square local patch centred on the cell centre.

    Attributes:
        colour: ``(P, P, 3)`` float32 RGB of the cell (meaningful where ``alpha`` > 0).
        alpha: ``(P, P)`` float32 coverage of the cell outline (anti-aliased).
        nucleus: ``(P, P)`` bool nucleus pixels (white cells; all False otherwise).
        cytoplasm: ``(P, P)`` bool cytoplasm pixels (the cell minus its nucleus).
        mask: ``(P, P)`` bool cell pixels: coverage of at least one half.
        parasites: number of ring-stage parasites drawn inside (red cells).
        area: number of ``mask`` pixels.
        bbox: ``(row0, col0, row1, col1)`` extent of ``mask`` in the patch (end exclusive).

    Patches may be shared between cells (red-cell templates are cached): treat the arrays as read-only.
    """

    colour: np.ndarray
    alpha: np.ndarray
    nucleus: np.ndarray
    cytoplasm: np.ndarray
    mask: np.ndarray
    parasites: int = 0
    area: int = 0
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)

    @cached_property
    def premultiplied(self) -> np.ndarray:
        """``colour * alpha``: compositing then costs one multiply-add per pixel."""
        return self.colour * self.alpha[..., None]

    @cached_property
    def transmittance(self) -> np.ndarray:
        """``1 - alpha`` with a trailing channel axis."""
        return (1.0 - self.alpha)[..., None]

    @property
    def half(self) -> int:
        return self.alpha.shape[0] // 2


def _patch_half(bound_radius: float) -> int:
    return int(math.ceil(bound_radius)) + 2


def _finish(
    colour: np.ndarray, alpha: np.ndarray, nucleus: np.ndarray | None = None, parasites: int = 0
) -> CellPatch:
    mask = alpha >= 0.5
    nucleus = np.zeros_like(mask) if nucleus is None else (nucleus & mask)
    rows, cols = np.nonzero(mask)
    bbox = (
        (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
        if len(rows)
        else (0, 0, 0, 0)
    )
    patch = CellPatch(
        colour.astype(np.float32),
        alpha.astype(np.float32),
        nucleus,
        mask & ~nucleus,
        mask,
        parasites,
        area=len(rows),
        bbox=bbox,
    )
    for array in (patch.colour, patch.alpha, patch.nucleus, patch.cytoplasm, patch.mask):
        array.setflags(write=False)
    return patch


def white_cell_radius(spec: WhiteCellSpec, rbc_radius: float = REFERENCE_RBC_RADIUS) -> float:
    """Nominal radius in pixels of a white cell (before the small random jitter)."""
    big, small = WBC_RADIUS[spec.cell_type]
    return (big if spec.attributes["cell_size"] == "big" else small) * rbc_radius / REFERENCE_RBC_RADIUS


def _nucleus_sdf(
    shape: str, x: np.ndarray, y: np.ndarray, radius: float, nc_high: bool, rng: np.random.Generator
) -> np.ndarray:
    """Signed distance of a nucleus of the WBCAtt ``nucleus_shape`` inside a cell of ``radius``."""
    x, y = rotate(x, y, rng.uniform(0, 2 * math.pi))
    grow = 1.18 if nc_high else 1.0  # a high N:C ratio means a larger nucleus for the same cell
    r = radius
    if shape == "unsegmented-round":
        rn = r * (0.76 if nc_high else 0.55)
        return sdf_wobbly_disc(x - r * (0.08 if nc_high else 0.16), y, rn, 0.03, rng)
    if shape == "unsegmented-indented":  # kidney / bean: a disc with a round notch cut out of one side
        rn = r * (0.72 if nc_high else 0.6)
        body = sdf_disc(x, y, rn, cx=-0.1 * r)
        notch = sdf_disc(x, y, 0.55 * rn, cx=-0.1 * r + 0.92 * rn)
        return np.maximum(body, -notch)
    if shape == "unsegmented-band":  # a thick horseshoe of even width
        rc = 0.5 * r
        return sdf_arc(x + 0.25 * r, y, rc, rng.uniform(1.9, 2.4), 0.15 * r * grow)
    if shape == "segmented-bilobed":  # two lobes joined by a thin chromatin filament
        d = 0.42 * r
        rl = 0.27 * r * grow
        lobes = np.minimum(sdf_disc(x, y, rl, cx=-d, cy=0.08 * r), sdf_disc(x, y, rl, cx=d, cy=0.08 * r))
        return np.minimum(lobes, sdf_capsule(x, y, (-d, 0.0), (d, 0.0), 0.05 * r))
    if shape == "segmented-multilobed":  # 3-5 lobes strung along a curve
        n = int(rng.integers(3, 6))
        angles = np.linspace(-1.9, 1.9, n) + rng.uniform(-0.15, 0.15, n)
        centres = [(0.46 * r * math.cos(a) - 0.12 * r, 0.46 * r * math.sin(a)) for a in angles]
        rl = (0.25 if n == 3 else 0.22) * r * grow
        sdf = sdf_disc(x, y, rl, *centres[0])
        for (ax, ay), (bx, by) in zip(centres[:-1], centres[1:]):
            sdf = np.minimum(sdf, sdf_disc(x, y, rl, bx, by))
            sdf = np.minimum(sdf, sdf_capsule(x, y, (ax, ay), (bx, by), 0.045 * r))
        return sdf
    if shape == "irregular":
        rn = r * (0.68 if nc_high else 0.55)
        return sdf_wobbly_disc(x, y, rn, 0.22, rng)
    raise ValueError(f"unknown nucleus_shape {shape!r}")


def render_white_cell(
    rng: np.random.Generator, spec: WhiteCellSpec, rbc_radius: float = REFERENCE_RBC_RADIUS
) -> CellPatch:
    """Draw one white cell whose look follows ``spec`` (see the module docstring)."""
    a = spec.attributes
    scale = rbc_radius / REFERENCE_RBC_RADIUS
    radius = white_cell_radius(spec, rbc_radius) * (1.0 + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER))
    irregular = a["cell_shape"] == "irregular"
    half = _patch_half(radius * (1.2 if irregular else 1.04))
    x, y = grid(half, *rng.uniform(-0.5, 0.5, 2))
    shape = (2 * half + 1, 2 * half + 1)

    outline = sdf_wobbly_disc(x, y, radius, 0.14 if irregular else 0.015, rng)
    alpha = sdf_coverage(outline)
    inside = outline < 0

    # Cytoplasm: hue from `cytoplasm_colour`, graininess from `cytoplasm_texture`.
    base = CYTOPLASM_COLOUR[a["cytoplasm_colour"]]
    if spec.cell_type == "monocyte":
        base = base * (1 - MONOCYTE_GREY_MIX) + MONOCYTE_GREY * MONOCYTE_GREY_MIX
    amp, sigma = CYTOPLASM_TEXTURE[a["cytoplasm_texture"]]
    colour = np.broadcast_to(base, (*shape, 3)) + (amp * smooth_noise(rng, shape, sigma * scale))[..., None]
    # Slightly darker towards the membrane, as the cytoplasm thickens there.
    colour = lerp(colour, base * 0.88, np.clip((outline + 3.0 * scale) / (3.0 * scale), 0.0, 1.0) * 0.5)

    nucleus_sdf = _nucleus_sdf(
        a["nucleus_shape"], x, y, radius, a["nuclear_cytoplasmic_ratio"] == "high", rng
    )
    nucleus_sdf = np.maximum(nucleus_sdf, outline + 1.5 * scale)  # keep a rim of cytoplasm
    nucleus_alpha = sdf_coverage(nucleus_sdf)
    cytoplasm_area = inside & (nucleus_sdf > 0)

    if a["cytoplasm_vacuole"] == "yes":
        free = cytoplasm_area & (outline < -2.5 * scale) & (nucleus_sdf > 2.0 * scale)
        count = int(rng.integers(3, 9))
        vacuoles, _ = splat(rng, free, count, rng.uniform(1.4, 2.4) * scale)
        colour = lerp(colour, VACUOLE_COLOUR, vacuoles * 0.85)

    granules = None
    if a["granule_type"] != "nil":
        density, g_radius, on_top, opacity = GRANULES[a["granule_type"]]
        where = inside & (outline < -0.8 * scale)
        if not on_top:
            where &= nucleus_sdf > 0
        # `density` is per pixel at the reference scale: the count per cell does not depend on scale.
        count = int(density * float(where.sum()) / (scale * scale))
        granules, _ = splat(rng, where, count, g_radius * scale)
        g_colour = GRANULE_COLOUR[a["granule_colour"]]
        if not on_top:
            colour = lerp(colour, g_colour, granules * opacity)

    # Nucleus: darkness and clumpiness from `chromatin_density`.
    c_amp, c_sigma = CHROMATIN_TEXTURE[a["chromatin_density"]]
    chromatin = CHROMATIN_COLOUR[a["chromatin_density"]]
    nucleus_colour = (
        np.broadcast_to(chromatin, (*shape, 3))
        + (c_amp * smooth_noise(rng, shape, c_sigma * scale))[..., None]
    )
    if spec.nucleolus:
        core = nucleus_sdf < -2.5 * scale
        nucleoli, _ = splat(rng, core, int(rng.integers(1, 3)), 1.8 * scale)
        nucleus_colour = lerp(nucleus_colour, NUCLEOLUS_COLOUR, nucleoli * 0.9)
    # A darker nuclear membrane keeps the outline visible even against purple-blue cytoplasm.
    membrane = np.clip((nucleus_sdf + 1.5 * scale) / (1.5 * scale), 0.0, 1.0) * 0.35
    nucleus_colour = lerp(nucleus_colour, chromatin * 0.7, membrane)
    colour = lerp(colour, nucleus_colour, nucleus_alpha)

    if granules is not None and GRANULES[a["granule_type"]][2]:
        colour = lerp(colour, GRANULE_COLOUR[a["granule_colour"]], granules * GRANULES[a["granule_type"]][3])
    return _finish(colour, alpha, nucleus_sdf < 0)


def rbc_bound(label: str, radius: float) -> float:
    """Radius of the circle bounding a red cell of ``label`` with nominal ``radius``."""
    return {"sickle cell": 1.3, "elliptocyte": 1.32}.get(label, 1.0) * radius


def render_red_cell(
    rng: np.random.Generator, label: str, radius: float, *, parasites: int = 0, scale: float = 1.0
) -> CellPatch:
    """Draw a red cell of detection ``label`` (``"rbc"``, ``"sickle cell"``, ``"target cell"``,
    ``"elliptocyte"`` or ``"ring"``) with nominal ``radius`` px; ``"ring"`` cells carry ``parasites``
    ring-stage parasites (at least one).

    The cell body comes from a cache of templates keyed by quantised shape parameters (radius to
    1/4 px, orientation, oval stretch, pallor): red cells are the bulk of every field and drawing each
    from scratch would dominate the generation time. The random draws are the same whether the cache hits
    or not, so fields do not depend on what was generated before.
    """
    if label not in RBC_LABELS:
        raise ValueError(f"unknown red-cell label {label!r}; expected one of {RBC_LABELS}")
    radius_q = round(radius * _RADIUS_STEPS_PER_PX) / _RADIUS_STEPS_PER_PX
    turn = _TEMPLATE_TURN[label]
    angle_q = int(rng.integers(0, _TEMPLATE_ANGLES[label])) * turn / _TEMPLATE_ANGLES[label]
    form_q = int(rng.integers(0, _TEMPLATE_FORMS))  # oval stretch / elongation level
    pallor_q = int(rng.integers(0, _TEMPLATE_FORMS))
    body = "rbc" if label == "ring" else label
    if body != "rbc":
        pallor_q = 0  # only normal cells vary their pallor: keep the cache small
    template = _red_cell_template(body, radius_q, angle_q, form_q, pallor_q)
    if label != "ring":
        return template
    colour = np.array(template.colour)
    half = template.half
    x, y = grid(half)
    count = max(1, parasites)
    for _ in range(count):
        colour = _draw_ring(rng, colour, x, y, radius_q, scale)
    return _finish(colour, template.alpha, parasites=count)


_RADIUS_STEPS_PER_PX = 4
_TEMPLATE_FORMS = 3  # levels of oval stretch / elongation and of pallor
_TEMPLATE_ANGLES = {"rbc": 6, "ring": 6, "target cell": 6, "elliptocyte": 16, "sickle cell": 24}
_TEMPLATE_TURN = {"rbc": math.pi, "ring": math.pi, "target cell": math.pi, "elliptocyte": math.pi}
_TEMPLATE_TURN["sickle cell"] = 2 * math.pi  # a crescent has no half-turn symmetry
_TEMPLATE_CACHE_SIZE = 2048  # ~1,300 templates per red-cell radius, a few tens of MB


@functools.lru_cache(maxsize=_TEMPLATE_CACHE_SIZE)
def _red_cell_template(label: str, radius: float, angle: float, form: int, pallor_level: int) -> CellPatch:
    """One red-cell body (no parasites); a pure function of its arguments, hence cacheable."""
    half = _patch_half(rbc_bound(label, radius))
    x, y = rotate(*grid(half), angle)
    shape = (2 * half + 1, 2 * half + 1)
    level = form / max(_TEMPLATE_FORMS - 1, 1)  # 0 .. 1
    if label == "sickle cell":
        # A crescent: a disc with an equal disc, shifted sideways, cut out of it.
        outer = 1.3 * radius
        sdf = np.maximum(sdf_disc(x, y, outer), -sdf_disc(x, y, outer, cx=(0.30 + 0.04 * level) * outer))
        colour = np.broadcast_to(SICKLE_BODY, (*shape, 3)).astype(np.float32)
        return _finish(lerp(colour, RBC_RIM, np.clip(sdf + 2.0, 0, 1) * 0.3), sdf_coverage(sdf))
    if label == "elliptocyte":
        elongation = 1.28 + 0.14 * level
        major, minor = radius * elongation, radius / elongation * 1.05
        sdf = sdf_ellipse(x, y, major, minor)
        rel = np.hypot(x / (0.55 * major), y / (0.45 * minor))
        pallor = np.exp(-(rel**4)) * 0.45
    else:
        # Slightly oval, as real discocytes are.
        rho = np.hypot(x, y * np.float32(1.0 + 0.06 * level))
        sdf = rho - np.float32(radius)
        rel = rho / np.float32(radius)
        if label == "target cell":
            # Dark centre (the "bullseye"), pale ring, dark outer band.
            pallor = np.exp(-(((rel - 0.48) / 0.16) ** 2)) * 0.85
        else:
            pallor = np.exp(-((rel / 0.46) ** 4)) * (0.5 + 0.075 * pallor_level)
    colour = lerp(np.broadcast_to(RBC_BODY, (*shape, 3)), RBC_PALLOR, pallor.astype(np.float32))
    colour = lerp(colour, RBC_RIM, np.clip((sdf + 2.5) / 2.5, 0, 1) * 0.35)
    return _finish(colour, sdf_coverage(sdf))


def _draw_ring(
    rng: np.random.Generator, colour: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float, scale: float
) -> np.ndarray:
    """A ring-stage trophozoite: a thin, slightly open blue ring with a dark chromatin dot."""
    ring_r = rng.uniform(0.26, 0.36) * radius
    offset = rng.uniform(0.0, radius - ring_r - 2.0 * scale)
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = offset * math.cos(angle), offset * math.sin(angle)
    rx, ry = rotate(x - cx, y - cy, rng.uniform(0, 2 * math.pi))
    ring = sdf_arc(rx, ry, ring_r, rng.uniform(2.4, 3.0), 0.55 * scale)
    colour = lerp(colour, RING_CYTOPLASM, sdf_coverage(ring) * 0.9)
    dot = sdf_disc(rx, ry, 1.3 * scale, cx=-ring_r, cy=0.0)  # chromatin dot opposite the ring opening
    return lerp(colour, RING_CHROMATIN, sdf_coverage(dot))


def render_platelet(rng: np.random.Generator, radius: float, scale: float = 1.0) -> CellPatch:
    """A platelet: a small irregular lilac fragment with a dark granular centre."""
    half = _patch_half(radius * 1.25)
    x, y = grid(half, *rng.uniform(-0.5, 0.5, 2))
    sdf = sdf_wobbly_disc(x, y, radius, 0.18, rng)
    shape = x.shape[1], y.shape[0]
    colour = np.broadcast_to(PLATELET_BODY, (*shape, 3)).astype(np.float32)
    centre = np.clip(-sdf / (0.6 * radius), 0.0, 1.0) * (
        0.6 + 0.4 * smooth_noise(rng, shape, 0.5 * scale).clip(-1, 1)
    )
    return _finish(lerp(colour, PLATELET_GRANULOMERE, np.clip(centre, 0.0, 1.0)), sdf_coverage(sdf))
