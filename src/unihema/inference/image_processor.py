"""Turn user images into model inputs, and model coordinates back into the user's pixels.

:class:`ImageProcessor` accepts a path, a :class:`PIL.Image.Image` or a numpy array (grey ``(H, W)``,
``(H, W, 1)``, RGB ``(H, W, 3)`` or RGBA ``(H, W, 4)``; ``uint8``, ``uint16`` or floats in ``[0, 1]``),
converts it to 8-bit RGB, resizes and normalises it with the evaluation pipeline of the task
(:func:`unihema.data.transforms.build_transforms`, the sizes the model was trained with, read from its
``preprocessor_config.json``) and pads a batch to the model's multiple. Boxes normalised to the unpadded
input map to original pixels by the original size alone; :meth:`ImageProcessor.boxes_to_original` maps
pixel boxes of the resized input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from unihema.data.loader import pad_images
from unihema.data.schema import IMAGE_ERRORS, Task, printable_name
from unihema.data.transforms import build_transforms
from unihema.inference.preprocessor import PreprocessorConfig

ImageInput = str | os.PathLike | Image.Image | np.ndarray
"""What :class:`ImageProcessor` and the predictor accept as one image."""


_BOX_STEPS = (v2.ClampBoundingBoxes, v2.SanitizeBoundingBoxes)


class ImageInputError(ValueError):
    """An input that is not a readable image; the message names the file or the array's problem."""


@dataclass
class LoadedImage:
    """One user image as 8-bit RGB.

    Attributes:
        pixels: (H, W, 3) uint8 RGB.
        source: the file path, or ``"<array>"`` / ``"<PIL image>"`` for in-memory inputs.
    """

    pixels: np.ndarray
    source: str

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


@dataclass
class ProcessedImages:
    """A padded batch ready for the model.

    Attributes:
        pixel_values: (B, 3, H, W) float, normalised, zero-padded at the bottom/right.
        image_mask: (B, H, W) bool, True on the padding.
        input_sizes: per image, (height, width) of the resized, unpadded input.
        original_sizes: per image, (height, width) of the original image.
    """

    pixel_values: Tensor
    image_mask: Tensor
    input_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    def to(self, device: torch.device | str) -> ProcessedImages:
        return ProcessedImages(
            self.pixel_values.to(device), self.image_mask.to(device), self.input_sizes, self.original_sizes
        )


def _array_to_rgb(array: np.ndarray, source: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageInputError(
            f"{source}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got {array.shape}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageInputError(f"{source}: empty image {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return (array // 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) or array.dtype == bool:
        values = array.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ImageInputError(f"{source}: float images must hold finite values in [0, 1]")
        return (values * 255 + 0.5).astype(np.uint8)
    raise ImageInputError(f"{source}: unsupported pixel type {array.dtype} (use uint8, uint16 or float)")


def load_image(image: ImageInput) -> LoadedImage:
    """Read ``image`` as 8-bit RGB; raises :class:`ImageInputError` naming the file on failure."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        name = printable_name(path)  # a file name that is not UTF-8 is shown with escapes
        if not path.is_file():
            raise ImageInputError(f"{name}: no such image file")
        try:
            with Image.open(path) as opened:
                opened.load()
                pil = opened
        except IMAGE_ERRORS as error:
            raise ImageInputError(f"{name}: not a readable image ({error})") from None
        return LoadedImage(_pil_to_rgb(pil, name), name)
    if isinstance(image, Image.Image):
        return LoadedImage(_pil_to_rgb(image, "<PIL image>"), "<PIL image>")
    if isinstance(image, np.ndarray):
        return LoadedImage(_array_to_rgb(image, "<array>"), "<array>")
    raise ImageInputError(f"expected a path, a PIL image or a numpy array, got {type(image).__name__}")


def _pil_to_rgb(image: Image.Image, source: str) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _array_to_rgb(np.asarray(image).astype(np.uint16), source)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


class ImageProcessor:
    """Pre-processing of a model's inputs, as it was trained (its :class:`PreprocessorConfig`).

    Args:
        config: the model's pre-processing; ``None`` uses the library defaults.

    Example::

        processor = ImageProcessor.from_pretrained("runs/demo/model")
        batch = processor([Image.open("field.png")], "detection")
        outputs = model(batch.pixel_values, "detection", prompts, image_mask=batch.image_mask)
    """

    def __init__(self, config: PreprocessorConfig | None = None) -> None:
        self.config = config or PreprocessorConfig()
        self._pipelines: dict[Task, Any] = {}

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> ImageProcessor:
        return cls(PreprocessorConfig.load(directory))

    def pipeline(self, task: Task | str) -> Any:
        task = Task(task)
        if task not in self._pipelines:
            evaluation = build_transforms(task, train=False, config=self.config.transforms)
            # The evaluation pipeline without its box clean-up steps: an image to analyse has no boxes.
            steps = [t for t in evaluation.transforms if not isinstance(t, _BOX_STEPS)]
            self._pipelines[task] = v2.Compose(steps)
        return self._pipelines[task]

    def input_size(self, task: Task | str, original_size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) an image of ``original_size`` is resized to for ``task``."""
        task = Task(task)
        square = self.config.transforms.input_size(task)
        if square is not None:
            return square, square
        probe = torch.zeros(1, *original_size, dtype=torch.uint8)
        resize = self.pipeline(task).transforms[0]
        return tuple(int(v) for v in resize(tv_tensors.Image(probe)).shape[-2:])

    def __call__(self, images: Sequence[ImageInput | LoadedImage], task: Task | str) -> ProcessedImages:
        """Resize, normalise and pad ``images`` for ``task``."""
        pipeline = self.pipeline(task)
        tensors, originals = [], []
        for image in images:
            loaded = image if isinstance(image, LoadedImage) else load_image(image)
            chw = (
                torch.tensor(loaded.pixels).permute(2, 0, 1).contiguous()
            )  # a copy: PIL arrays are read-only
            tensors.append(pipeline({"image": tv_tensors.Image(chw)})["image"].as_subclass(Tensor))
            originals.append(loaded.size)
        if not tensors:
            raise ImageInputError("no images to process")
        pixel_values, image_mask = pad_images(tensors, self.config.pad_to_multiple)
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        return ProcessedImages(pixel_values, image_mask, sizes, originals)

    @staticmethod
    def boxes_to_original(
        boxes: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Tensor:
        """``xyxy`` boxes in pixels of the resized input -> pixels of the original image."""
        (input_h, input_w), (original_h, original_w) = input_size, original_size
        scale = boxes.new_tensor([original_w / input_w, original_h / input_h] * 2)
        return boxes * scale
