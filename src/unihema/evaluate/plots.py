"""The evaluation report's pictures, drawn with PIL: precision-recall curves, confusion matrices, the
TP/FP/FN segmentation overlays of the paper's figure 4a and t-SNE scatter plots (figure 4c).

Class colours are those of :func:`unihema.inference.plotting.class_colour`, so a class looks the same here
as in the prediction overlays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unihema.inference.plotting import class_colour, display_scale

TRUE_POSITIVE_COLOUR: tuple[int, int, int] = (255, 243, 128)
"""Light yellow, as in the paper's figure 4a."""
FALSE_POSITIVE_COLOUR: tuple[int, int, int] = (30, 110, 255)
"""Blue: predicted foreground that is background."""
FALSE_NEGATIVE_COLOUR: tuple[int, int, int] = (230, 25, 35)
"""Red: foreground the prediction missed."""
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
GRID = (225, 225, 225)
PLOT_SIZE = (720, 540)
MARGIN = {"left": 70, "right": 190, "top": 40, "bottom": 60}


def _font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _text_width(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def _legend(
    draw: ImageDraw.ImageDraw, entries: Sequence[tuple[str, tuple[int, int, int]]], x: int, y: int
) -> None:
    font = _font(12)
    for row, (label, colour) in enumerate(entries):
        top = y + 18 * row
        draw.rectangle([x, top + 3, x + 12, top + 15], fill=colour)
        draw.text((x + 18, top + 2), label, fill=INK, font=font)


def _rotated_text(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    """``text`` written bottom to top (a vertical axis or column label)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label = Image.new("RGB", (_text_width(probe, text, font) + 4, 18), BACKGROUND)
    ImageDraw.Draw(label).text((2, 0), text, fill=INK, font=font)
    return label.rotate(90, expand=True)


class _Axes:
    """A unit-square plot area inside a canvas: data coordinates in [0, 1] to pixels, with a grid."""

    def __init__(self, title: str, x_label: str, y_label: str, size: tuple[int, int] = PLOT_SIZE) -> None:
        self.image = Image.new("RGB", size, BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.left, self.top = MARGIN["left"], MARGIN["top"]
        self.right, self.bottom = size[0] - MARGIN["right"], size[1] - MARGIN["bottom"]
        font = _font(12)
        for tick in np.linspace(0.0, 1.0, 5):
            x, y = self.point(tick, tick)
            self.draw.line([x, self.top, x, self.bottom], fill=GRID)
            self.draw.line([self.left, y, self.right, y], fill=GRID)
            self.draw.text((x - 10, self.bottom + 6), f"{tick:.2f}", fill=INK, font=font)
            self.draw.text((self.left - 40, y - 7), f"{tick:.2f}", fill=INK, font=font)
        self.draw.rectangle([self.left, self.top, self.right, self.bottom], outline=INK)
        title_font = _font(16)
        self.draw.text(
            ((self.left + self.right - _text_width(self.draw, title, title_font)) / 2, 10), title, fill=INK,
            font=title_font,
        )  # fmt: skip
        label_font = _font(14)
        self.draw.text(
            ((self.left + self.right - _text_width(self.draw, x_label, label_font)) / 2, self.bottom + 28),
            x_label, fill=INK, font=label_font,
        )  # fmt: skip
        rotated = _rotated_text(y_label, label_font)
        self.image.paste(rotated, (6, (self.top + self.bottom - rotated.height) // 2))

    def point(self, x: float, y: float) -> tuple[float, float]:
        return (
            self.left + float(x) * (self.right - self.left),
            self.bottom - float(y) * (self.bottom - self.top),
        )


def pr_curve_plot(curves: Mapping[str, Mapping[str, Sequence[float]]], title: str) -> Image.Image:
    """Precision against recall, one line per class.

    Args:
        curves: class name -> ``{"recall": [...], "precision": [...], "AP50": float}`` (COCO's 101
            interpolated points at IoU 0.5, as :func:`unihema.evaluate.metrics.detection_map` gives them).
        title: the plot's title.
    """
    axes = _Axes(title, "recall", "precision")
    entries = []
    for index, (name, curve) in enumerate(curves.items()):
        colour = class_colour(index)
        points = [axes.point(r, p) for r, p in zip(curve["recall"], curve["precision"])]
        if len(points) > 1:
            axes.draw.line(points, fill=colour, width=2)
        entries.append((f"{name} (AP50 {float(curve.get('AP50', 0.0)):.3f})", colour))
    _legend(axes.draw, entries, axes.right + 12, axes.top)
    return axes.image


def scatter_plot(points: np.ndarray, labels: Sequence[str], title: str) -> Image.Image:
    """2-D points (a t-SNE embedding) coloured by label, scaled to fill the plot, with a legend."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    axes = _Axes(title, "t-SNE 1", "t-SNE 2")
    names = sorted(set(labels))
    colours = {name: class_colour(i) for i, name in enumerate(names)}
    if len(points):
        low, high = points.min(axis=0), points.max(axis=0)
        unit = (points - low) / np.where(high > low, high - low, 1.0)
        unit = 0.03 + 0.94 * unit  # keep the dots off the frame
        for (x, y), label in zip(unit, labels):
            cx, cy = axes.point(x, y)
            axes.draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colours[label])
    _legend(axes.draw, [(name, colours[name]) for name in names], axes.right + 12, axes.top)
    return axes.image


def confusion_matrix_plot(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> Image.Image:
    """Counts in a grid (rows: true class, columns: predicted class), shaded by the row's share."""
    matrix = np.asarray(matrix, dtype=np.int64).reshape(len(labels), len(labels))
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max((_text_width(probe, name, font) for name in labels), default=0) + 12
    cell = max(28, 10 + 8 * len(str(int(matrix.max(initial=0)))))
    left, top = label_width + 30, label_width + 50
    size = (left + cell * len(labels) + 20, top + cell * len(labels) + 40)
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill=INK, font=_font(16))
    draw.text((left, top - label_width - 18), "predicted", fill=INK, font=font)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.where(totals > 0, matrix / np.maximum(totals, 1), 0.0)
    for row, name in enumerate(labels):
        y = top + row * cell
        draw.text((left - _text_width(draw, name, font) - 6, y + cell / 2 - 7), name, fill=INK, font=font)
        column_label = _rotated_text(name, font)
        image.paste(
            column_label,
            (left + row * cell + (cell - column_label.width) // 2, top - column_label.height - 4),
        )
        for column in range(len(labels)):
            x = left + column * cell
            shade = int(round(255 - 200 * shares[row, column]))
            draw.rectangle([x, y, x + cell, y + cell], fill=(shade, shade, 255), outline=GRID)
            text = str(int(matrix[row, column]))
            colour = BACKGROUND if shares[row, column] > 0.6 else INK
            draw.text(
                (x + (cell - _text_width(draw, text, font)) / 2, y + cell / 2 - 7),
                text,
                fill=colour,
                font=font,
            )
    draw.text((10, top + cell * len(labels) + 12), "rows: true class", fill=INK, font=font)
    return image


def segmentation_overlay(
    image: np.ndarray | Image.Image, predicted: np.ndarray, target: np.ndarray, alpha: float = 0.55
) -> Image.Image:
    """True positives (light yellow), false positives (blue) and false negatives (red) blended over the
    image, upscaled like the prediction overlays when small
    (:func:`unihema.inference.plotting.display_scale`)."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    predicted, target = np.asarray(predicted, dtype=bool), np.asarray(target, dtype=bool)
    if predicted.shape != target.shape or predicted.shape != (picture.height, picture.width):
        raise ValueError(
            f"overlay: image {(picture.height, picture.width)}, predicted {predicted.shape} and target "
            f"{target.shape} must have one shape"
        )
    scale = display_scale(picture)
    base = np.asarray(picture.convert("RGB"), dtype=np.float32).repeat(scale, 0).repeat(scale, 1)
    blended = base.copy()
    for mask, colour in (
        (predicted & target, TRUE_POSITIVE_COLOUR),
        (predicted & ~target, FALSE_POSITIVE_COLOUR),
        (~predicted & target, FALSE_NEGATIVE_COLOUR),
    ):
        mask = mask.repeat(scale, 0).repeat(scale, 1)
        blended[mask] = (1 - alpha) * base[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


__all__ = [
    "FALSE_NEGATIVE_COLOUR",
    "FALSE_POSITIVE_COLOUR",
    "TRUE_POSITIVE_COLOUR",
    "confusion_matrix_plot",
    "pr_curve_plot",
    "scatter_plot",
    "segmentation_overlay",
]
