"""Overlay pictures of predictions: boxes with class names and scores, masks blended over the image.

Each detection class has one colour (:func:`class_colour`), used by the overlays, the web page and the
GeoJSON export, so a class looks the same in every tool. Small images are drawn on an upscaled copy
(:func:`display_scale`) so that boxes and captions stay legible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from unihema.data.vocab import DETECTION_CLASSES

OVERLAY_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (0, 0, 128),
)
MASK_COLOUR: tuple[int, int, int] = (0, 200, 255)


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of detection class index ``label``."""
    return OVERLAY_COLOURS[int(label) % len(OVERLAY_COLOURS)]


def class_name(label: int) -> str:
    """The name of detection class index ``label`` (its number when outside the vocabulary)."""
    return DETECTION_CLASSES[int(label)] if 0 <= int(label) < len(DETECTION_CLASSES) else str(int(label))


MIN_OVERLAY_SIDE = 512
"""Overlays of smaller images are drawn on an upscaled copy so that boxes and captions stay legible."""


def display_scale(image: Image.Image, min_side: int = MIN_OVERLAY_SIDE) -> int:
    """Integer upscaling factor that brings the shorter side of ``image`` to at least ``min_side``."""
    return max(1, -(-min_side // max(1, min(image.size))))


def draw_detections(
    image: Image.Image,
    boxes: np.ndarray,
    labels: Sequence[int],
    scores: Sequence[float] | None = None,
    min_side: int = MIN_OVERLAY_SIDE,
) -> Image.Image:
    """Boxes (xyxy pixels of ``image``) with class names (and scores) drawn on a copy of ``image``,
    upscaled by :func:`display_scale` (nearest neighbour, so pixels stay visible) when it is small."""
    scale = display_scale(image, min_side)
    canvas = image.convert("RGB")
    canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for index, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4) * scale, labels)):
        colour = class_colour(label)
        draw.rectangle([float(v) for v in box], outline=colour, width=2)
        caption = class_name(label)
        if scores is not None:
            caption += f" {float(scores[index]):.2f}"
        draw.text((float(box[0]) + 2, float(box[1]) + 1), caption, fill=colour)
    return canvas


def draw_mask(
    image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] = MASK_COLOUR, alpha: float = 0.45
) -> Image.Image:
    """``mask`` (H, W) bool blended over a copy of ``image`` (upscaled like :func:`draw_detections`)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask shape {mask.shape} does not match image {(image.height, image.width)}")
    scale = display_scale(image)
    base = np.asarray(image.convert("RGB"), dtype=np.float32).repeat(scale, 0).repeat(scale, 1)
    mask = mask.repeat(scale, 0).repeat(scale, 1)
    blended = base.copy()
    blended[mask] = (1 - alpha) * base[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))
