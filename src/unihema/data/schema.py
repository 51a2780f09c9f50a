"""The one sample contract shared by every reader, the sampler, the model and the evaluation.

Every dataset reader (``unihema.data.formats``) and the synthetic generator produce :class:`Sample`
records. Images and masks are *lazy*: a sample holds a reference (:class:`ImageRef`, :class:`MaskRef`)
that is only decoded when ``load()`` is called, so a corpus of hundreds of thousands of images can be
indexed without holding pixels in memory.

Conventions
-----------
- boxes are ``float32`` arrays of shape ``(N, 4)`` in **xyxy pixel** coordinates of the (possibly cropped)
  image the sample refers to;
- box labels are indices into :data:`unihema.data.vocab.DETECTION_CLASSES`;
- per-box attributes are ``int64`` arrays of shape ``(N, len(FOV_ATTRIBUTES))`` holding a value index or
  :data:`UNKNOWN` (-1) where the attribute was not annotated;
- masks are boolean ``(H, W)`` arrays, True = foreground;
- ``cell_class`` is an index into :data:`unihema.data.vocab.CELL_CLASSES`;
- ``cell_attributes`` is an ``int64`` array of shape ``(len(CELL_ATTRIBUTES),)`` with :data:`UNKNOWN` for
  unannotated attributes.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from unihema.data.vocab import CELL_ATTRIBUTES, FOV_ATTRIBUTES

UNKNOWN = -1
"""Value of an attribute (or any optional integer label) that the source did not annotate."""


SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The split names of every corpus, in order."""
SYNTHETIC_DATASET = "synthetic"
"""Dataset name of the built-in generated corpus."""


class Task(str, enum.Enum):
    """The seven supervised tasks. The value is the string used in manifests, configs and the CLI."""

    DETECTION = "detection"
    FOV_MORPHOLOGY = "fov_morphology"
    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"
    CELL_MORPHOLOGY = "cell_morphology"
    VQA = "vqa"
    MLM = "mlm"

    @property
    def is_text(self) -> bool:
        return self in (Task.VQA, Task.MLM)

    @property
    def has_boxes(self) -> bool:
        return self in (Task.DETECTION, Task.FOV_MORPHOLOGY)

    @property
    def is_single_cell(self) -> bool:
        """Classification and cell morphology: one cropped cell per input, read through SCFE."""
        return self in (Task.CLASSIFICATION, Task.CELL_MORPHOLOGY)


class ImageRef(Protocol):
    """Anything that can produce an RGB PIL image on demand."""

    def load(self) -> Image.Image: ...


@dataclass(frozen=True)
class FileImage:
    """An image file on disk, optionally cropped to ``crop`` (xyxy pixels, clipped to the image).

    Palette, grey-level, RGBA and 16-bit images are all converted to 8-bit RGB.
    """

    path: Path
    crop: tuple[int, int, int, int] | None = None

    def load(self) -> Image.Image:
        """The RGB pixels; :class:`UnreadableImageError` naming the file when it cannot be decoded."""
        rgb = read_image(self.path, to_rgb)
        if self.crop is not None:
            rgb = rgb.crop(_clip_crop(self.crop, rgb.size))
        return rgb


@dataclass(frozen=True)
class ArrayImage:
    """An in-memory ``uint8`` RGB array of shape (H, W, 3) (used by the synthetic generator)."""

    array: np.ndarray

    def load(self) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.array, dtype=np.uint8), mode="RGB")


class MaskRef(Protocol):
    """Anything that can produce a boolean (H, W) mask on demand."""

    def load(self) -> np.ndarray: ...


