"""The synthetic blood-smear corpus: UniHema's built-in default data.

A seeded generator of field-of-view (FoV) images that look like a Wright/Giemsa-stained thin peripheral
blood smear seen at 100x: a pale pinkish background with an illumination gradient and sensor noise, red
cells, white cells, platelets and malaria ring-stage parasites, with exact ground truth for all seven
tasks of :class:`~unihema.data.schema.Task`.

What is drawn
-------------
- **Red cells** (detection label ``"rbc"``): discs with a pale centre (central pallor). Abnormal shapes:
  ``"sickle cell"`` (a crescent), ``"target cell"`` (a dark centre inside a pale ring), ``"elliptocyte"``
  (an ellipse). A red cell carrying malaria ring-stage parasites (a thin blue-purple ring with a dark red
  chromatin dot) is labelled ``"ring"`` as a whole cell, the way infected-cell datasets box the host cell.
- **White cells**: ``"neutrophil"``, ``"lymphocyte"``, ``"monocyte"``, ``"eosinophil"``, ``"basophil"``.
  Each gets the 11 WBCAtt attributes (:data:`~unihema.data.vocab.CELL_ATTRIBUTES`) sampled from a
  per-type prior close to the WBCAtt statistics, and the drawing *follows the attributes*:
  ``cell_size`` sets the radius, ``cell_shape`` the outline, ``nucleus_shape`` the nucleus geometry
  (round, indented/kidney, band, bilobed, multilobed, irregular), ``nuclear_cytoplasmic_ratio`` the
  nucleus size, ``chromatin_density`` the nucleus darkness and texture, ``cytoplasm_colour`` the
  cytoplasm hue, ``cytoplasm_texture`` its graininess, ``cytoplasm_vacuole`` draws vacuoles,
  ``granule_type``/``granule_colour`` the granules. A 12th hidden trait, the nucleolus, is drawn as pale
  nucleoli. The 6 LeukemiaAttri FoV attributes (:data:`~unihema.data.vocab.FOV_ATTRIBUTES`) are derived
  from the same traits (:func:`fov_attributes_for`), so both label sets describe the same pixels.
- **Platelets** (``"platelet"``): small purple granular fragments.

Ground truth
------------
Per cell: a tight ``xyxy`` box (the extent of its coverage mask, after clipping to the image), its
detection label, its FoV attributes (white cells; ``UNKNOWN`` for the others), its own binary mask, and
for white cells the WBCAtt attributes. Cells never overlap, so every mask is the cell's visible area.
Red cells cut by the image border are kept when at least :data:`MIN_VISIBLE_FRACTION` of them is
visible (then flagged ``truncated``) and not drawn at all otherwise, so nothing visible is unlabelled.
White cells and platelets are always wholly inside the image.

The binary segmentation mask marks the cells chosen by :attr:`SyntheticConfig.mask_target`:
``"wbc"`` (default; whole white cells, nucleus and cytoplasm, like the WBC segmentation datasets),
``"wbc_nucleus"`` (white-cell nuclei only), ``"rbc"`` (every red cell, infected and abnormal included) or
``"all"`` (every cell, platelets included).

Tasks (:meth:`SyntheticCorpus.samples`)
---------------------------------------
- ``detection``: one sample per field, every box;
- ``fov_morphology``: one sample per field with at least one white cell, white-cell boxes only, each
  with its 6 FoV attributes;
- ``segmentation``: one sample per field with the binary mask;
- ``classification``: square crops around every white cell and a seeded choice of at most
  :attr:`SyntheticConfig.abnormal_rbc_crops_per_field` abnormal or infected red cells,
  :attr:`SyntheticConfig.rbc_crops_per_field` normal red cells and
  :attr:`SyntheticConfig.platelet_crops_per_field` platelets, with their
  :data:`~unihema.data.vocab.CELL_CLASSES` class (sickle cells are ``"elongated rbc"``, infected cells
  ``"parasitized rbc"``, normal red cells ``"normal rbc"``); cells cut by the image border are not
  cropped;
- ``cell_morphology``: the white-cell crops with their 11 WBCAtt attributes;
- ``vqa`` / ``mlm``: questions and masked sentences about each white-cell crop, from
  :func:`unihema.data.text.text_samples`.

Every sample of a field shares the field's split (``extra["split_group"]`` names the field), so no task
leaks a test field into training. Splits are a seeded permutation of the field indices. Field ``i`` is
generated from ``numpy.random.default_rng([seed, i])`` alone, so it is the same whatever other fields are
generated, in any order.

Vision samples leave ``Sample.prompt`` empty and carry the field's disease in ``Sample.disease`` (see
:attr:`SyntheticConfig.disease_context`); :mod:`unihema.data.prompts` turns it into the text prompt.

Everything is vectorised numpy/scipy on small per-cell patches: a 256x256 field takes a few tens of
milliseconds on one core, and :meth:`SyntheticCorpus.generate` spreads fields over processes (see
``docs/benchmarks.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from unihema.atomic import atomic_save_image, atomic_write_bytes
from unihema.data.manifest import write_manifest
from unihema.data.schema import (
    SPLITS,
    SYNTHETIC_DATASET,
    UNKNOWN,
    ArrayImage,
    ArrayMask,
    FileImage,
    FileMask,
    Sample,
    Task,
)
from unihema.data.text import text_samples
from unihema.data.vocab import (
    CELL_ATTRIBUTE_NAMES,
    CELL_ATTRIBUTES,
    FOV_ATTRIBUTE_NAMES,
    FOV_ATTRIBUTES,
    attribute_value_index,
    cell_index,
    detection_index,
)

DATASET_NAME = SYNTHETIC_DATASET
"""``Sample.dataset`` of every synthetic sample."""


WBC_TYPES: tuple[str, ...] = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
ABNORMAL_RBC_TYPES: tuple[str, ...] = ("sickle cell", "target cell", "elliptocyte")
RBC_LABELS: tuple[str, ...] = ("rbc", *ABNORMAL_RBC_TYPES, "ring")
DETECTION_LABELS: tuple[str, ...] = (*RBC_LABELS[:4], *WBC_TYPES, "platelet", "ring")
"""Every detection class the corpus annotates (vocabulary names)."""

CELL_CLASS_OF_LABEL: dict[str, str] = {
    "rbc": "normal rbc",
    "sickle cell": "elongated rbc",
    "target cell": "target cell",
    "elliptocyte": "elliptocyte",
    "ring": "parasitized rbc",
    "platelet": "platelet",
    **{name: name for name in WBC_TYPES},
}
"""Single-cell class (:data:`~unihema.data.vocab.CELL_CLASSES` name) of each detection label."""

CELL_CLASS_NAMES: tuple[str, ...] = tuple(dict.fromkeys(CELL_CLASS_OF_LABEL.values()))
"""Every single-cell class the corpus annotates."""

MASK_TARGETS: tuple[str, ...] = ("wbc", "wbc_nucleus", "rbc", "all")

DISEASE_OF_CONDITION: dict[str, str] = {
    "healthy": "healthy",
    "malaria": "malaria",
    "sickle cell": "sickle cell disease",
    "target cell": "thalassaemia",
    "elliptocyte": "hereditary elliptocytosis",
}
"""Disease context (``Sample.disease``) of each kind of field."""


MIN_VISIBLE_FRACTION = 0.3
"""A red cell cut by the image border is drawn and labelled only if this fraction of it is visible."""

PLACEMENT_GAP_PX = 1.5
"""Minimum free space between the bounding circles of two cells (cells never overlap)."""

_TRIANGULAR_NOISE_STD = math.sqrt(2 * (256**2 - 1) / 12)  # std of the sum of two uniform bytes
_PLACEMENT_TRIES = 24  # random candidate centres tried per cell before giving up on it
_REFERENCE_RBC_RADIUS = 10.0  # every size constant below is in pixels at this red-cell radius

# White-cell radius (big, small) at the reference scale; ~20% apart so `cell_size` is visible.
_WBC_RADIUS: dict[str, tuple[float, float]] = {
    "neutrophil": (17.0, 14.0),
    "lymphocyte": (13.5, 11.0),
    "monocyte": (20.5, 17.0),
    "eosinophil": (17.5, 14.5),
    "basophil": (15.5, 12.8),
}
_RADIUS_JITTER = 0.04  # relative, uniform +-

# --- colours (RGB, 0..255) ------------------------------------------------------------------------
_BACKGROUND = np.array([236.0, 225.0, 228.0], np.float32)
_RBC_BODY = np.array([214.0, 128.0, 134.0], np.float32)
_RBC_PALLOR = np.array([236.0, 196.0, 198.0], np.float32)
_RBC_RIM = np.array([192.0, 104.0, 114.0], np.float32)
_SICKLE_BODY = np.array([200.0, 106.0, 116.0], np.float32)
_RING_CYTOPLASM = np.array([92.0, 74.0, 168.0], np.float32)
_RING_CHROMATIN = np.array([128.0, 24.0, 84.0], np.float32)
_PLATELET_BODY = np.array([176.0, 136.0, 204.0], np.float32)
_PLATELET_GRANULOMERE = np.array([112.0, 62.0, 146.0], np.float32)
_CYTOPLASM_COLOUR: dict[str, np.ndarray] = {
    "light blue": np.array([206.0, 218.0, 236.0], np.float32),
    "blue": np.array([146.0, 170.0, 226.0], np.float32),
    "purple blue": np.array([168.0, 146.0, 214.0], np.float32),
}
_MONOCYTE_GREY = np.array([188.0, 188.0, 196.0], np.float32)  # monocytes' dull grey-blue tint
_MONOCYTE_GREY_MIX = 0.3
_CHROMATIN_COLOUR: dict[str, np.ndarray] = {
    "densely": np.array([84.0, 42.0, 122.0], np.float32),
    "loosely": np.array([116.0, 72.0, 156.0], np.float32),
}
_NUCLEOLUS_COLOUR = np.array([176.0, 158.0, 212.0], np.float32)
_VACUOLE_COLOUR = np.array([242.0, 240.0, 250.0], np.float32)
_GRANULE_COLOUR: dict[str, np.ndarray] = {
    "pink": np.array([216.0, 132.0, 186.0], np.float32),
    "red": np.array([226.0, 92.0, 62.0], np.float32),
    "purple": np.array([64.0, 24.0, 96.0], np.float32),
}

# Texture (amplitude in grey levels, smoothing sigma in reference pixels).
_CHROMATIN_TEXTURE: dict[str, tuple[float, float]] = {"densely": (22.0, 1.2), "loosely": (9.0, 0.6)}
_CYTOPLASM_TEXTURE: dict[str, tuple[float, float]] = {"frosted": (10.0, 0.7), "clear": (2.5, 1.0)}

# Granules: (count per pixel of cytoplasm, radius in reference pixels, drawn over the nucleus too?,
# opacity). Fine neutrophil granules tint the cytoplasm; eosinophil granules pack it; basophil granules
# are coarse and hide the nucleus.
_GRANULES: dict[str, tuple[float, float, bool, float]] = {
    "small": (0.45, 0.6, False, 0.55),
    "round": (0.32, 1.3, False, 0.9),
    "coarse": (0.10, 2.0, True, 0.92),
}


# ==================================================================================================
# Configuration


@dataclass
class SyntheticConfig:
    """How the synthetic corpus is generated. Every field is validated in ``__post_init__``.

    Attributes:
        image_size: field size in pixels, ``int`` for a square field or ``(height, width)``.
        n_images: number of fields in the corpus (all splits together).
        seed: master seed; field ``i`` depends only on ``(seed, i)``.
        rbc_radius: radius in pixels of a normal red cell; every other size scales with it.
        rbc_density: ``(low, high)`` fraction of the field area covered by red cells, drawn per field.
        wbc_per_field: ``(low, high)`` inclusive number of white cells per field.
        wbc_types: white-cell types to draw (subset of :data:`WBC_TYPES`), drawn uniformly so the classes
            are balanced.
        platelets_per_field: ``(low, high)`` inclusive number of platelets per field.
        malaria_fraction: fraction of fields from a malaria patient (some red cells carry ring stages).
        parasitaemia: ``(low, high)`` fraction of red cells infected in a malaria field.
        abnormal_field_fraction: fraction of fields from a red-cell disorder (sickle cell disease,
            thalassaemia with target cells, hereditary elliptocytosis); ``malaria_fraction +
            abnormal_field_fraction`` must not exceed 1, the remaining fields are healthy.
        abnormal_rbc_fraction: ``(low, high)`` fraction of red cells with an abnormal shape in a
            red-cell-disorder field (mostly the field's dominant shape, some of the others).
        crop_size: smallest side in pixels of single-cell crops (larger cells get a larger square window).
        crop_scale: a crop's side is at least this multiple of its cell's box side (plus 4 px), so the
            cell fills the crop as in real single-cell datasets; 1.0 with a large ``crop_size`` gives
            wide windows in which neighbouring cells take up much of the crop.
        abnormal_rbc_crops_per_field: abnormal or infected red cells cropped per field for classification
            (at most; keeps the red-cell classes from swamping the white-cell ones).
        rbc_crops_per_field: normal red cells cropped per field for classification.
        platelet_crops_per_field: platelets cropped per field for classification.
        mask_target: what the segmentation mask marks, one of :data:`MASK_TARGETS`.
        split_fractions: ``(train, val, test)`` fractions of the fields; must sum to 1.
        max_vqa_per_cell: VQA pairs kept per white cell (``None`` = all the templates give).
        max_mlm_per_cell: masked sentences kept per white cell (``None`` = all).
        disease_context: set ``Sample.disease`` to the field's disease (the patient's diagnosis, from which
            :mod:`unihema.data.prompts` builds the text prompt, as real corpora give one disease per
            dataset). It tells the model which kind of field it sees (a malaria field always holds ring
            stages); ``False`` leaves it ``None`` so that prompts carry no such hint.
        illumination: maximum relative brightness change across the field (uneven illumination).
        noise_std: standard deviation of the additive pixel noise, in grey levels.
        blur_sigma: optical blur in pixels (0 disables it).
    """

    image_size: int | tuple[int, int] = 256
    n_images: int = 1000
    seed: int = 0
    rbc_radius: float = 10.0
    rbc_density: tuple[float, float] = (0.25, 0.42)
    wbc_per_field: tuple[int, int] = (1, 3)
    wbc_types: tuple[str, ...] = WBC_TYPES
    platelets_per_field: tuple[int, int] = (2, 8)
    malaria_fraction: float = 0.25
    parasitaemia: tuple[float, float] = (0.08, 0.3)
    abnormal_field_fraction: float = 0.35
    abnormal_rbc_fraction: tuple[float, float] = (0.2, 0.5)
    crop_size: int = 64
    crop_scale: float = 1.0
    abnormal_rbc_crops_per_field: int = 4
    rbc_crops_per_field: int = 2
    platelet_crops_per_field: int = 1
    mask_target: str = "wbc"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_vqa_per_cell: int | None = 4
    max_mlm_per_cell: int | None = 2
    disease_context: bool = True
    illumination: float = 0.08
    noise_std: float = 3.0
    blur_sigma: float = 0.6

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"SyntheticConfig.{name}: {why} (got {getattr(self, name)!r})")

        size = self.image_size
        if isinstance(size, int | np.integer):
            size = (int(size), int(size))
        if not (
            isinstance(size, Sequence)
            and len(size) == 2
            and all(isinstance(s, int | np.integer) for s in size)
        ):
            fail("image_size", "must be an int or a (height, width) pair of ints")
        self.image_size = (int(size[0]), int(size[1]))
        if not self.rbc_radius > 0:
            fail("rbc_radius", "must be > 0")
        min_side = math.ceil(4 * _WBC_RADIUS["monocyte"][0] * self.rbc_radius / _REFERENCE_RBC_RADIUS)
        if min(self.image_size) < min_side:
            fail("image_size", f"both sides must be >= {min_side} px (4 monocyte radii at this rbc_radius)")
        if self.n_images < 1:
            fail("n_images", "must be >= 1")
        for name in ("rbc_density", "parasitaemia", "abnormal_rbc_fraction"):
            low, high = self._pair(name)
            if not 0.0 <= low <= high <= 1.0:
                fail(name, "must be (low, high) with 0 <= low <= high <= 1")
        if self.rbc_density[1] > 0.6:
            fail("rbc_density", "more than 0.6 of the field cannot be covered by non-overlapping cells")
        for name in ("wbc_per_field", "platelets_per_field"):
            low, high = self._pair(name)
            if not (int(low) == low and int(high) == high and 0 <= low <= high):
                fail(name, "must be (low, high) integers with 0 <= low <= high")
            setattr(self, name, (int(low), int(high)))
        self.wbc_types = tuple(self.wbc_types)
        if not self.wbc_types or any(t not in WBC_TYPES for t in self.wbc_types):
            fail("wbc_types", f"must be a non-empty subset of {WBC_TYPES}")
        for name in ("malaria_fraction", "abnormal_field_fraction", "illumination"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                fail(name, "must be in [0, 1]")
        if self.malaria_fraction + self.abnormal_field_fraction > 1.0 + 1e-9:
            fail("abnormal_field_fraction", "malaria_fraction + abnormal_field_fraction must be <= 1")
        if not (isinstance(self.crop_scale, (int, float)) and 1.0 <= self.crop_scale <= 4.0):
            fail("crop_scale", "must be a number in [1, 4]")
        if not 8 <= self.crop_size <= min(self.image_size):
            fail("crop_size", f"must be between 8 and the smallest image side ({min(self.image_size)})")
        for name in ("abnormal_rbc_crops_per_field", "rbc_crops_per_field", "platelet_crops_per_field"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0")
        for name in ("max_vqa_per_cell", "max_mlm_per_cell"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                fail(name, "must be >= 0 or None")
        if self.mask_target not in MASK_TARGETS:
            fail("mask_target", f"must be one of {MASK_TARGETS}")
        fractions = tuple(float(f) for f in self.split_fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
            fail("split_fractions", "must be three non-negative fractions (train, val, test) summing to 1")
        self.split_fractions = fractions  # type: ignore[assignment]
        if self.noise_std < 0:
            fail("noise_std", "must be >= 0")
        if self.blur_sigma < 0:
            fail("blur_sigma", "must be >= 0")

    def _pair(self, name: str) -> tuple[float, float]:
        value = getattr(self, name)
        if not (isinstance(value, Sequence) and len(value) == 2):
            raise ValueError(f"SyntheticConfig.{name}: must be a (low, high) pair (got {value!r})")
        return float(value[0]), float(value[1])

    @property
    def height(self) -> int:
        return self.image_size[0]  # type: ignore[index]

    @property
    def width(self) -> int:
        return self.image_size[1]  # type: ignore[index]

    @property
    def scale(self) -> float:
        """Pixel scale relative to the reference red-cell radius of 10 px."""
        return self.rbc_radius / _REFERENCE_RBC_RADIUS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ==================================================================================================
# White-cell attributes

# Per-type priors over the WBCAtt attributes, close to the WBCAtt training-set frequencies but with a
# little more within-class variety so the attributes are not a function of the class alone.
_Prior = dict[str, tuple[tuple[str, float], ...]]
_WBC_PRIORS: dict[str, _Prior] = {
    "neutrophil": {
        "cell_size": (("big", 0.6), ("small", 0.4)),
        "cell_shape": (("round", 0.8), ("irregular", 0.2)),
        "nucleus_shape": (("unsegmented-band", 0.3), ("segmented-bilobed", 0.25), ("segmented-multilobed", 0.45)),
        "nuclear_cytoplasmic_ratio": (("low", 0.97), ("high", 0.03)),
        "chromatin_density": (("densely", 0.97), ("loosely", 0.03)),
        "cytoplasm_vacuole": (("no", 0.9), ("yes", 0.1)),
        "cytoplasm_texture": (("clear", 0.9), ("frosted", 0.1)),
        "cytoplasm_colour": (("light blue", 0.95), ("blue", 0.05)),
        "granules": (("small pink", 0.95), ("small purple", 0.05)),
        "nucleolus": (("no", 0.98), ("yes", 0.02)),
    },
    "lymphocyte": {
        "cell_size": (("small", 0.9), ("big", 0.1)),
        "cell_shape": (("round", 0.7), ("irregular", 0.3)),
        "nucleus_shape": (("unsegmented-round", 0.8), ("unsegmented-indented", 0.15), ("irregular", 0.05)),
        "nuclear_cytoplasmic_ratio": (("high", 0.9), ("low", 0.1)),
        "chromatin_density": (("densely", 0.95), ("loosely", 0.05)),
        "cytoplasm_vacuole": (("no", 0.98), ("yes", 0.02)),
        "cytoplasm_texture": (("frosted", 0.6), ("clear", 0.4)),
        "cytoplasm_colour": (("blue", 0.6), ("purple blue", 0.35), ("light blue", 0.05)),
        "granules": (("nil nil", 0.97), ("small purple", 0.03)),
        "nucleolus": (("no", 0.88), ("yes", 0.12)),
    },
    "monocyte": {
        "cell_size": (("big", 0.85), ("small", 0.15)),
        "cell_shape": (("irregular", 0.55), ("round", 0.45)),
        "nucleus_shape": (("unsegmented-indented", 0.7), ("irregular", 0.2), ("unsegmented-round", 0.1)),
        "nuclear_cytoplasmic_ratio": (("low", 0.9), ("high", 0.1)),
        "chromatin_density": (("loosely", 0.6), ("densely", 0.4)),
        "cytoplasm_vacuole": (("no", 0.55), ("yes", 0.45)),
        "cytoplasm_texture": (("frosted", 0.85), ("clear", 0.15)),
        "cytoplasm_colour": (("blue", 0.45), ("purple blue", 0.45), ("light blue", 0.1)),
        "granules": (("nil nil", 0.97), ("small pink", 0.03)),
        "nucleolus": (("no", 0.8), ("yes", 0.2)),
    },
    "eosinophil": {
        "cell_size": (("big", 0.6), ("small", 0.4)),
        "cell_shape": (("round", 0.92), ("irregular", 0.08)),
        "nucleus_shape": (("segmented-bilobed", 0.75), ("segmented-multilobed", 0.15), ("unsegmented-band", 0.1)),
        "nuclear_cytoplasmic_ratio": (("low", 1.0),),
        "chromatin_density": (("densely", 0.99), ("loosely", 0.01)),
        "cytoplasm_vacuole": (("no", 0.99), ("yes", 0.01)),
        "cytoplasm_texture": (("clear", 1.0),),
        "cytoplasm_colour": (("light blue", 1.0),),
        "granules": (("round red", 1.0),),
        "nucleolus": (("no", 0.99), ("yes", 0.01)),
    },
    "basophil": {
        "cell_size": (("small", 0.7), ("big", 0.3)),
        "cell_shape": (("round", 0.9), ("irregular", 0.1)),
        "nucleus_shape": (
            ("irregular", 0.4), ("segmented-bilobed", 0.3), ("segmented-multilobed", 0.15), ("unsegmented-band", 0.15),
        ),
        "nuclear_cytoplasmic_ratio": (("low", 0.98), ("high", 0.02)),
        "chromatin_density": (("densely", 1.0),),
        "cytoplasm_vacuole": (("no", 1.0),),
        "cytoplasm_texture": (("clear", 1.0),),
        "cytoplasm_colour": (("light blue", 0.95), ("purple blue", 0.05)),
        "granules": (("coarse purple", 0.98), ("small purple", 0.02)),
        "nucleolus": (("no", 0.99), ("yes", 0.01)),
    },
}  # fmt: skip

_CELL_ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = dict(CELL_ATTRIBUTES)


@dataclass(frozen=True)
class WhiteCellSpec:
    """What a white cell looks like: its type, its 11 WBCAtt attributes and whether nucleoli show.

    Attributes:
        cell_type: one of :data:`WBC_TYPES`.
        attributes: ``{WBCAtt attribute: value}`` with every attribute of
            :data:`~unihema.data.vocab.CELL_ATTRIBUTES`.
        nucleolus: draw prominent nucleoli (the LeukemiaAttri ``nucleolus`` attribute).
    """

    cell_type: str
    attributes: Mapping[str, str]
    nucleolus: bool = False

    def __post_init__(self) -> None:
        if self.cell_type not in WBC_TYPES:
            raise ValueError(f"WhiteCellSpec.cell_type: {self.cell_type!r} is not one of {WBC_TYPES}")
        missing = [name for name in CELL_ATTRIBUTE_NAMES if name not in self.attributes]
        if missing:
            raise ValueError(f"WhiteCellSpec.attributes: missing {', '.join(missing)}")
        for name, value in self.attributes.items():
            if name not in _CELL_ATTRIBUTE_VALUES:
                raise ValueError(f"WhiteCellSpec.attributes: unknown attribute {name!r}")
            if value not in _CELL_ATTRIBUTE_VALUES[name]:
                raise ValueError(
                    f"WhiteCellSpec.attributes[{name!r}]: {value!r} is not one of {_CELL_ATTRIBUTE_VALUES[name]}"
                )

    def with_attributes(self, **changes: str) -> WhiteCellSpec:
        """A copy with some attributes replaced (``spec.with_attributes(cytoplasm_colour="blue")``)."""
        return WhiteCellSpec(self.cell_type, {**self.attributes, **changes}, self.nucleolus)

    def cell_attribute_indices(self) -> np.ndarray:
        """The ``(11,)`` int64 WBCAtt value indices (``Sample.cell_attributes``)."""
        return np.array(
            [
                attribute_value_index(CELL_ATTRIBUTES, name, self.attributes[name])
                for name in CELL_ATTRIBUTE_NAMES
            ],
            dtype=np.int64,
        )


def _choose(rng: np.random.Generator, options: tuple[tuple[str, float], ...]) -> str:
    names = [name for name, _ in options]
    weights = np.array([weight for _, weight in options], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def sample_white_cell(rng: np.random.Generator, cell_type: str) -> WhiteCellSpec:
    """Draw a white cell's attributes from the per-type prior.

    Granule type, granule colour and granularity are drawn jointly so they always agree (no granules:
    ``nil``/``nil``/``no``).
    """
    if cell_type not in _WBC_PRIORS:
        raise ValueError(f"unknown white-cell type {cell_type!r}; expected one of {WBC_TYPES}")
    prior = _WBC_PRIORS[cell_type]
    attributes = {name: _choose(rng, prior[name]) for name in CELL_ATTRIBUTE_NAMES if name in prior}
    granule_type, granule_colour = _choose(rng, prior["granules"]).split(" ")
    attributes["granule_type"] = granule_type
    attributes["granule_colour"] = granule_colour
    attributes["granularity"] = "no" if granule_type == "nil" else "yes"
    return WhiteCellSpec(cell_type, attributes, nucleolus=_choose(rng, prior["nucleolus"]) == "yes")


def fov_attributes_for(spec: WhiteCellSpec) -> dict[str, str]:
    """The 6 LeukemiaAttri attributes implied by a white cell's drawn traits.

    ``nuclear_chromatin``: coarse for densely packed chromatin (dark, clumpy), open for loosely packed;
    ``nuclear_shape``: regular for a round nucleus, irregular for every other shape;
    ``nucleolus``: prominent when nucleoli are drawn; ``cytoplasm``: scanty for a high
    nuclear-cytoplasmic ratio, abundant for a low one; ``cytoplasmic_basophilia``: moderate for blue or
    purple-blue cytoplasm, slight for light blue; ``cytoplasmic_vacuoles``: prominent when vacuoles are
    drawn.
    """
    a = spec.attributes
    return {
        "nuclear_chromatin": "coarse" if a["chromatin_density"] == "densely" else "open",
        "nuclear_shape": "regular" if a["nucleus_shape"] == "unsegmented-round" else "irregular",
        "nucleolus": "prominent" if spec.nucleolus else "inconspicuous",
        "cytoplasm": "scanty" if a["nuclear_cytoplasmic_ratio"] == "high" else "abundant",
        "cytoplasmic_basophilia": "slight" if a["cytoplasm_colour"] == "light blue" else "moderate",
        "cytoplasmic_vacuoles": "prominent" if a["cytoplasm_vacuole"] == "yes" else "absent",
    }


def _fov_indices(spec: WhiteCellSpec) -> np.ndarray:
    values = fov_attributes_for(spec)
    return np.array(
        [attribute_value_index(FOV_ATTRIBUTES, name, values[name]) for name in FOV_ATTRIBUTE_NAMES],
        dtype=np.int64,
    )


def white_cell_radius(spec: WhiteCellSpec, rbc_radius: float = _REFERENCE_RBC_RADIUS) -> float:
    """Nominal radius in pixels of a white cell (before the small random jitter)."""
    big, small = _WBC_RADIUS[spec.cell_type]
    return (big if spec.attributes["cell_size"] == "big" else small) * rbc_radius / _REFERENCE_RBC_RADIUS


# ==================================================================================================
# Geometry: signed distances (negative inside) on local pixel grids


def _grid(half: int, dx: float = 0.0, dy: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a ``(2*half+1)`` square patch relative to a sub-pixel centre."""
    coords = np.arange(-half, half + 1, dtype=np.float32)
    return coords[None, :] - np.float32(dx), coords[:, None] - np.float32(dy)


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return c * x + s * y, -s * x + c * y


