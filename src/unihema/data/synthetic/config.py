"""The generator's settings: :class:`SyntheticConfig`, every knob of the corpus (field size and count,
seed, cell densities and mixes, field conditions, crop sizes, mask target, splits, text samples, imaging
degradations), validated and normalised in ``__post_init__`` so that the rest of the package can rely on
well-formed values."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unihema.data.synthetic.labels import MASK_TARGETS, WBC_TYPES
from unihema.data.synthetic.palette import REFERENCE_RBC_RADIUS, WBC_RADIUS
from unihema.data.text.vqa import VQA_CHECKS
from unihema.validation import ValidationError


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
        vqa_checks: yes/no checks of the training split's cells (:data:`unihema.data.text.vqa.VQA_CHECKS`):
            ``"one"`` per class and attribute, naming the true value or a distractor, or ``"both"``
            complementary checks of the same cell, kept together. Validation and test cells keep one
            check each, so their scores stay comparable between the two.
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
    vqa_checks: str = "one"
    disease_context: bool = True
    illumination: float = 0.08
    noise_std: float = 3.0
    blur_sigma: float = 0.6

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValidationError.for_field(f"SyntheticConfig.{name}", why, getattr(self, name))

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
        min_side = math.ceil(4 * WBC_RADIUS["monocyte"][0] * self.rbc_radius / REFERENCE_RBC_RADIUS)
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
        if self.vqa_checks not in VQA_CHECKS:
            fail("vqa_checks", f"must be one of {VQA_CHECKS}")
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
            raise ValidationError.for_field(f"SyntheticConfig.{name}", "must be a (low, high) pair", value)
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
        return self.rbc_radius / REFERENCE_RBC_RADIUS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