@dataclass(frozen=True)
class FileMask:
    """A mask file whose pixel values are mapped to foreground.

    ``foreground`` lists the grey values that count as foreground (after conversion to one channel:
    for RGBA files the alpha-aware luminance, see :func:`mask_to_grey`). When ``threshold`` is given,
    values ``>= threshold`` are foreground instead (useful for JPEG-compressed or off-value masks).

    A lossless mask read through a ``threshold`` above 1 whose values are all small class indices
    (``0 < max <= LABEL_MAP_MAX_VALUE``, e.g. a 0/1/2 label map) would read as empty: it is read as a label
    map instead, every nonzero label foreground (see :func:`is_label_map`).
    """

    path: Path
    foreground: tuple[int, ...] = (255,)
    threshold: int | None = None
    crop: tuple[int, int, int, int] | None = None

    def load(self) -> np.ndarray:
        """The boolean mask; :class:`UnreadableImageError` naming the file when it cannot be decoded."""
        return self.select(read_image(self.path, mask_to_grey))

    def select(self, grey: np.ndarray) -> np.ndarray:
        """Foreground of the whole file's grey values ``grey`` (cropped to ``crop``)."""
        label_map = self.reads_as_label_map(grey)
        if self.crop is not None:
            x0, y0, x1, y1 = _clip_crop(self.crop, (grey.shape[1], grey.shape[0]))
            grey = grey[y0:y1, x0:x1]
        if label_map:
            return grey > 0
        if self.threshold is not None:
            return grey >= self.threshold
        return np.isin(grey, np.asarray(self.foreground, dtype=grey.dtype))

    def reads_as_label_map(self, grey: np.ndarray) -> bool:
        """Whether the grey values ``grey`` of this file are read as a label map (see the class docstring)."""
        return (
            self.threshold is not None
            and self.threshold > 1
            and Path(self.path).suffix.lower() not in LOSSY_MASK_EXTENSIONS
            and is_label_map(grey)
        )


@dataclass(frozen=True)
class ArrayMask:
    array: np.ndarray

    def load(self) -> np.ndarray:
        return np.asarray(self.array, dtype=bool)


class UnreadableImageError(ValueError):
    """An image or mask file that cannot be decoded; the message names the file and says why."""


IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
)
"""What PIL raises for a missing, empty, truncated, corrupt or oversized image file."""

LOSSY_MASK_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg")
"""Mask files whose values are noisy (lossy compression): never read as label maps."""
LABEL_MAP_MAX_VALUE = 31
"""Largest value of a label map (a mask holding class indices 0, 1, 2 ... instead of grey levels)."""


