"""What the pixel values of a mask mean, for the mask reader (:mod:`unihema.data.formats.masks`).

Foreground is "not background". Grey masks are read through a ``mapping`` (``"nonzero"``: background is
black, every other value is foreground). Colour-coded masks are read through a colour map naming each
colour (``{"nucleus": [0, 255, 255], "cytoplasm": [0, 0, 255], "background": [255, 255, 255]}``): the
``background`` entry is background, the other entries (or the ones ``foreground`` names) are foreground,
and a colour the map does not hold is background (``unknown_colours="background"``), foreground, or makes
the mask skipped (``"skip"``). Colours are given as ``[r, g, b]``, a grey value ``0..255`` or ``"#rrggbb"``.

Masks may be any image PIL reads. JPEG masks are lossy: compression leaves noisy values near edges, so
each of their pixels takes the nearest colour of the map (or, under ``"nonzero"``, a value of at least
:data:`LOSSY_THRESHOLD` is foreground) and the reader warns that their labels are noisy.

:func:`looks_like_mask` recognises a mask by content (few distinct colours), which is how the reader tells
a folder of masks from a folder of images of the same stems.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unihema.data.formats._common import OptionError, ReadReport
from unihema.data.schema import LOSSY_MASK_EXTENSIONS, FileMask, mask_to_grey, read_image

Colour = tuple[int, int, int]

MAX_MASK_COLOURS = 32
"""A lossless image with at most this many distinct colours (in a sample of its pixels) is a mask."""
SNIFF_SIDE = 256
"""Pixels sampled per side when :func:`looks_like_mask` counts colours."""
MASK_FOLDER_HINTS = ("mask", "gt", "ground", "seg")
"""Starts of folder-name words that mark a folder of masks (``masks``, ``GT``, ``Ground Truth``,
``segmentation``); not ``label``, which also names box and class folders (``labels/``, ``Labelled/``)."""
LOSSY_THRESHOLD = 128
"""Under ``mapping="nonzero"``, the grey value from which a pixel of a lossy mask is foreground."""
BACKGROUND = "background"
UNKNOWN_COLOUR_POLICIES = ("background", "foreground", "skip")
SHOWN_COLOURS = 6  # colours listed in one message


def is_lossy(path: Path) -> bool:
    return Path(path).suffix.lower() in LOSSY_MASK_EXTENSIONS


def named_like_masks(folder: Path) -> bool:
    """True when a word of the folder's name starts like a mask folder (``gt``, ``Masks``, ``Ground Truth``)."""
    words = re.split(r"[^a-z]+", Path(folder).name.lower())
    return any(word.startswith(MASK_FOLDER_HINTS) for word in words if word)


