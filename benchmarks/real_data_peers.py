"""The single-task models a user would pick instead of UniHema, trained from random weights for a fixed
budget of training time (data loading excluded, as ``timed_training.train_for`` counts it) and scored
with the package's metrics under the names the package's evaluator gives them, so that a table can put
a peer and UniHema in one column:

| task | peer | scores (``unihema.evaluate.evaluator`` names) |
|---|---|---|
| detection | torchvision Faster R-CNN MobileNetV3-FPN | ``mAP50``, ``mAP50_95``, ``AP50_per_class``, ``AP_per_class`` |
| segmentation | a plain U-Net (4 levels down, 4 up) | ``Dice``, ``IoU`` (per image, averaged over images) |
| classification | torchvision ResNet-18 | ``f1_weighted``, ``f1_macro``, ``accuracy`` |

Every function takes the package's :class:`~unihema.data.schema.Sample` lists of one task (``train`` to
learn from, ``test`` to score), batches them with :func:`unihema.data.loader.build_loader` (the package's
resizing and augmentation) and returns ``{"model", "steps", "train_seconds", "images", <scores>}``.
Faster R-CNN gets unnormalised images (torchvision normalises inside the model); the U-Net and ResNet-18
get the package's ImageNet normalisation. Scores are computed at the transformed input size, as
``unihema eval`` does: pass the sizes of the UniHema run being compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timed_training import train_for
from torch import nn
from torchvision.ops import box_convert

from unihema.data.loader import build_loader
from unihema.data.schema import Sample, Task
from unihema.data.transforms import TransformConfig
from unihema.data.vocab import DETECTION_CLASSES, detection_index
from unihema.evaluate import metrics
from unihema.evaluate.evaluator import EvalConfig
from unihema.evaluate.suite import labelled_cell_classes

DECIMALS = 4
NO_CLIPPING = float("inf")
"""``clip_grad_norm_`` bound that never clips: the U-Net and ResNet-18 recipes do not clip gradients."""


class TrainingClock:
    """Training seconds counted as ``train_for`` counts them: from the start of each step's loss to the end
    of its optimiser step (``train_for`` returns only the step count)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.seconds = 0.0
        self._started = 0.0
        optimizer.register_step_post_hook(self._stop)

    def _stop(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._started

    def timing(self, loss_of: Callable[[dict[str, Any], int], torch.Tensor]) -> Callable:
        """``loss_of`` starting the clock of each step."""

        def timed(batch: dict[str, Any], step: int) -> torch.Tensor:
            self._started = time.perf_counter()
            return loss_of(batch, step)

        return timed


def fit_with_adamw(
    model: nn.Module,
    train: Sequence[Sample],
    task: Task,
    transforms: TransformConfig,
    loss_of: Any,
    minutes: float,
    seed: int,
    batch: int,
) -> tuple[int, TrainingClock]:
    """Train ``model`` on ``loss_of(batch, step)`` with AdamW at 1e-3 (weight decay 1e-4, no clipping) for
    ``minutes`` of training time on ``train``'s ``task`` batches; returns the steps and the clock, the model
    left in eval mode."""
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    clock = TrainingClock(optimizer)
    loader = build_loader(train, task, batch_size=batch, train=True, transform_config=transforms, seed=seed)
    model.train()
    steps = train_for(minutes, loader, clock.timing(loss_of), optimizer, params, NO_CLIPPING)
    model.eval()
    return steps, clock


def require_batches(train: Sequence[Sample], batch: int) -> None:
    """Training loaders drop the last incomplete batch: fewer samples than one batch would train forever."""
    if len(train) < batch:
        raise ValueError(f"{len(train)} training samples, fewer than one batch of {batch}")


def result_row(model: str, steps: int, clock: TrainingClock, scores: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "steps": steps, "train_seconds": round(clock.seconds, 2), **scores}


# ------------------------------------------------------------------------------------------------------
# Detection


def score(
    predictions: list[metrics.DetectionPrediction], targets: list[metrics.DetectionTarget]
) -> dict[str, Any]:
    """COCO box AP of every kept detection, named as the evaluator's detection details."""
    result = metrics.detection_map(predictions, targets)

    def named(per_class: dict[int, float]) -> dict[str, float]:
        return {DETECTION_CLASSES[k]: round(v, DECIMALS) for k, v in per_class.items()}

    return {
        "mAP50": round(result["map50"], DECIMALS), "mAP50_95": round(result["map"], DECIMALS),
        "images": len(targets), "AP50_per_class": named(result["map50_per_class"]),
        "AP_per_class": named(result["map_per_class"]),
    }  # fmt: skip


def eval_batches(test: list[Sample], transforms: TransformConfig, batch: int) -> Any:
    """Detection evaluation batches, padded as the evaluator pads them."""
    return build_loader(
        test, Task.DETECTION, batch_size=batch, train=False, transform_config=transforms,
        pad_to_multiple=EvalConfig.pad_to_multiple,
    )  # fmt: skip


def targets_in_pixels(batch: dict[str, Any]) -> list[metrics.DetectionTarget]:
    """The batch's ground truth in xyxy pixels of the unpadded transformed images."""
    out = []
    for target in batch["targets"]:
        height, width = (float(v) for v in target["size"])
        scale = torch.tensor([width, height, width, height])
        boxes = box_convert(target["boxes"].float(), "cxcywh", "xyxy") * scale
        out.append(
            metrics.DetectionTarget(boxes.numpy(), target["labels"].numpy(), (int(height), int(width)))
        )
    return out


def detection_labels(class_names: Sequence[str], samples: Sequence[Sample]) -> dict[int, int]:
    """Package detection index -> Faster R-CNN label (1.., 0 is background) of ``class_names``; raises
    ``ValueError`` when a sample has a box of another class."""
    indices = list(dict.fromkeys(detection_index(name) for name in class_names))
    labels = {index: label for label, index in enumerate(indices, start=1)}
    for sample in samples:
        unknown = {int(v) for v in sample.box_labels} - labels.keys()
        if unknown:
            names = sorted(DETECTION_CLASSES[v] for v in unknown)
            raise ValueError(
                f"sample {sample.dataset}/{sample.sample_id} has boxes of {names}, not in {list(class_names)}"
            )
    return labels


def train_faster_rcnn(
    train: list[Sample],
    test: list[Sample],
    class_names: Sequence[str],
    *,
    minutes: float,
    seed: int = 0,
    train_sizes: Sequence[int] = (320, 352, 384, 416),
    eval_size: int = 416,
    batch: int = 4,
    warmup_fraction: float | None = 0.1,
    max_detections: int = 100,
) -> dict[str, Any]:
    """torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` from random weights, SGD at 0.02 (torchvision's
    detection reference recipe) after a linear warm-up.

    The warm-up is 100 steps, ended early once ``warmup_fraction`` of the training budget has passed:
    Faster R-CNN takes several seconds a step on a CPU (179 steps in 15 minutes on BCCD), so 100 steps
    would spend half of such a budget warming up. ``None`` keeps the plain 100 steps (the recipe of
    ``bench_bccd.py``'s recorded numbers). ``max_detections`` is torchvision's per-image cap.
    """
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    torch.manual_seed(seed)
    require_batches(train, batch)
    labels = detection_labels(class_names, [*train, *test])
    back = {v: k for k, v in labels.items()}
    max_size = int(eval_size * 4 / 3)
    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=len(labels) + 1,
        min_size=eval_size,
        max_size=max_size,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    clock = TrainingClock(optimizer)
    transforms = TransformConfig(
        det_train_sizes=tuple(train_sizes), det_eval_size=eval_size, det_max_size=max_size,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),  # torchvision normalises inside the model
    )  # fmt: skip
    loader = build_loader(
        train, Task.DETECTION, batch_size=batch, train=True, transform_config=transforms, seed=seed
    )

    def to_torchvision(batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        images, targets = [], []
        for image, target in zip(batch["images"], batch["targets"]):
            height, width = (int(v) for v in target["size"])
            images.append(image[:, :height, :width])
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            boxes = box_convert(target["boxes"].float(), "cxcywh", "xyxy") * scale
            keep = (boxes[:, 2] > boxes[:, 0] + 1) & (boxes[:, 3] > boxes[:, 1] + 1)
            mapped = torch.tensor([labels[int(v)] for v in target["labels"]], dtype=torch.int64)
            targets.append({"boxes": boxes[keep], "labels": mapped[keep]})
        return images, targets

    warmup_steps = 100
    warmup_seconds = None if warmup_fraction is None else warmup_fraction * minutes * 60

    def loss_of(batch: dict[str, Any], step: int) -> torch.Tensor:
        progress = (step + 1) / warmup_steps
        if warmup_seconds is not None:
            progress = max(progress, clock.seconds / warmup_seconds) if warmup_seconds > 0 else 1.0
        for group in optimizer.param_groups:
            group["lr"] = 0.02 * min(1.0, progress)
        images, targets = to_torchvision(batch)
        return sum(model(images, targets).values())

    model.train()
    steps = train_for(minutes, loader, clock.timing(loss_of), optimizer, params, 10.0)
    model.eval()
    model.roi_heads.detections_per_img = max_detections
    predictions, targets = [], []
    with torch.no_grad():
        for test_batch in eval_batches(test, transforms, batch):
            images, _ = to_torchvision(test_batch)
            # Boxes come back in the pixels of the images given (the unpadded evaluation images), the
            # frame of ``targets_in_pixels`` and of UniHema's decoded boxes.
            for output in model(images):
                predictions.append(
                    metrics.DetectionPrediction(
                        output["boxes"].numpy(), output["scores"].numpy(),
                        np.array([back[int(v)] for v in output["labels"]], dtype=np.int64),
                    )
                )  # fmt: skip
            targets += targets_in_pixels(test_batch)
    return result_row("torchvision Faster R-CNN MobileNetV3-FPN", steps, clock, score(predictions, targets))


# ------------------------------------------------------------------------------------------------------
# Segmentation


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )  # fmt: skip