def encodes_as_utf8(text: str) -> bool:
    """Whether UTF-8 can encode ``text`` (a file name that is not UTF-8 holds lone surrogates: it cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(name: str | os.PathLike[str]) -> str:
    """``name`` as text UTF-8 can encode: the bytes of a file name that is not UTF-8 (which Python holds as
    lone surrogates) are shown as ``\\xe9`` escapes, so the name can be printed and written to files."""
    text = os.fspath(name)
    if encodes_as_utf8(text):
        return text
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name produced
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_label_map(grey: np.ndarray) -> bool:
    """Whether ``grey`` holds small class indices only (``0 < max <= LABEL_MAP_MAX_VALUE``)."""
    return grey.size > 0 and 0 < int(grey.max()) <= LABEL_MAP_MAX_VALUE


def image_error_reason(error: BaseException) -> str:
    """Why an image could not be read, in words (the reason of a skipped file)."""
    if isinstance(error, FileNotFoundError):
        return "image file not found"
    if isinstance(error, Image.DecompressionBombError):
        return f"image too large to decode safely, a possible decompression bomb ({error})"
    if isinstance(error, UnidentifiedImageError):
        return "unreadable image (cannot identify its format: an empty file, or not an image)"
    return f"unreadable image ({error})"


_Decoded = TypeVar("_Decoded")


def read_image(path: str | Path, convert: Callable[[Image.Image], _Decoded]) -> _Decoded:
    """Decode the image file ``path`` and return ``convert(image)``.

    Raises:
        UnreadableImageError: the file is missing, empty, truncated, corrupt or larger than PIL's
            decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``); the message names the file.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return convert(im)
    except IMAGE_ERRORS as error:
        raise UnreadableImageError(f"{printable_name(path)}: {image_error_reason(error)}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL image (P, L, LA, RGBA, I;16, ...) to 8-bit RGB; alpha is composited on white."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = max(float(arr.max()), 1.0)
        return Image.fromarray((arr * (255.0 / peak)).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def mask_to_grey(im: Image.Image) -> np.ndarray:
    """One ``uint8`` channel from a mask image. RGBA masks use the maximum of the colour channels where
    alpha is non-zero (fully transparent pixels are background)."""
    if im.mode in ("RGBA", "LA"):
        arr = np.asarray(im.convert("RGBA"))
        grey = arr[..., :3].max(axis=-1)
        return np.where(arr[..., 3] > 0, grey, 0).astype(np.uint8)
    if im.mode == "RGB":
        return np.asarray(im).max(axis=-1).astype(np.uint8)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        return np.clip(arr, 0, 255).astype(np.uint8)
    return np.asarray(im.convert("L"))


def _clip_crop(crop: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    x0, y0, x1, y1 = crop
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


def _empty_labels() -> np.ndarray:
    return np.zeros((0,), dtype=np.int64)


def _empty_box_attributes() -> np.ndarray:
    return np.zeros((0, len(FOV_ATTRIBUTES)), dtype=np.int64)


@dataclass
class Sample:
    """One supervised example for one task.

    Only the fields the task needs are filled; the others keep their empty defaults.

    Attributes:
        image: lazy image reference (``image.load()`` gives an RGB PIL image).
        task: which task this sample supervises.
        dataset: registry name of the source dataset (``"bccd"``, ``"synthetic"``, ...).
        sample_id: identifier unique within the dataset (usually the relative file path).
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` when the source has no split of its own.
        disease: free-text disease context (``"healthy"``, ``"malaria"``, ``"sickle cell disease"``...).
        prompt: the text prompt given to the text encoder (disease prompt, question, masked sentence).
        boxes: ``(N, 4)`` float32 xyxy pixels.
        box_labels: ``(N,)`` int64 indices into ``DETECTION_CLASSES``.
        box_attributes: ``(N, len(FOV_ATTRIBUTES))`` int64, ``UNKNOWN`` where not annotated.
        mask: lazy binary mask reference, or ``None``.
        cell_class: index into ``CELL_CLASSES`` or ``None``.
        cell_attributes: ``(len(CELL_ATTRIBUTES),)`` int64 or ``None``.
        text_target: the answer / completed sentence for VQA and MLM.
        image_size: ``(height, width)`` when known without decoding the image.
        source_path: the file on disk the pixels come from (used for de-duplication); ``None`` for
            in-memory images.
        extra: reader-specific metadata (original class name, sub-type prefix, ...).
    """

    image: ImageRef
    task: Task
    dataset: str
    sample_id: str
    split: str | None = None
    disease: str | None = None
    prompt: str = ""
    boxes: np.ndarray = field(default_factory=_empty_boxes)
    box_labels: np.ndarray = field(default_factory=_empty_labels)
    box_attributes: np.ndarray = field(default_factory=_empty_box_attributes)
    mask: MaskRef | None = None
    cell_class: int | None = None
    cell_attributes: np.ndarray | None = None
    text_target: str | None = None
    image_size: tuple[int, int] | None = None
    source_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.task = Task(self.task)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.box_labels = np.asarray(self.box_labels, dtype=np.int64).reshape(-1)
        if self.box_attributes.shape[0] == 0 and len(self.box_labels) > 0:
            self.box_attributes = np.full(
                (len(self.box_labels), len(FOV_ATTRIBUTES)), UNKNOWN, dtype=np.int64
            )
        self.box_attributes = np.asarray(self.box_attributes, dtype=np.int64).reshape(-1, len(FOV_ATTRIBUTES))
        if len(self.boxes) != len(self.box_labels) or len(self.boxes) != len(self.box_attributes):
            raise ValueError(
                f"sample {self.dataset}/{self.sample_id}: boxes ({len(self.boxes)}), box_labels "
                f"({len(self.box_labels)}) and box_attributes ({len(self.box_attributes)}) differ in length"
            )
        if self.cell_attributes is not None:
            self.cell_attributes = np.asarray(self.cell_attributes, dtype=np.int64).reshape(
                len(CELL_ATTRIBUTES)
            )

    def load_image(self) -> Image.Image:
        return self.image.load()

    def load_mask(self) -> np.ndarray | None:
        return None if self.mask is None else self.mask.load()


@dataclass(frozen=True)
class Skipped:
    """An item a reader did not load, with the reason (shown by ``unihema data check``)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Fixed:
    """A quirk a reader repaired on purpose (e.g. a zero-area box dropped, an alias class renamed)."""

    path: str
    what: str


@dataclass
class ReadResult:
    """What a reader returns: the samples, and what it skipped or fixed along the way.

    Attributes:
        dataset: registry name of the dataset.
        format: reader name (``"voc"``, ``"yolo"``...).
        samples: the loaded samples.
        skipped: items not loaded, each with the file and reason.
        fixed: quirks repaired on purpose.
        annotated_classes: the detection or cell classes this dataset annotates (vocabulary names);
            training uses it so that classes a dataset never labels are not taught as background.
    """

    dataset: str
    format: str
    samples: list[Sample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    fixed: list[Fixed] = field(default_factory=list)
    annotated_classes: tuple[str, ...] = ()