def pack(pixels: np.ndarray) -> np.ndarray:
    """One int64 per pixel: the grey value, or the channels packed (``r << 16 | g << 8 | b`` ...)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        return pixels.astype(np.int64)
    packed = np.zeros(pixels.shape[:2], dtype=np.int64)
    for channel in range(pixels.shape[2]):
        packed = (packed << 8) | pixels[..., channel].astype(np.int64)
    return packed


def looks_like_mask(path: Path) -> bool:
    """True when a sample of the image's pixels holds at most :data:`MAX_MASK_COLOURS` colours."""
    try:
        with Image.open(path) as im:
            if im.mode == "1":
                return True
            pixels = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
    step = max(1, max(pixels.shape[:2]) // SNIFF_SIDE)
    return np.unique(pack(pixels[::step, ::step])).size <= MAX_MASK_COLOURS


def mask_rgb(im: Image.Image, background: Colour = (0, 0, 0)) -> np.ndarray:
    """``(H, W, 3)`` uint8 colours of a mask; fully transparent pixels get the ``background`` colour."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = np.clip(np.asarray(im, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = background
        return rgb
    return np.asarray(im.convert("RGB"))


def colour_text(colour: Colour) -> str:
    return "(" + ", ".join(str(v) for v in colour) + ")"


def _unpack(value: int) -> Colour:
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


# ------------------------------------------------------------------------------------------ colour maps


@dataclass(frozen=True)
class ColourMap:
    """The ``colour_map`` option, validated.

    Attributes:
        colours: class name -> RGB colour, in the order given (one entry is ``background``).
        foreground: the names whose pixels are foreground.
        unknown: what a pixel of a colour not in the map is: ``"background"``, ``"foreground"`` or
            ``"skip"`` (the whole mask is skipped, named with its colours).
    """

    colours: Mapping[str, Colour]
    foreground: tuple[str, ...]
    unknown: str = "background"

    @property
    def background(self) -> Colour:
        return self.colours[BACKGROUND]

    def foreground_colours(self) -> tuple[Colour, ...]:
        return tuple(self.colours[name] for name in self.foreground)

    def describe(self) -> dict[str, Any]:
        """The map as kept in ``Sample.extra["colour_map"]`` (plain lists)."""
        return {name: list(colour) for name, colour in self.colours.items()}


def parse_colour(value: Any, where: str) -> Colour:
    """``[r, g, b]``, a grey value or ``"#rrggbb"`` / ``"r,g,b"`` -> an RGB tuple (``OptionError`` if not)."""
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"#[0-9a-fA-F]{6}", text):
            return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        value = [v.strip() for v in text.split(",")] if "," in text else text
    items = [value] if not isinstance(value, (list, tuple)) else list(value)
    try:
        numbers = [int(v) for v in items if not isinstance(v, bool) and float(v) == int(float(v))]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) == len(items) and len(items) in (1, 3) and all(0 <= v <= 255 for v in numbers):
        return tuple(numbers * 3 if len(numbers) == 1 else numbers)  # type: ignore[return-value]
    raise OptionError(
        "colour_map",
        f"colour_map: {where} is {value!r}; expected a colour: [r, g, b] with values 0..255, a grey value "
        "0..255 or '#rrggbb'",
    )


def parse_colour_map(
    value: Any, foreground: str | Sequence[str] | None = None, unknown: str = "background"
) -> ColourMap:
    """Validate the ``colour_map``, ``foreground`` and ``unknown_colours`` options (``OptionError`` naming
    the option and the entry)."""
    if not isinstance(value, Mapping) or not value:
        raise OptionError(
            "colour_map",
            f"colour_map must map class names to colours (e.g. {{background: [255, 255, 255], nucleus: "
            f"[0, 255, 255]}}), got {value!r}",
        )
    colours: dict[str, Colour] = {}
    seen: dict[Colour, str] = {}
    for key, raw in value.items():
        name = str(key).strip()
        name = BACKGROUND if name.lower() == BACKGROUND else name
        colour = parse_colour(raw, repr(name))
        if colour in seen:
            raise OptionError(
                "colour_map", f"colour_map: {seen[colour]!r} and {name!r} have the same colour {list(colour)}"
            )
        seen[colour] = name
        colours[name] = colour
    if BACKGROUND not in colours:
        raise OptionError(
            "colour_map", f"colour_map needs a 'background' entry (its colour); it names {sorted(colours)}"
        )
    names = [n for n in colours if n != BACKGROUND]
    if not names:
        raise OptionError("colour_map", "colour_map needs at least one entry besides 'background'")
    chosen = tuple(names)
    if foreground is not None:
        chosen = tuple([foreground] if isinstance(foreground, str) else [str(n) for n in foreground])
        wrong = [n for n in chosen if n not in names]
        if wrong or not chosen:
            raise OptionError(
                "foreground",
                f"foreground: {wrong if wrong else 'no class'} given; expected some of the colour_map classes {names}",
            )
    if unknown not in UNKNOWN_COLOUR_POLICIES:
        raise OptionError(
            "unknown_colours", f"unknown_colours={unknown!r}: expected one of {list(UNKNOWN_COLOUR_POLICIES)}"
        )
    return ColourMap(colours, chosen, unknown)


@dataclass(frozen=True)
class ColourMask:
    """A colour-coded mask file; ``load()`` gives True where a pixel has a foreground colour.

    Attributes:
        path: the mask file.
        foreground: the colours read as foreground.
        known: every colour of the colour map (background and foreground ones included).
        background: the background colour (given to fully transparent pixels).
        unknown_foreground: a pixel of a colour not in ``known`` is foreground (default: background).
        nearest: each pixel first takes the nearest colour of ``known`` (lossy masks, whose colours are noisy).
    """

    path: Path
    foreground: tuple[Colour, ...]
    known: tuple[Colour, ...]
    background: Colour = (0, 0, 0)
    unknown_foreground: bool = False
    nearest: bool = False

    def load(self) -> np.ndarray:
        with Image.open(self.path) as im:
            im.load()
            rgb = mask_rgb(im, self.background)
        if self.nearest:
            rgb = nearest_colours(rgb, self.known)
        packed = pack(rgb)
        foreground = np.isin(packed, pack(np.asarray([self.foreground], dtype=np.uint8)))
        if self.unknown_foreground:
            foreground |= ~np.isin(packed, pack(np.asarray([self.known], dtype=np.uint8)))
        return foreground


def nearest_colours(rgb: np.ndarray, colours: Sequence[Colour]) -> np.ndarray:
    """Each pixel replaced by the nearest of ``colours`` (squared RGB distance)."""
    palette = np.asarray(colours, dtype=np.int32)
    distance = ((rgb[..., None, :].astype(np.int32) - palette) ** 2).sum(axis=-1)
    return palette[distance.argmin(axis=-1)].astype(np.uint8)


# ------------------------------------------------------------------------------------------ checks


EMPTY_MASK_GROUP = "masks without a foreground pixel (their images are taught as holding no cell)"
LABEL_MAP_GROUP = (
    "masks read as label maps (class indices, not grey levels): every nonzero label is foreground"
)


def _note_coverage(
    record: ReadReport, where: str, foreground: int, total: int, how: str, extra: dict[str, Any]
) -> None:
    """Record a mask that reads as all background (``extra["empty_mask"]``) or as all foreground."""
    if foreground == 0:
        extra["empty_mask"] = True
        record.fix(where, f"no pixel is foreground {how}", group=EMPTY_MASK_GROUP)
    elif foreground == total:
        record.fix(
            where,
            f"every pixel is foreground {how}: if the background has another value, give colour_map or mapping",
            warn=True,
        )


def check_colours(record: ReadReport, mask: Path, colours: ColourMap, extra: dict[str, Any]) -> bool:
    """Report the colours of ``mask`` that ``colours`` does not hold (warned, named with their pixel counts);
    note a mask all background or all foreground. False when the mask is to be skipped
    (``unknown="skip"``). :class:`~unihema.data.schema.UnreadableImageError` when it cannot be decoded."""
    where = record.relative(mask)
    rgb = read_image(mask, lambda im: mask_rgb(im, colours.background))
    if is_lossy(mask):
        rgb = nearest_colours(rgb, tuple(colours.colours.values()))
    values, counts = np.unique(pack(rgb), return_counts=True)
    known = pack(np.asarray([tuple(colours.colours.values())], dtype=np.uint8))[0]
    stray = ~np.isin(values, known)
    fg = pack(np.asarray([colours.foreground_colours()], dtype=np.uint8))[0]
    foreground = int(counts[np.isin(values, fg)].sum()) + (
        int(counts[stray].sum()) if colours.unknown == "foreground" else 0
    )
    total = rgb.shape[0] * rgb.shape[1]
    _note_coverage(record, where, foreground, total, "under the colour_map", extra)
    if not stray.any():
        return True
    order = np.argsort(-counts[stray])
    listed = ", ".join(
        f"{colour_text(_unpack(int(v)))} {int(c)} px"
        for v, c in zip(values[stray][order][:SHOWN_COLOURS], counts[stray][order][:SHOWN_COLOURS])
    )
    more = f" and {int(stray.sum()) - SHOWN_COLOURS} more" if stray.sum() > SHOWN_COLOURS else ""
    message = f"colours not in colour_map: {listed}{more} ({int(counts[stray].sum())} of {total} px)"
    if colours.unknown == "skip":
        record.skip(where, f"{message}; skipped (unknown_colours='skip')")
        return False
    record.fix(where, f"{message}: read as {colours.unknown}", warn=True)
    return True


def _mask_image(im: Image.Image) -> tuple[str, np.ndarray, np.ndarray | None]:
    return im.mode, mask_to_grey(im), np.asarray(im) if im.mode == "RGB" else None


def check_grey_levels(
    record: ReadReport,
    mask: FileMask,
    mapping: str | Sequence[int],
    levels: Sequence[int] | None,
    extra: dict[str, Any],
) -> None:
    """Record as fixed: RGBA masks, colour masks read without a colour map, label maps, masks that read as
    all background (``extra["empty_mask"]``) or all foreground, and values off the expected ``levels``.
    :class:`~unihema.data.schema.UnreadableImageError` when the mask cannot be decoded."""
    where = record.relative(mask.path)
    mode, grey, rgb = read_image(mask.path, _mask_image)
    if mode in ("RGBA", "LA"):
        record.fix(where, f"{mode} mask read as the brightest colour channel where alpha > 0")
    if (
        rgb is not None
        and not is_lossy(mask.path)
        and ((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])).any()
    ):
        values, counts = np.unique(pack(rgb), return_counts=True)
        order = np.argsort(-counts)[:SHOWN_COLOURS]
        listed = ", ".join(colour_text(_unpack(int(v))) for v in values[order])
        record.fix(
            where,
            f"colour mask read as its brightest channel (no colour_map): colours {listed}; give colour_map "
            "to say which colour is background",
            warn=True,
        )
    values, counts = np.unique(grey, return_counts=True)
    label_map = mask.reads_as_label_map(grey)
    if label_map:
        listed = ", ".join(str(v) for v in values[:SHOWN_COLOURS].tolist())
        record.fix(
            where,
            f"values {listed} are class indices, not the grey levels of mapping {mapping!r}: every nonzero "
            "label read as foreground (give mapping=[...] to choose labels)",
            group=LABEL_MAP_GROUP,
        )
    foreground = int(mask.select(grey).sum())
    no_black = "no black pixel; " if mapping == "nonzero" and values[0] > 0 else ""
    how = f"under mapping {mapping!r} ({no_black}most common value {int(values[counts.argmax()])})"
    _note_coverage(record, where, foreground, grey.size, how, extra)
    if levels is None or label_map:
        return
    stray = ~np.isin(values, levels)
    if stray.any():
        listed = ", ".join(str(v) for v in values[stray].tolist())
        record.fix(
            where,
            f"stray mask values {listed} ({int(counts[stray].sum())} px) snapped to the nearest of {tuple(levels)}",
        )
