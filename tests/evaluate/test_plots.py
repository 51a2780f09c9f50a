"""The report's pictures: colours where they belong, sizes that fit their content."""

import numpy as np
import pytest
from PIL import Image

from unihema.evaluate.plots import (
    FALSE_NEGATIVE_COLOUR,
    FALSE_POSITIVE_COLOUR,
    TRUE_POSITIVE_COLOUR,
    confusion_matrix_plot,
    pr_curve_plot,
    scatter_plot,
    segmentation_overlay,
)
from unihema.inference.plotting import class_colour


def test_overlay_colours_true_positives_false_positives_and_false_negatives():
    image = np.zeros((64, 64, 3), np.uint8)
    predicted = np.zeros((64, 64), bool)
    target = np.zeros((64, 64), bool)
    predicted[:32, :] = True
    target[:, :32] = True
    overlay = np.asarray(segmentation_overlay(image, predicted, target, alpha=1.0))
    scale = overlay.shape[0] // 64
    assert scale >= 1 and overlay.shape == (64 * scale, 64 * scale, 3)
    pixel = lambda y, x: tuple(int(v) for v in overlay[y * scale, x * scale])  # noqa: E731
    assert pixel(10, 10) == TRUE_POSITIVE_COLOUR
    assert pixel(10, 50) == FALSE_POSITIVE_COLOUR
    assert pixel(50, 10) == FALSE_NEGATIVE_COLOUR
    assert pixel(50, 50) == (0, 0, 0)  # true negative: the image itself
    with pytest.raises(ValueError, match="must have one shape"):
        segmentation_overlay(image, predicted[:10], target)


def test_pr_curve_and_scatter_draw_each_class_in_its_colour():
    curves = {
        "rbc": {"recall": np.linspace(0, 1, 101).tolist(), "precision": [1.0] * 101, "AP50": 1.0},
        "wbc": {"recall": np.linspace(0, 1, 101).tolist(), "precision": [0.5] * 101, "AP50": 0.5},
    }
    picture = np.asarray(pr_curve_plot(curves, "detection"))
    colours = {tuple(int(v) for v in p) for p in picture.reshape(-1, 3)}
    assert class_colour(0) in colours and class_colour(1) in colours
    points = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.2]])
    scatter = np.asarray(scatter_plot(points, ["a", "b", "a"], "t-SNE"))
    colours = {tuple(int(v) for v in p) for p in scatter.reshape(-1, 3)}
    assert class_colour(0) in colours and class_colour(1) in colours


def test_confusion_matrix_plot_grows_with_its_classes():
    small = confusion_matrix_plot([[2, 1], [0, 3]], ["neutrophil", "lymphocyte"], "2 classes")
    large = confusion_matrix_plot(np.eye(6, dtype=int) * 4, [f"class {i}" for i in range(6)], "6 classes")
    assert isinstance(small, Image.Image) and large.width > small.width and large.height > small.height
