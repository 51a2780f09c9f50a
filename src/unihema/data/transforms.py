"""``torchvision.transforms.v2`` pipelines per task, for training and evaluation.

Every pipeline takes and returns a dict::

    {"image": tv_tensors.Image (3, H, W) uint8,            # always
     "boxes": tv_tensors.BoundingBoxes (N, 4) XYXY,        # detection / fov_morphology
     "labels": Tensor (N,), "attributes": Tensor (N, A),  # filtered together with the boxes
     "mask": tv_tensors.Mask (H, W),                       # segmentation
     "points": tv_tensors.KeyPoints (P, 2)}                # optional, any task

and returns the image as a float tensor, ImageNet-normalised. Geometric transforms move boxes, masks
and points with the image (v2 dispatches on the tv_tensor types; masks are always resampled with
nearest-neighbour). Boxes that a transform pushes out of the image or shrinks below
``TransformConfig.min_box_size`` are removed together with their labels and attributes.

Sizes follow the paper: detection uses DETR-style multi-scale training (shorter side drawn from
``det_train_sizes``, longer side capped at ``det_max_size``) and a fixed shorter side at evaluation;
segmentation and single-cell tasks are resized to a fixed square (512), text tasks to 256.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torchvision.transforms import v2

from unihema.data.schema import Task
from unihema.validation import require

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DETR_TRAIN_SIZES: tuple[int, ...] = tuple(range(480, 801, 32))  # 480, 512, ..., 800
DETR_EVAL_SIZE = 800
DETR_MAX_SIZE = 1333

Pipeline = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class TransformConfig:
    """Augmentation and resizing settings for every task.

    Attributes:
        det_train_sizes: shorter-side lengths drawn uniformly at random for each training detection
            image (scale jitter).
        det_eval_size: shorter-side length of evaluation detection images.
        det_max_size: cap on the longer side of detection images (train and eval); the shorter side is
            reduced to respect it, keeping the aspect ratio.
        seg_size: square side of segmentation inputs (train and eval).
        cls_size: square side of single-cell classification and cell-morphology inputs.
        text_size: square side of VQA / masked-sentence inputs.
        hflip_prob: probability of a horizontal flip in training (smears have no orientation).
        vflip_prob: probability of a vertical flip in training.
        brightness, contrast, saturation: colour-jitter strengths (factor drawn in ``[1-s, 1+s]``;
            0 disables); applied in training to detection, single-cell and text tasks.
        hue: hue-jitter strength in ``[0, 0.5]`` (fraction of the colour wheel).
        seg_color_jitter: also apply the colour jitter to segmentation training images.
        min_box_size: boxes narrower or shorter than this (pixels, after the transforms) are dropped.
        mean, std: per-channel normalisation (ImageNet by default, matching the pretrained backbone).
    """

    det_train_sizes: tuple[int, ...] = DETR_TRAIN_SIZES
    det_eval_size: int = DETR_EVAL_SIZE
    det_max_size: int = DETR_MAX_SIZE
    seg_size: int = 512
    cls_size: int = 512
    text_size: int = 256
    hflip_prob: float = 0.5
    vflip_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    seg_color_jitter: bool = False
    min_box_size: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "det_train_sizes", tuple(int(s) for s in self.det_train_sizes))
        sizes = self.det_train_sizes
        require(
            bool(sizes) and all(s > 0 for s in sizes),
            "TransformConfig.det_train_sizes",
            "must be positive sizes",
            sizes,
        )
        for name in ("det_eval_size", "det_max_size", "seg_size", "cls_size", "text_size"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and value > 0,
                f"TransformConfig.{name}",
                "must be a positive int",
                value,
            )
        require(
            self.det_max_size >= max(self.det_eval_size, *sizes),
            "TransformConfig.det_max_size",
            f"must be >= every detection shorter side (det_eval_size={self.det_eval_size}, "
            f"det_train_sizes up to {max(sizes)})",
            self.det_max_size,
        )
        for name in ("hflip_prob", "vflip_prob"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"TransformConfig.{name}", "must be a probability in [0, 1]", value)
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"TransformConfig.{name}", "must be in [0, 1)", value)
        require(0.0 <= self.hue <= 0.5, "TransformConfig.hue", "must be in [0, 0.5]", self.hue)
        require(self.min_box_size >= 0, "TransformConfig.min_box_size", "must be >= 0", self.min_box_size)
        for name in ("mean", "std"):
            value = getattr(self, name)
            require(len(value) == 3, f"TransformConfig.{name}", "needs 3 channel values", value)
        require(all(s > 0 for s in self.std), "TransformConfig.std", "must be positive", self.std)

    def without_augmentation(self) -> TransformConfig:
        """The same sizes with no random flip or colour jitter (detection keeps its scale jitter), so a
        text or single-cell input is the same tensor each time it is drawn."""
        return replace(
            self, hflip_prob=0.0, vflip_prob=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0
        )

    def input_size(self, task: Task) -> int | None:
        """Fixed square side of ``task``'s inputs, or None for detection (variable size)."""
        task = Task(task)
        if task.has_boxes:
            return None
        if task is Task.SEGMENTATION:
            return self.seg_size
        if task.is_text:
            return self.text_size
        return self.cls_size


