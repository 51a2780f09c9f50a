"""What a white cell is before it is drawn: the per-type priors over the 11 WBCAtt attributes (close to
the WBCAtt training-set frequencies), :class:`WhiteCellSpec` holding one cell's type, attributes and
nucleolus, :func:`sample_white_cell` drawing a spec from the prior, and :func:`fov_attributes_for`
deriving the 6 LeukemiaAttri FoV attributes from the same traits, so both label sets describe the same
pixels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from unihema.data.synthetic.labels import WBC_TYPES
from unihema.data.vocab import (
    CELL_ATTRIBUTE_NAMES,
    CELL_ATTRIBUTES,
    FOV_ATTRIBUTE_NAMES,
    FOV_ATTRIBUTES,
    attribute_value_index,
)

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


def fov_indices(spec: WhiteCellSpec) -> np.ndarray:
    values = fov_attributes_for(spec)
    return np.array(
        [attribute_value_index(FOV_ATTRIBUTES, name, values[name]) for name in FOV_ATTRIBUTE_NAMES],
        dtype=np.int64,
    )