class UNet(nn.Module):
    """Ronneberger et al.'s U-Net at ``width`` base channels (the original has 64): 4 max-pool levels down
    to 1/16 of the input, 4 bilinear upsampling levels back, each joined to the encoder level of its size.
    Inputs must be a multiple of 16 pixels; returns (B, 1, H, W) foreground logits."""

    levels = 4

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        channels = [width * 2**level for level in range(self.levels + 1)]
        self.stem = conv_block(3, channels[0])
        self.down = nn.ModuleList(conv_block(channels[i], channels[i + 1]) for i in range(self.levels))
        self.up = nn.ModuleList(
            conv_block(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(self.levels))
        )
        self.head = nn.Conv2d(channels[0], 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(images)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        features = skips.pop()
        for block in self.up:
            skip = skips.pop()
            features = F.interpolate(features, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            features = block(torch.cat([features, skip], dim=1))
        return self.head(features)


def segmentation_targets(batch: dict[str, Any], shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's masks padded to ``shape`` (B, H, W) and the weight of each pixel (0 on the padding)."""
    masks = torch.zeros(shape)
    valid = torch.zeros(shape)
    for i, target in enumerate(batch["targets"]):
        height, width = target["mask"].shape[-2:]
        masks[i, :height, :width] = target["mask"]
        valid[i, :height, :width] = 1.0
    return masks, valid


def bce_dice_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice (per image, averaged), both on the unpadded pixels."""
    bce = F.binary_cross_entropy_with_logits(logits, masks, weight=valid, reduction="sum") / valid.sum()
    probabilities = torch.sigmoid(logits) * valid
    intersection = (probabilities * masks).sum((1, 2))
    total = probabilities.sum((1, 2)) + masks.sum((1, 2))
    dice = (2 * intersection + 1.0) / (total + 1.0)
    return bce + (1 - dice).mean()


def train_unet(
    train: list[Sample],
    test: list[Sample],
    *,
    minutes: float,
    seed: int = 0,
    size: int = 256,
    batch: int = 4,
    width: int = 32,
) -> dict[str, Any]:
    """A U-Net (:class:`UNet`) on the binary foreground mask, BCE + Dice loss, AdamW at 1e-3, the package's
    segmentation resizing to ``size`` and flips. Dice and IoU are the evaluator's: a pixel is foreground
    above probability ``EvalConfig.mask_threshold``, scored per image on the unpadded mask at ``size`` and
    averaged over images."""
    torch.manual_seed(seed)
    require_batches(train, batch)
    if size % 2**UNet.levels:
        raise ValueError(f"size {size}: the U-Net needs a multiple of {2**UNet.levels}")
    model = UNet(width)
    transforms = TransformConfig(seg_size=size)

    def loss_of(batch: dict[str, Any], step: int) -> torch.Tensor:
        logits = model(batch["images"])[:, 0]
        return bce_dice_loss(logits, *segmentation_targets(batch, logits.shape))

    steps, clock = fit_with_adamw(model, train, Task.SEGMENTATION, transforms, loss_of, minutes, seed, batch)
    threshold = EvalConfig.mask_threshold
    predicted, expected = [], []
    eval_loader = build_loader(
        test, Task.SEGMENTATION, batch_size=batch, train=False, transform_config=transforms,
        pad_to_multiple=2**UNet.levels,
    )  # fmt: skip
    with torch.no_grad():
        for test_batch in eval_loader:
            probabilities = torch.sigmoid(model(test_batch["images"])[:, 0])
            for probability, target in zip(probabilities, test_batch["targets"]):
                mask_height, mask_width = target["mask"].shape[-2:]
                predicted.append((probability[:mask_height, :mask_width] > threshold).numpy())
                expected.append(target["mask"].numpy() > 0.5)
    dice, iou = metrics.mask_overlaps(predicted, expected)
    scores = {"Dice": round(float(dice.mean()), DECIMALS), "IoU": round(float(iou.mean()), DECIMALS),
              "images": len(dice)}  # fmt: skip
    return result_row(f"U-Net (base {width} channels)", steps, clock, scores)


# ------------------------------------------------------------------------------------------------------
# Classification


def train_resnet18(
    train: list[Sample],
    test: list[Sample],
    *,
    minutes: float,
    seed: int = 0,
    size: int = 224,
    batch: int = 16,
) -> dict[str, Any]:
    """torchvision's ResNet-18 from random weights with one output per cell class of ``train``, AdamW at
    1e-3 (from scratch in a short budget Adam-type optimisers converge without the learning-rate schedule
    that SGD needs), the package's single-cell resizing to ``size`` (224, ResNet's native input) with its
    training flips and colour jitter. Predictions are mapped back to the package's cell-class indices and
    scored with the evaluator's classification scores (a test class absent from ``train`` is always wrong).
    """
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    require_batches(train, batch)
    classes = labelled_cell_classes(train)
    output_of = {cell_class: output for output, cell_class in enumerate(classes)}
    model = resnet18(weights=None, num_classes=len(classes))
    transforms = TransformConfig(cls_size=size)

    def loss_of(batch: dict[str, Any], step: int) -> torch.Tensor:
        outputs = torch.tensor([output_of[int(t["cell_class"])] for t in batch["targets"]])
        return F.cross_entropy(model(batch["images"]), outputs)

    steps, clock = fit_with_adamw(
        model, train, Task.CLASSIFICATION, transforms, loss_of, minutes, seed, batch
    )
    predicted, expected = [], []
    eval_loader = build_loader(
        test, Task.CLASSIFICATION, batch_size=batch, train=False, transform_config=transforms
    )
    with torch.no_grad():
        for test_batch in eval_loader:
            predicted += [classes[int(v)] for v in model(test_batch["images"]).argmax(-1)]
            expected += [int(t["cell_class"]) for t in test_batch["targets"]]
    scores = {k: round(v, DECIMALS) for k, v in metrics.classification_scores(predicted, expected).items()}
    return result_row("torchvision ResNet-18", steps, clock, {**scores, "images": len(expected)})