def _box_companions(inputs: Any) -> tuple[torch.Tensor, ...]:
    """Per-box tensors that SanitizeBoundingBoxes must filter together with the boxes."""
    sample = inputs[0] if isinstance(inputs, tuple) else inputs
    return tuple(sample[key] for key in ("labels", "attributes") if key in sample)


def _flips(config: TransformConfig) -> list[v2.Transform]:
    out: list[v2.Transform] = []
    if config.hflip_prob > 0:
        out.append(v2.RandomHorizontalFlip(config.hflip_prob))
    if config.vflip_prob > 0:
        out.append(v2.RandomVerticalFlip(config.vflip_prob))
    return out


def _color_jitter(config: TransformConfig) -> list[v2.Transform]:
    if not any((config.brightness, config.contrast, config.saturation, config.hue)):
        return []
    return [
        v2.ColorJitter(
            brightness=config.brightness or None,
            contrast=config.contrast or None,
            saturation=config.saturation or None,
            hue=config.hue or None,
        )
    ]


def _normalise(config: TransformConfig) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(config.mean), std=list(config.std))]


def _detection_eval_resize(config: TransformConfig) -> v2.Transform:
    if config.det_max_size == config.det_eval_size:
        # The cap then always wins (the longer side is never shorter); torchvision's Resize rejects a
        # cap equal to the shorter-side size, so resize the longer side to it directly.
        return v2.Resize(None, max_size=config.det_max_size)
    return v2.Resize(config.det_eval_size, max_size=config.det_max_size)


def build_transforms(task: Task | str, train: bool, config: TransformConfig | None = None) -> v2.Compose:
    """The pipeline for ``task`` (training augmentation when ``train``, deterministic resizing otherwise)."""
    task = Task(task)
    config = config or TransformConfig()
    flips = _flips(config) if train else []
    steps: list[v2.Transform] = []
    if task.has_boxes:
        if train:
            steps.append(v2.RandomShortestSize(list(config.det_train_sizes), max_size=config.det_max_size))
        else:
            steps.append(_detection_eval_resize(config))
        steps += flips
        if train:
            steps += _color_jitter(config)
        steps += [
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(
                min_size=config.min_box_size,
                min_area=config.min_box_size**2,
                labels_getter=_box_companions,
            ),
        ]
    else:
        size = config.input_size(task)
        assert size is not None
        steps.append(v2.Resize((size, size)))
        steps += flips
        if train and (task is not Task.SEGMENTATION or config.seg_color_jitter):
            steps += _color_jitter(config)
    steps += _normalise(config)
    return v2.Compose(steps)