def _sdf_disc(x: np.ndarray, y: np.ndarray, r: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    return np.hypot(x - cx, y - cy) - np.float32(r)


def _sdf_ellipse(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    # First-order distance to an ellipse: accurate to a fraction of a pixel near the boundary.
    k0 = np.hypot(x / a, y / b)
    k1 = np.hypot(x / (a * a), y / (b * b))
    return np.where(k1 > 1e-6, k0 * (k0 - 1.0) / np.maximum(k1, 1e-6), -min(a, b)).astype(np.float32)


def _sdf_wobbly_disc(
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


def _sdf_capsule(
    x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], w: float
) -> np.ndarray:
    ax, ay = p0
    bx, by = p1
    vx, vy = bx - ax, by - ay
    t = np.clip(((x - ax) * vx + (y - ay) * vy) / max(vx * vx + vy * vy, 1e-6), 0.0, 1.0)
    return np.hypot(x - ax - t * vx, y - ay - t * vy) - np.float32(w)


def _sdf_arc(x: np.ndarray, y: np.ndarray, rc: float, half_angle: float, w: float) -> np.ndarray:
    """A thick circular arc (a C / horseshoe) centred on +x, with round ends."""
    rho = np.hypot(x, y)
    phi = np.abs(np.arctan2(y, x))
    along = np.abs(rho - rc) - w
    ex, ey = rc * math.cos(half_angle), rc * math.sin(half_angle)
    ends = np.hypot(x - ex, np.abs(y) - ey) - w
    return np.where(phi <= half_angle, along, ends).astype(np.float32)


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance in pixels."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise (white noise blurred by ``sigma`` pixels)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    if sigma > 0:
        noise = ndimage.gaussian_filter(noise, sigma, mode="nearest")
    return noise / max(float(noise.std()), 1e-6)


def _splat(
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


def _lerp(base: np.ndarray, colour: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    """``base`` (h, w, 3) blended towards ``colour`` by ``alpha`` (h, w)."""
    a = alpha[..., None]
    return base * (1.0 - a) + colour * a


# ==================================================================================================
# Cell patches


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


def _nucleus_sdf(
    shape: str, x: np.ndarray, y: np.ndarray, radius: float, nc_high: bool, rng: np.random.Generator
) -> np.ndarray:
    """Signed distance of a nucleus of the WBCAtt ``nucleus_shape`` inside a cell of ``radius``."""
    x, y = _rotate(x, y, rng.uniform(0, 2 * math.pi))
    grow = 1.18 if nc_high else 1.0  # a high N:C ratio means a larger nucleus for the same cell
    r = radius
    if shape == "unsegmented-round":
        rn = r * (0.76 if nc_high else 0.55)
        return _sdf_wobbly_disc(x - r * (0.08 if nc_high else 0.16), y, rn, 0.03, rng)
    if shape == "unsegmented-indented":  # kidney / bean: a disc with a round notch cut out of one side
        rn = r * (0.72 if nc_high else 0.6)
        body = _sdf_disc(x, y, rn, cx=-0.1 * r)
        notch = _sdf_disc(x, y, 0.55 * rn, cx=-0.1 * r + 0.92 * rn)
        return np.maximum(body, -notch)
    if shape == "unsegmented-band":  # a thick horseshoe of even width
        rc = 0.5 * r
        return _sdf_arc(x + 0.25 * r, y, rc, rng.uniform(1.9, 2.4), 0.15 * r * grow)
    if shape == "segmented-bilobed":  # two lobes joined by a thin chromatin filament
        d = 0.42 * r
        rl = 0.27 * r * grow
        lobes = np.minimum(_sdf_disc(x, y, rl, cx=-d, cy=0.08 * r), _sdf_disc(x, y, rl, cx=d, cy=0.08 * r))
        return np.minimum(lobes, _sdf_capsule(x, y, (-d, 0.0), (d, 0.0), 0.05 * r))
    if shape == "segmented-multilobed":  # 3-5 lobes strung along a curve
        n = int(rng.integers(3, 6))
        angles = np.linspace(-1.9, 1.9, n) + rng.uniform(-0.15, 0.15, n)
        centres = [(0.46 * r * math.cos(a) - 0.12 * r, 0.46 * r * math.sin(a)) for a in angles]
        rl = (0.25 if n == 3 else 0.22) * r * grow
        sdf = _sdf_disc(x, y, rl, *centres[0])
        for (ax, ay), (bx, by) in zip(centres[:-1], centres[1:]):
            sdf = np.minimum(sdf, _sdf_disc(x, y, rl, bx, by))
            sdf = np.minimum(sdf, _sdf_capsule(x, y, (ax, ay), (bx, by), 0.045 * r))
        return sdf
    if shape == "irregular":
        rn = r * (0.68 if nc_high else 0.55)
        return _sdf_wobbly_disc(x, y, rn, 0.22, rng)
    raise ValueError(f"unknown nucleus_shape {shape!r}")


def render_white_cell(
    rng: np.random.Generator, spec: WhiteCellSpec, rbc_radius: float = _REFERENCE_RBC_RADIUS
) -> CellPatch:
    """Draw one white cell whose look follows ``spec`` (see the module docstring)."""
    a = spec.attributes
    scale = rbc_radius / _REFERENCE_RBC_RADIUS
    radius = white_cell_radius(spec, rbc_radius) * (1.0 + rng.uniform(-_RADIUS_JITTER, _RADIUS_JITTER))
    irregular = a["cell_shape"] == "irregular"
    half = _patch_half(radius * (1.2 if irregular else 1.04))
    x, y = _grid(half, *rng.uniform(-0.5, 0.5, 2))
    shape = (2 * half + 1, 2 * half + 1)

    outline = _sdf_wobbly_disc(x, y, radius, 0.14 if irregular else 0.015, rng)
    alpha = _coverage(outline)
    inside = outline < 0

    # Cytoplasm: hue from `cytoplasm_colour`, graininess from `cytoplasm_texture`.
    base = _CYTOPLASM_COLOUR[a["cytoplasm_colour"]]
    if spec.cell_type == "monocyte":
        base = base * (1 - _MONOCYTE_GREY_MIX) + _MONOCYTE_GREY * _MONOCYTE_GREY_MIX
    amp, sigma = _CYTOPLASM_TEXTURE[a["cytoplasm_texture"]]
    colour = np.broadcast_to(base, (*shape, 3)) + (amp * _smooth_noise(rng, shape, sigma * scale))[..., None]
    # Slightly darker towards the membrane, as the cytoplasm thickens there.
    colour = _lerp(colour, base * 0.88, np.clip((outline + 3.0 * scale) / (3.0 * scale), 0.0, 1.0) * 0.5)

    nucleus_sdf = _nucleus_sdf(
        a["nucleus_shape"], x, y, radius, a["nuclear_cytoplasmic_ratio"] == "high", rng
    )
    nucleus_sdf = np.maximum(nucleus_sdf, outline + 1.5 * scale)  # keep a rim of cytoplasm
    nucleus_alpha = _coverage(nucleus_sdf)
    cytoplasm_area = inside & (nucleus_sdf > 0)

    if a["cytoplasm_vacuole"] == "yes":
        free = cytoplasm_area & (outline < -2.5 * scale) & (nucleus_sdf > 2.0 * scale)
        count = int(rng.integers(3, 9))
        vacuoles, _ = _splat(rng, free, count, rng.uniform(1.4, 2.4) * scale)
        colour = _lerp(colour, _VACUOLE_COLOUR, vacuoles * 0.85)

    granules = None
    if a["granule_type"] != "nil":
        density, g_radius, on_top, opacity = _GRANULES[a["granule_type"]]
        where = inside & (outline < -0.8 * scale)
        if not on_top:
            where &= nucleus_sdf > 0
        # `density` is per pixel at the reference scale: the count per cell does not depend on scale.
        count = int(density * float(where.sum()) / (scale * scale))
        granules, _ = _splat(rng, where, count, g_radius * scale)
        g_colour = _GRANULE_COLOUR[a["granule_colour"]]
        if not on_top:
            colour = _lerp(colour, g_colour, granules * opacity)

    # Nucleus: darkness and clumpiness from `chromatin_density`.
    c_amp, c_sigma = _CHROMATIN_TEXTURE[a["chromatin_density"]]
    chromatin = _CHROMATIN_COLOUR[a["chromatin_density"]]
    nucleus_colour = (
        np.broadcast_to(chromatin, (*shape, 3))
        + (c_amp * _smooth_noise(rng, shape, c_sigma * scale))[..., None]
    )
    if spec.nucleolus:
        core = nucleus_sdf < -2.5 * scale
        nucleoli, _ = _splat(rng, core, int(rng.integers(1, 3)), 1.8 * scale)
        nucleus_colour = _lerp(nucleus_colour, _NUCLEOLUS_COLOUR, nucleoli * 0.9)
    # A darker nuclear membrane keeps the outline visible even against purple-blue cytoplasm.
    membrane = np.clip((nucleus_sdf + 1.5 * scale) / (1.5 * scale), 0.0, 1.0) * 0.35
    nucleus_colour = _lerp(nucleus_colour, chromatin * 0.7, membrane)
    colour = _lerp(colour, nucleus_colour, nucleus_alpha)

    if granules is not None and _GRANULES[a["granule_type"]][2]:
        colour = _lerp(
            colour, _GRANULE_COLOUR[a["granule_colour"]], granules * _GRANULES[a["granule_type"]][3]
        )
    return _finish(colour, alpha, nucleus_sdf < 0)


def _rbc_bound(label: str, radius: float) -> float:
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
    x, y = _grid(half)
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
    half = _patch_half(_rbc_bound(label, radius))
    x, y = _rotate(*_grid(half), angle)
    shape = (2 * half + 1, 2 * half + 1)
    level = form / max(_TEMPLATE_FORMS - 1, 1)  # 0 .. 1
    if label == "sickle cell":
        # A crescent: a disc with an equal disc, shifted sideways, cut out of it.
        outer = 1.3 * radius
        sdf = np.maximum(_sdf_disc(x, y, outer), -_sdf_disc(x, y, outer, cx=(0.30 + 0.04 * level) * outer))
        colour = np.broadcast_to(_SICKLE_BODY, (*shape, 3)).astype(np.float32)
        return _finish(_lerp(colour, _RBC_RIM, np.clip(sdf + 2.0, 0, 1) * 0.3), _coverage(sdf))
    if label == "elliptocyte":
        elongation = 1.28 + 0.14 * level
        major, minor = radius * elongation, radius / elongation * 1.05
        sdf = _sdf_ellipse(x, y, major, minor)
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
    colour = _lerp(np.broadcast_to(_RBC_BODY, (*shape, 3)), _RBC_PALLOR, pallor.astype(np.float32))
    colour = _lerp(colour, _RBC_RIM, np.clip((sdf + 2.5) / 2.5, 0, 1) * 0.35)
    return _finish(colour, _coverage(sdf))


def _draw_ring(
    rng: np.random.Generator, colour: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float, scale: float
) -> np.ndarray:
    """A ring-stage trophozoite: a thin, slightly open blue ring with a dark chromatin dot."""
    ring_r = rng.uniform(0.26, 0.36) * radius
    offset = rng.uniform(0.0, radius - ring_r - 2.0 * scale)
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = offset * math.cos(angle), offset * math.sin(angle)
    rx, ry = _rotate(x - cx, y - cy, rng.uniform(0, 2 * math.pi))
    ring = _sdf_arc(rx, ry, ring_r, rng.uniform(2.4, 3.0), 0.55 * scale)
    colour = _lerp(colour, _RING_CYTOPLASM, _coverage(ring) * 0.9)
    dot = _sdf_disc(rx, ry, 1.3 * scale, cx=-ring_r, cy=0.0)  # chromatin dot opposite the ring opening
    return _lerp(colour, _RING_CHROMATIN, _coverage(dot))


def render_platelet(rng: np.random.Generator, radius: float, scale: float = 1.0) -> CellPatch:
    """A platelet: a small irregular lilac fragment with a dark granular centre."""
    half = _patch_half(radius * 1.25)
    x, y = _grid(half, *rng.uniform(-0.5, 0.5, 2))
    sdf = _sdf_wobbly_disc(x, y, radius, 0.18, rng)
    shape = x.shape[1], y.shape[0]
    colour = np.broadcast_to(_PLATELET_BODY, (*shape, 3)).astype(np.float32)
    centre = np.clip(-sdf / (0.6 * radius), 0.0, 1.0) * (
        0.6 + 0.4 * _smooth_noise(rng, shape, 0.5 * scale).clip(-1, 1)
    )
    return _finish(_lerp(colour, _PLATELET_GRANULOMERE, np.clip(centre, 0.0, 1.0)), _coverage(sdf))


# ==================================================================================================
# Fields of view


@dataclass
class SyntheticCell:
    """One cell of a field, with its exact ground truth.

    Attributes:
        label: detection class name (vocabulary spelling, see :data:`DETECTION_LABELS`).
        cell_class: single-cell class name (:data:`CELL_CLASS_OF_LABEL`).
        center: ``(x, y)`` of the cell centre in image pixels.
        box: ``(4,)`` float32 tight ``xyxy`` box of the visible mask.
        mask: the cell's visible pixels as a bool array over the window ``offset`` .. ``offset + shape``.
        offset: ``(x0, y0)`` of ``mask``'s top-left pixel in the image.
        nucleus: nucleus pixels over the same window (white cells; ``None`` otherwise).
        truncated: the image border cuts the cell.
        fov_attributes: ``(6,)`` int64 LeukemiaAttri values (``UNKNOWN`` for non-white cells).
        spec: the white cell's :class:`WhiteCellSpec` (``None`` for other cells).
        parasites: ring-stage parasites inside (``"ring"`` cells).
    """

    label: str
    cell_class: str
    center: tuple[float, float]
    box: np.ndarray
    mask: np.ndarray
    offset: tuple[int, int]
    nucleus: np.ndarray | None = None
    truncated: bool = False
    fov_attributes: np.ndarray = field(
        default_factory=lambda: np.full(len(FOV_ATTRIBUTES), UNKNOWN, np.int64)
    )
    spec: WhiteCellSpec | None = None
    parasites: int = 0

    @property
    def is_wbc(self) -> bool:
        return self.spec is not None

    @property
    def cell_attributes(self) -> np.ndarray | None:
        """``(11,)`` WBCAtt value indices for white cells, ``None`` otherwise."""
        return None if self.spec is None else self.spec.cell_attribute_indices()

    def full_mask(self, shape: tuple[int, int], *, nucleus: bool = False) -> np.ndarray:
        """The cell's (or its nucleus') mask as a full-image ``(H, W)`` bool array."""
        out = np.zeros(shape, dtype=bool)
        local = self.nucleus if nucleus else self.mask
        if local is not None:
            x0, y0 = self.offset
            out[y0 : y0 + local.shape[0], x0 : x0 + local.shape[1]] = local
        return out


@dataclass
class FieldOfView:
    """One generated field with its ground truth.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        cells: every labelled cell (white cells first, then red cells, then platelets).
        mask: ``(H, W)`` bool segmentation mask of the configured :attr:`SyntheticConfig.mask_target`.
        condition: ``"healthy"``, ``"malaria"`` or the dominant abnormal red-cell shape.
        disease: disease context of the field (:data:`DISEASE_OF_CONDITION`).
    """

    image: np.ndarray
    cells: list[SyntheticCell]
    mask: np.ndarray
    condition: str
    disease: str

    @property
    def boxes(self) -> np.ndarray:
        """``(N, 4)`` float32 xyxy boxes of every cell."""
        return (
            np.stack([c.box for c in self.cells]).astype(np.float32)
            if self.cells
            else np.zeros((0, 4), np.float32)
        )

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` int64 indices into :data:`~unihema.data.vocab.DETECTION_CLASSES`."""
        return np.array([detection_index(c.label) for c in self.cells], dtype=np.int64)

    @property
    def box_attributes(self) -> np.ndarray:
        """``(N, 6)`` int64 FoV attributes (``UNKNOWN`` for non-white cells)."""
        if not self.cells:
            return np.zeros((0, len(FOV_ATTRIBUTES)), np.int64)
        return np.stack([c.fov_attributes for c in self.cells]).astype(np.int64)


class _Canvas:
    """The field being drawn, with the bookkeeping to paste cell patches and record their masks."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.image = np.empty((height, width, 3), np.float32)
        self.image[:] = _BACKGROUND

    def window(
        self, patch: CellPatch, cx: float, cy: float
    ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]] | None:
        """Where ``patch`` centred at pixel ``(cx, cy)`` lands: the (image, patch) windows, or None when
        it falls wholly outside."""
        half = patch.half
        x0, y0 = int(math.floor(cx)) - half, int(math.floor(cy)) - half
        size = 2 * half + 1
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + size, self.width), min(y0 + size, self.height)
        if ix0 >= ix1 or iy0 >= iy1:
            return None
        px0, py0 = ix0 - x0, iy0 - y0
        px1, py1 = px0 + (ix1 - ix0), py0 + (iy1 - iy0)
        return (ix0, iy0, ix1, iy1), (px0, py0, px1, py1)

    def composite(self, patch: CellPatch, windows: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        (ix0, iy0, ix1, iy1), (px0, py0, px1, py1) = windows
        region = self.image[iy0:iy1, ix0:ix1]
        region *= patch.transmittance[py0:py1, px0:px1]
        region += patch.premultiplied[py0:py1, px0:px1]


def _place(
    rng: np.random.Generator,
    radii: Sequence[float],
    centres: list[tuple[float, float]],
    bounds: list[float],
    width: int,
    height: int,
    *,
    inside: bool,
) -> list[tuple[float, float] | None]:
    """Random non-overlapping centres for circles of ``radii`` among already placed ones (mutated).

    ``inside`` keeps each circle wholly within the image; otherwise the centre may lie up to 0.6 radius
    outside (cells cut by the border). Returns ``None`` for a circle that found no room.
    """
    n_old, n_new = len(centres), len(radii)
    pos = np.empty((n_old + n_new, 2), np.float64)
    rad = np.empty(n_old + n_new, np.float64)
    pos[:n_old] = np.asarray(centres, np.float64).reshape(-1, 2)
    rad[:n_old] = bounds
    count = n_old
    # All candidates at once: one generator call per placement batch, not per cell.
    unit = rng.random((n_new, _PLACEMENT_TRIES, 2))
    placed: list[tuple[float, float] | None] = []
    for k, r in enumerate(radii):
        margin = r + 1.0 if inside else -0.6 * r
        span_x, span_y = width - 2 * margin, height - 2 * margin
        if span_x <= 0 or span_y <= 0:
            placed.append(None)
            continue
        cand_x = margin + unit[k, :, 0] * span_x
        cand_y = margin + unit[k, :, 1] * span_y
        if count:
            dx = cand_x[:, None] - pos[None, :count, 0]
            dy = cand_y[:, None] - pos[None, :count, 1]
            reach = rad[None, :count] + (r + PLACEMENT_GAP_PX)
            ok = np.all(dx * dx + dy * dy >= reach * reach, axis=1)
            hits = np.flatnonzero(ok)
            if len(hits) == 0:
                placed.append(None)
                continue
            first = int(hits[0])
        else:
            first = 0
        cx, cy = float(cand_x[first]), float(cand_y[first])
        pos[count] = cx, cy
        rad[count] = r
        count += 1
        placed.append((cx, cy))
        centres.append((cx, cy))
        bounds.append(float(r))
    return placed


def _choose_condition(rng: np.random.Generator, config: SyntheticConfig) -> str:
    u = rng.random()
    if u < config.malaria_fraction:
        return "malaria"
    if u < config.malaria_fraction + config.abnormal_field_fraction:
        return ABNORMAL_RBC_TYPES[int(rng.integers(len(ABNORMAL_RBC_TYPES)))]
    return "healthy"


def _rbc_labels(rng: np.random.Generator, config: SyntheticConfig, condition: str, count: int) -> list[str]:
    labels = np.array(["rbc"] * count, dtype=object)
    if condition == "malaria":
        infected = rng.random(count) < rng.uniform(*config.parasitaemia)
        labels[infected] = "ring"
    elif condition in ABNORMAL_RBC_TYPES:
        abnormal = rng.random(count) < rng.uniform(*config.abnormal_rbc_fraction)
        # Mostly the field's dominant shape, some of the other two.
        weights = np.array([0.8 if t == condition else 0.1 for t in ABNORMAL_RBC_TYPES])
        kinds = rng.choice(len(ABNORMAL_RBC_TYPES), size=count, p=weights / weights.sum())
        labels[abnormal] = np.array(ABNORMAL_RBC_TYPES, dtype=object)[kinds[abnormal]]
    return labels.tolist()


def generate_field(rng: np.random.Generator, config: SyntheticConfig) -> FieldOfView:
    """Generate one field of view (image, cells with exact ground truth, segmentation mask)."""
    height, width = config.height, config.width
    scale = config.scale
    condition = _choose_condition(rng, config)
    canvas = _Canvas(height, width)
    centres: list[tuple[float, float]] = []
    bounds: list[float] = []

    # White cells first (they need the most room), wholly inside the image.
    n_wbc = int(rng.integers(config.wbc_per_field[0], config.wbc_per_field[1] + 1))
    types = [config.wbc_types[i] for i in rng.integers(0, len(config.wbc_types), n_wbc)]
    specs = [sample_white_cell(rng, t) for t in types]
    wbc_patches = [render_white_cell(rng, spec, config.rbc_radius) for spec in specs]
    order = np.argsort([-p.half for p in wbc_patches], kind="stable")
    wbc_items = [(specs[i], wbc_patches[i]) for i in order]
    wbc_at = _place(rng, [float(p.half) for _, p in wbc_items], centres, bounds, width, height, inside=True)

    # Red cells: as many as the drawn area density asks for; border cells allowed.
    density = rng.uniform(*config.rbc_density)
    n_rbc = int(round(density * height * width / (math.pi * config.rbc_radius**2)))
    rbc_labels = _rbc_labels(rng, config, condition, n_rbc)
    rbc_radii = config.rbc_radius * rng.uniform(0.92, 1.08, n_rbc)
    rbc_bounds = [_rbc_bound(label, r) for label, r in zip(rbc_labels, rbc_radii)]
    rbc_at = _place(rng, rbc_bounds, centres, bounds, width, height, inside=False)

    n_platelets = int(rng.integers(config.platelets_per_field[0], config.platelets_per_field[1] + 1))
    platelet_radii = scale * rng.uniform(2.2, 3.6, n_platelets)
    platelet_at = _place(rng, [1.25 * r for r in platelet_radii], centres, bounds, width, height, inside=True)

    cells: list[SyntheticCell] = []

    def record(patch: CellPatch, at: tuple[float, float], label: str, **extra: Any) -> None:
        windows = canvas.window(patch, *at)
        if windows is None:
            return
        (ix0, iy0, ix1, iy1), (px0, py0, px1, py1) = windows
        mask = patch.mask[py0:py1, px0:px1]
        full = patch.area
        whole = (px0, py0, px1, py1) == (0, 0, *patch.mask.shape[::-1])
        if whole:
            visible = full
            r0, c0, r1, c1 = patch.bbox
        else:
            rows, cols = np.nonzero(mask)
            visible = len(rows)
            if visible == 0 or visible < MIN_VISIBLE_FRACTION * full:
                return  # mostly outside: not drawn, so nothing visible goes unlabelled
            r0, c0, r1, c1 = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
        canvas.composite(patch, windows)
        box = np.array([ix0 + c0, iy0 + r0, ix0 + c1, iy0 + r1], np.float32)
        nucleus = patch.nucleus[py0:py1, px0:px1] if extra.get("spec") is not None else None
        cells.append(
            SyntheticCell(
                label=label,
                cell_class=CELL_CLASS_OF_LABEL[label],
                center=(float(at[0]), float(at[1])),
                box=box,
                mask=mask.copy(),
                offset=(ix0, iy0),
                nucleus=None if nucleus is None else nucleus.copy(),
                truncated=visible < full,
                parasites=patch.parasites,
                **extra,
            )
        )

    for (spec, patch), at in zip(wbc_items, wbc_at):
        if at is not None:
            record(patch, at, spec.cell_type, spec=spec, fov_attributes=_fov_indices(spec))
    for label, radius, at in zip(rbc_labels, rbc_radii, rbc_at):
        if at is not None:
            parasites = 1 + int(rng.random() < 0.15) if label == "ring" else 0
            record(render_red_cell(rng, label, float(radius), parasites=parasites, scale=scale), at, label)
    for radius, at in zip(platelet_radii, platelet_at):
        if at is not None:
            record(render_platelet(rng, float(radius), scale), at, "platelet")

    image = _finish_image(rng, canvas.image, config)
    return FieldOfView(
        image=image,
        cells=cells,
        mask=_segmentation_mask(cells, (height, width), config.mask_target),
        condition=condition,
        disease=DISEASE_OF_CONDITION[condition],
    )


def _finish_image(rng: np.random.Generator, image: np.ndarray, config: SyntheticConfig) -> np.ndarray:
    """Illumination gradient, stain tint, optical blur and sensor noise; returns uint8."""
    height, width = image.shape[:2]
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * math.pi)
    gradient = (
        0.5 * config.illumination * rng.uniform(0.3, 1.0) * (math.cos(angle) * xs + math.sin(angle) * ys)
    )
    vignette = 0.5 * config.illumination * (xs * xs + ys * ys) / 2.0
    light = (1.0 + gradient - vignette).astype(np.float32)
    tint = (1.0 + rng.normal(0.0, 0.015, 3)).astype(np.float32)
    image = image * (light[..., None] * tint)
    if config.blur_sigma > 0:
        image = ndimage.gaussian_filter(image, (config.blur_sigma, config.blur_sigma, 0), truncate=3.0)
    if config.noise_std > 0:
        # Triangular noise from two random bytes per value: close to Gaussian, and several times faster
        # to draw than normal deviates (the noise is a large share of a field's cost).
        raw = np.frombuffer(rng.bytes(2 * image.size), dtype=np.uint8).reshape(2, *image.shape)
        noise = raw[0].astype(np.float32)
        noise += raw[1]
        noise -= 255.0
        image += noise * np.float32(config.noise_std / _TRIANGULAR_NOISE_STD)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _segmentation_mask(cells: list[SyntheticCell], shape: tuple[int, int], target: str) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for cell in cells:
        if (
            target == "all"
            or (target == "wbc" and cell.is_wbc)
            or (target == "rbc" and cell.label in RBC_LABELS)
        ):
            local = cell.mask
        elif target == "wbc_nucleus" and cell.is_wbc:
            local = cell.nucleus
        else:
            continue
        x0, y0 = cell.offset
        mask[y0 : y0 + local.shape[0], x0 : x0 + local.shape[1]] |= local
    return mask


# ==================================================================================================
# The corpus


def field_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of field ``index``: independent of every other field."""
    return np.random.default_rng([int(seed), int(index)])


@dataclass(frozen=True)
class CellCrop:
    """A single-cell crop: the cell and the square window (xyxy) it is cut from."""

    cell_index: int
    window: tuple[int, int, int, int]


class SyntheticCorpus:
    """The synthetic corpus: deterministic fields, splits and samples for every task.

    Fields are generated on first use and cached (``cache=False`` regenerates them each time, trading
    time for memory; the pixels are identical either way).

    Example::

        corpus = SyntheticCorpus(SyntheticConfig(n_images=200, seed=1))
        train = corpus.samples(Task.DETECTION, "train")
        corpus.write("data/synthetic")
    """

    def __init__(self, config: SyntheticConfig | None = None, *, cache: bool = True) -> None:
        self.config = config if config is not None else SyntheticConfig()
        self.cache = cache
        self._fields: dict[int, FieldOfView] = {}
        order = np.random.default_rng([int(self.config.seed), 0x5EED]).permutation(self.config.n_images)
        n = self.config.n_images
        n_train = int(round(self.config.split_fractions[0] * n))
        n_val = int(round(self.config.split_fractions[1] * n))
        n_val = min(n_val, n - n_train)
        self._split_of = np.empty(n, dtype=object)
        self._split_of[order[:n_train]] = "train"
        self._split_of[order[n_train : n_train + n_val]] = "val"
        self._split_of[order[n_train + n_val :]] = "test"

    def __len__(self) -> int:
        return self.config.n_images

    # ---------------------------------------------------------------------------------------- fields

    def field(self, index: int) -> FieldOfView:
        """Field ``index`` (generated on first use)."""
        if not 0 <= index < self.config.n_images:
            raise IndexError(f"field index {index} outside 0..{self.config.n_images - 1}")
        cached = self._fields.get(index)
        if cached is not None:
            return cached
        fov = generate_field(field_rng(self.config.seed, index), self.config)
        if self.cache:
            self._fields[index] = fov
        return fov

    def generate(self, workers: int = 1) -> None:
        """Generate (and cache) every field now, in ``workers`` processes.

        The fields are identical for any number of workers: each depends only on ``(seed, index)``.
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not self.cache:
            raise ValueError("generate() fills the field cache; this corpus was built with cache=False")
        missing = [i for i in range(self.config.n_images) if i not in self._fields]
        if workers == 1 or len(missing) < 2 * workers:
            for index in missing:
                self.field(index)
            return
        # Contiguous chunks, a few per worker, so pickling overhead stays small and the load balanced.
        n_chunks = min(len(missing), 4 * workers)
        chunks = [chunk.tolist() for chunk in np.array_split(np.asarray(missing), n_chunks)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for chunk, fields in zip(chunks, pool.map(_generate_chunk, [self.config] * len(chunks), chunks)):
                self._fields.update(zip(chunk, fields))

    def split_of(self, index: int) -> str:
        return str(self._split_of[index])

    def indices(self, split: str | None = None) -> list[int]:
        """Field indices of ``split`` (all fields for ``None``), ascending."""
        if split is None:
            return list(range(self.config.n_images))
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [int(i) for i in np.flatnonzero(self._split_of == split)]

    def fields(self, split: str | None = None) -> Iterator[tuple[int, FieldOfView]]:
        for index in self.indices(split):
            yield index, self.field(index)

    @staticmethod
    def annotated_classes(task: Task | str) -> tuple[str, ...]:
        """Vocabulary names of the classes the corpus annotates for ``task``."""
        task = Task(task)
        if task == Task.DETECTION:
            return DETECTION_LABELS
        if task == Task.FOV_MORPHOLOGY:
            return WBC_TYPES
        if task == Task.CLASSIFICATION:
            return CELL_CLASS_NAMES
        if task == Task.CELL_MORPHOLOGY:
            return WBC_TYPES
        return ()

    # --------------------------------------------------------------------------------------- samples

    def samples(self, task: Task | str, split: str | None = None) -> list[Sample]:
        """Every sample of ``task`` in ``split`` (``None`` = all splits), in field order."""
        task = Task(task)
        out: list[Sample] = []
        for index in self.indices(split):
            out.extend(self._field_samples(task, index, self.field(index)))
        return out

    def crops(self, index: int, fov: FieldOfView | None = None) -> list[CellCrop]:
        """The single-cell crops of field ``index`` (``fov``, when already at hand): every whole white
        cell, then a seeded choice of whole abnormal/infected red cells, normal red cells and platelets
        (at most the ``*_crops_per_field`` numbers of the config)."""
        fov = self.field(index) if fov is None else fov
        cfg = self.config
        rng = np.random.default_rng([int(cfg.seed), int(index), 0xC0])
        chosen: list[int] = []
        abnormal, normal, platelets = [], [], []
        for i, cell in enumerate(fov.cells):
            if cell.truncated:
                continue  # a cut cell would teach a partial look
            if cell.is_wbc:
                chosen.append(i)
            elif cell.label == "rbc":
                normal.append(i)
            elif cell.label == "platelet":
                platelets.append(i)
            else:
                abnormal.append(i)
        quotas = (
            (abnormal, cfg.abnormal_rbc_crops_per_field),
            (normal, cfg.rbc_crops_per_field),
            (platelets, cfg.platelet_crops_per_field),
        )
        for pool, k in quotas:
            if pool and k:
                chosen.extend(sorted(rng.choice(pool, size=min(k, len(pool)), replace=False).tolist()))
        return [CellCrop(i, self._crop_window(fov.cells[i])) for i in chosen]

    def _crop_window(self, cell: SyntheticCell) -> tuple[int, int, int, int]:
        height, width = self.config.height, self.config.width
        x0, y0, x1, y1 = cell.box.tolist()
        extent = max(x1 - x0, y1 - y0) * self.config.crop_scale
        side = max(self.config.crop_size, int(math.ceil(extent)) + 4)
        side = min(side, height, width)
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        left = int(min(max(round(cx - side / 2.0), 0), width - side))
        top = int(min(max(round(cy - side / 2.0), 0), height - side))
        return left, top, left + side, top + side

    def _field_samples(self, task: Task, index: int, fov: FieldOfView) -> list[Sample]:
        split = self.split_of(index)
        field_id = f"field_{index:05d}"
        height, width = self.config.height, self.config.width
        disease = fov.disease if self.config.disease_context else None
        common = {"dataset": DATASET_NAME, "split": split, "disease": disease}
        extra = {"split_group": field_id, "field_index": index, "condition": fov.condition}
        if task == Task.DETECTION:
            return [
                Sample(
                    image=ArrayImage(fov.image), task=task, sample_id=field_id,
                    boxes=fov.boxes, box_labels=fov.labels, box_attributes=fov.box_attributes,
                    image_size=(height, width), extra=dict(extra), **common,
                )
            ]  # fmt: skip
        if task == Task.FOV_MORPHOLOGY:
            keep = [i for i, c in enumerate(fov.cells) if c.is_wbc]
            if not keep:
                return []
            return [
                Sample(
                    image=ArrayImage(fov.image), task=task, sample_id=field_id,
                    boxes=fov.boxes[keep], box_labels=fov.labels[keep], box_attributes=fov.box_attributes[keep],
                    image_size=(height, width), extra=dict(extra), **common,
                )
            ]  # fmt: skip
        if task == Task.SEGMENTATION:
            return [
                Sample(
                    image=ArrayImage(fov.image), task=task, sample_id=field_id,
                    mask=ArrayMask(fov.mask), image_size=(height, width),
                    extra={**extra, "mask_target": self.config.mask_target}, **common,
                )
            ]  # fmt: skip
        out: list[Sample] = []
        for crop in self.crops(index, fov):
            cell = fov.cells[crop.cell_index]
            if task != Task.CLASSIFICATION and not cell.is_wbc:
                continue
            x0, y0, x1, y1 = crop.window
            sample = Sample(
                image=ArrayImage(fov.image[y0:y1, x0:x1]),
                task=Task.CLASSIFICATION if task == Task.CLASSIFICATION else Task.CELL_MORPHOLOGY,
                sample_id=f"{field_id}/cell_{crop.cell_index:03d}",
                cell_class=cell_index(cell.cell_class),
                cell_attributes=cell.cell_attributes if task != Task.CLASSIFICATION else None,
                image_size=(y1 - y0, x1 - x0),
                extra={
                    **extra,
                    "cell_index": crop.cell_index,
                    "crop": list(crop.window),
                    "label": cell.label,
                },
                **common,
            )
            if task.is_text:
                out.extend(self._text_samples(sample, task))
            else:
                out.append(sample)
        return out

    def _text_samples(self, sample: Sample, task: Task) -> list[Sample]:
        produced = text_samples(
            sample,
            seed=self.config.seed,
            max_vqa=self.config.max_vqa_per_cell if task == Task.VQA else 0,
            max_mlm=self.config.max_mlm_per_cell if task == Task.MLM else 0,
        )
        out = []
        for text_sample in produced:
            if text_sample.task == task:
                text_sample.extra = {**sample.extra, **text_sample.extra}
                out.append(text_sample)
        return out

    # ----------------------------------------------------------------------------------------- write

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """Save the corpus to ``out_dir`` and return the path of its ``synthetic.json`` summary.

        Layout (every file is written atomically; files of an earlier, larger corpus in the same folder
        are not removed)::

            out_dir/
              <split>/field_00000.png             field images (split = train, val, test)
              masks/<split>/field_00000.png       segmentation masks, 0 = background, 255 = foreground
              annotations/instances_<split>.json  COCO boxes (xywh) with "area" = mask pixels; white
                                                  cells also carry "attributes" (the 6 FoV attributes,
                                                  by value name) and "cell_attributes" (the 11 WBCAtt)
              manifest.jsonl                      every sample of every task (unihema.data.manifest);
                                                  crops are windows of the field images
              synthetic.json                      the config and the image / box count of each split

        The COCO files follow the standard layout (``images``, ``annotations``, ``categories`` with ids
        1..K in :data:`DETECTION_LABELS` order; images in the folder named after the file's
        ``instances_<split>`` stem), so the COCO reader and ``unihema data check`` load the boxes, and
        :class:`~unihema.data.manifest.ManifestDataset` loads every task.
        """
        root = Path(out_dir)
        root.mkdir(parents=True, exist_ok=True)
        categories = [
            {"id": k + 1, "name": name, "supercategory": _supercategory(name)}
            for k, name in enumerate(DETECTION_LABELS)
        ]
        category_id = {name: k + 1 for k, name in enumerate(DETECTION_LABELS)}
        counts: dict[str, dict[str, int]] = {}
        file_samples: list[Sample] = []
        for split in SPLITS:
            images, annotations = [], []
            for index in self.indices(split):
                fov = self.field(index)
                name = f"field_{index:05d}.png"
                image_path = root / split / name
                mask_path = root / "masks" / split / name
                atomic_save_image(Image.fromarray(fov.image), image_path)
                atomic_save_image(Image.fromarray(fov.mask.astype(np.uint8) * 255), mask_path)
                image_id = index + 1
                images.append(
                    {
                        "id": image_id,
                        "file_name": name,
                        "height": self.config.height,
                        "width": self.config.width,
                    }
                )
                for cell in fov.cells:
                    annotations.append(_coco_annotation(cell, len(annotations) + 1, image_id, category_id))
                file_samples.extend(self._file_samples(index, fov, image_path, mask_path))
            coco = {
                "info": {"description": "UniHema synthetic blood-smear corpus", "version": "1"},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": categories,
            }
            atomic_write_bytes(
                root / "annotations" / f"instances_{split}.json",
                json.dumps(coco, separators=(",", ":")).encode(),
            )
            counts[split] = {"n_images": len(images), "n_boxes": len(annotations)}
        write_manifest(file_samples, root / "manifest.jsonl", relative_paths=True)
        index_path = root / "synthetic.json"
        summary = {"dataset": DATASET_NAME, "config": self.config.to_dict(), "splits": counts}
        atomic_write_bytes(index_path, json.dumps(summary, indent=2).encode())
        return index_path

    def _file_samples(self, index: int, fov: FieldOfView, image_path: Path, mask_path: Path) -> list[Sample]:
        """Every task's samples of one field, re-pointed at the written files."""
        out: list[Sample] = []
        for task in Task:
            for sample in self._field_samples(task, index, fov):
                crop = sample.extra.get("crop")
                sample.image = FileImage(image_path, tuple(crop) if crop is not None else None)
                if sample.mask is not None:
                    sample.mask = FileMask(mask_path, foreground=(255,))
                sample.source_path = image_path
                out.append(sample)
        return out


def _supercategory(label: str) -> str:
    if label in WBC_TYPES:
        return "white cell"
    if label == "platelet":
        return "platelet"
    return "red cell"


def _coco_annotation(cell: SyntheticCell, ann_id: int, image_id: int, category_id: Mapping[str, int]) -> dict:
    x0, y0, x1, y1 = (float(v) for v in cell.box)
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id[cell.label],
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": float(cell.mask.sum()),
        "iscrowd": 0,
    }
    if cell.spec is not None:
        fov = fov_attributes_for(cell.spec)
        ann["attributes"] = {name: fov[name] for name in FOV_ATTRIBUTE_NAMES}
        ann["cell_attributes"] = {name: cell.spec.attributes[name] for name in CELL_ATTRIBUTE_NAMES}
    if cell.parasites:
        ann["parasites"] = cell.parasites
    if cell.truncated:
        ann["truncated"] = True
    return ann


def _generate_chunk(config: SyntheticConfig, indices: list[int]) -> list[FieldOfView]:
    """Worker-process body of :meth:`SyntheticCorpus.generate`."""
    return [generate_field(field_rng(config.seed, index), config) for index in indices]


def generate_corpus(
    config: SyntheticConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    workers: int = 1,
) -> SyntheticCorpus:
    """Build a :class:`SyntheticCorpus`, generate every field (in ``workers`` processes), and write it to
    ``out_dir`` if given."""
    corpus = SyntheticCorpus(config)
    corpus.generate(workers)
    if out_dir is not None:
        corpus.write(out_dir)
    return corpus


__all__ = [
    "DATASET_NAME",
    "DETECTION_LABELS",
    "MASK_TARGETS",
    "WBC_TYPES",
    "CellPatch",
    "FieldOfView",
    "SyntheticCell",
    "SyntheticConfig",
    "SyntheticCorpus",
    "WhiteCellSpec",
    "fov_attributes_for",
    "generate_corpus",
    "generate_field",
    "render_platelet",
    "render_red_cell",
    "render_white_cell",
    "sample_white_cell",
]
