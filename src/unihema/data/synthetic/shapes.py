"""Shape primitives every cell is drawn from: pixel grids on small local patches, signed distance
functions (negative inside) of discs, ellipses, wobbly discs, capsules and arcs, their anti-aliased
coverage, smooth texture noise, random round blobs (granules, vacuoles, nucleoli) and colour blending.
All are vectorised numpy/scipy over float32 arrays."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def grid(half: int, dx: float = 0.0, dy: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a ``(2*half+1)`` square patch relative to a sub-pixel centre."""
    coords = np.arange(-half, half + 1, dtype=np.float32)
    return coords[None, :] - np.float32(dx), coords[:, None] - np.float32(dy)


def rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return c * x + s * y, -s * x + c * y


def sdf_disc(x: np.ndarray, y: np.ndarray, r: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    return np.hypot(x - cx, y - cy) - np.float32(r)


def sdf_ellipse(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    # First-order distance to an ellipse: accurate to a fraction of a pixel near the boundary.
    k0 = np.hypot(x / a, y / b)
    k1 = np.hypot(x / (a * a), y / (b * b))
    return np.where(k1 > 1e-6, k0 * (k0 - 1.0) / np.maximum(k1, 1e-6), -min(a, b)).astype(np.float32)


def sdf_wobbly_disc(
    x: np.ndarray, y: np.ndarray, r: float, amplitude: float, rng: np.random.Generator
) -> np.ndarray:
    """A disc whose radius varies with angle by a few low harmonics (irregular outlines)."""
    rho = np.hypot(x, y)
    theta = np.arctan2(y, x)
    radius = np.ones_like(rho)
    for k in (2, 3, 4, 5):
        radius += np.float32(amplitude * rng.uniform(0.3, 1.0) / (k - 1)) * np.cos(
            k * theta + rng.uniform(0, 2 * np.pi)
        )
    return rho - np.float32(r) * radius


def sdf_capsule(
    x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], w: float
) -> np.ndarray:
    ax, ay = p0
    bx, by = p1
    vx, vy = bx - ax, by - ay
    t = np.clip(((x - ax) * vx + (y - ay) * vy) / max(vx * vx + vy * vy, 1e-6), 0.0, 1.0)
    return np.hypot(x - ax - t * vx, y - ay - t * vy) - np.float32(w)


def sdf_arc(x: np.ndarray, y: np.ndarray, rc: float, half_angle: float, w: float) -> np.ndarray:
    """A thick circular arc (a C / horseshoe) centred on +x, with round ends."""
    rho = np.hypot(x, y)
    phi = np.abs(np.arctan2(y, x))
    along = np.abs(rho - rc) - w
    ex, ey = rc * math.cos(half_angle), rc * math.sin(half_angle)
    ends = np.hypot(x - ex, np.abs(y) - ey) - w
    return np.where(phi <= half_angle, along, ends).astype(np.float32)


def sdf_coverage(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance in pixels."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise (white noise blurred by ``sigma`` pixels)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    if sigma > 0:
        noise = ndimage.gaussian_filter(noise, sigma, mode="nearest")
    return noise / max(float(noise.std()), 1e-6)


def splat(
    rng: np.random.Generator, where: np.ndarray, count: int, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Round blobs of ``radius`` px at ``count`` random pixels where ``where`` is True.

    Returns the blob coverage in [0, 1] and the chosen ``(row, col)`` centres.
    """
    rows, cols = np.nonzero(where)
    coverage = np.zeros(where.shape, np.float32)
    if count <= 0 or len(rows) == 0:
        return coverage, np.zeros((0, 2), np.int64)
    pick = rng.integers(0, len(rows), size=count)
    np.add.at(coverage, (rows[pick], cols[pick]), 1.0)
    sigma = max(radius / 1.6, 0.35)
    # A single impulse blurred by sigma peaks at 1/(2 pi sigma^2): rescale so one granule saturates.
    coverage = ndimage.gaussian_filter(coverage, sigma) * np.float32(2.4 * math.pi * sigma * sigma)
    return np.clip(coverage, 0.0, 1.0), np.stack([rows[pick], cols[pick]], axis=1)


def lerp(base: np.ndarray, colour: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    """``base`` (h, w, 3) blended towards ``colour`` by ``alpha`` (h, w)."""
    a = alpha[..., None]
    return base * (1.0 - a) + colour * a
