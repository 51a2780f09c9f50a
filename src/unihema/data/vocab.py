"""Unified label vocabularies and attribute schemas.

- :data:`DETECTION_CLASSES` starts with the 29 detection classes of the authors' model (their ids 1..29, in
  order; their id 0 is unused), followed by classes of the real datasets and the synthetic corpus that the
  upstream list lacks.
- :data:`CELL_CLASSES` starts with the 45 single-cell classes of the authors' model (their ids 0..44, in
  order), followed by the extra classes of the datasets we read.
- :data:`FOV_ATTRIBUTES`: the 6 binary LeukemiaAttri field-of-view attributes (per detected WBC).
- :data:`CELL_ATTRIBUTES`: the 11 WBCAtt single-cell attributes with their value sets.

Names are lower case. :func:`detection_index` and :func:`cell_index` accept any spelling listed in the
alias tables (``"Platelets"``, ``"PLT"``, ``"PC"`` ...) and raise ``KeyError`` naming the unknown label.
"""

from __future__ import annotations

import re

UPSTREAM_DETECTION_CLASSES: tuple[str, ...] = (
    "myeloblast", "lymphoblast", "neutrophil", "atypical lymphocyte", "promonocyte", "monoblast",
    "lymphocyte", "myelocyte", "abnormal promyelocyte", "monocyte", "metamyelocyte", "eosinophil",
    "basophil", "unidentified", "gametocyte", "schizont", "trophozoite", "ring",
    "concentrated leishman parasite", "leishman parasite", "platelet", "sickle cell", "rbc", "wbc",
    "parasite", "plasmodium", "tb bacillus", "leukocyte", "difficult",
)  # fmt: skip

EXTRA_DETECTION_CLASSES: tuple[str, ...] = (
    "p. falciparum", "p. vivax", "target cell", "elliptocyte",
)  # fmt: skip

DETECTION_CLASSES: tuple[str, ...] = UPSTREAM_DETECTION_CLASSES + EXTRA_DETECTION_CLASSES

UPSTREAM_CELL_CLASSES: tuple[str, ...] = (
    "abnormal eosinophil", "artefact", "basophil", "blast", "erythroblast", "eosinophil", "faggot cell",
    "hairy cell", "smudge cell", "immature lymphocyte", "lymphocyte", "metamyelocyte", "monocyte",
    "myelocyte", "band neutrophil", "segmented neutrophil", "not identifiable", "other cell",
    "proerythroblast", "plasma cell", "promyelocyte", "myeloblast", "monoblast", "atypical lymphocyte",
    "neutrophil", "lymphocyte variant", "giant thrombocyte", "blast no lineage", "promonocyte",
    "thrombocyte aggregation", "unidentified", "normoblast", "prolymphocyte", "wbc", "rbc", "platelet",
    "lymphoblast", "neutrophil band", "babesia", "leishmania", "leukocyte", "plasmodium", "toxoplasma",
    "trichomonad", "trypanosome",
)  # fmt: skip

EXTRA_CELL_CLASSES: tuple[str, ...] = (
    # PBC
    "immature granulocyte",
    # Chula RBC-12
    "normal rbc", "macrocyte", "microcyte", "spherocyte", "target cell", "stomatocyte", "ovalocyte",
    "teardrop cell", "burr cell", "schistocyte", "uncategorised rbc", "hypochromic rbc", "elliptocyte",
    # erythrocytesIDB (sickle-cell disease RBC shapes)
    "circular rbc", "elongated rbc", "other rbc shape",
    # field-level sickle-cell screening (whole field of view)
    "sickle-positive field", "sickle-negative field",
    # malaria single-cell screening
    "parasitized rbc", "uninfected rbc",
)  # fmt: skip

CELL_CLASSES: tuple[str, ...] = UPSTREAM_CELL_CLASSES + EXTRA_CELL_CLASSES

# Spellings seen in datasets -> canonical vocabulary name (keys are normalised with `normalize_label`).
DETECTION_ALIASES: dict[str, str] = {
    "platelets": "platelet", "plt": "platelet", "pc": "platelet", "thrombocyte": "platelet",
    "red blood cell": "rbc", "red blood cells": "rbc", "erythrocyte": "rbc",
    "white blood cell": "wbc", "white blood cells": "wbc",
    "sickle cells": "sickle cell", "sickle": "sickle cell",
    "none": "unidentified", "tbbacillus": "tb bacillus",
    "concentrated_leishman_parasite": "concentrated leishman parasite",
    "p.falciparum": "p. falciparum", "p falciparum": "p. falciparum", "falciparum": "p. falciparum",
    "p.vivax": "p. vivax", "p vivax": "p. vivax", "vivax": "p. vivax",
}  # fmt: skip

CELL_ALIASES: dict[str, str] = {
    "platelets": "platelet", "thrombocyte": "platelet", "plt": "platelet",
    "ig": "immature granulocyte", "bne": "band neutrophil", "sne": "segmented neutrophil",
    "normal cell": "normal rbc", "normal": "normal rbc", "uncategorised": "uncategorised rbc",
    "uncategorized": "uncategorised rbc", "hypochromia": "hypochromic rbc", "teardrop": "teardrop cell",
    "circular": "circular rbc", "elongated": "elongated rbc", "falciforme": "elongated rbc",
    "other": "other rbc shape", "outras": "other rbc shape",
    "parasitized": "parasitized rbc", "uninfected": "uninfected rbc",
}  # fmt: skip

# LeukemiaAttri field-of-view attributes: name -> value names (value index = position).
FOV_ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nuclear_chromatin", ("open", "coarse")),
    ("nuclear_shape", ("regular", "irregular")),
    ("nucleolus", ("inconspicuous", "prominent")),
    ("cytoplasm", ("scanty", "abundant")),
    ("cytoplasmic_basophilia", ("slight", "moderate")),
    ("cytoplasmic_vacuoles", ("absent", "prominent")),
)

# WBCAtt single-cell attributes: name -> value names, in the order of the WBCAtt CSV columns.
CELL_ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cell_size", ("big", "small")),
    ("cell_shape", ("round", "irregular")),
    ("nucleus_shape", (
        "unsegmented-band", "unsegmented-round", "unsegmented-indented", "segmented-bilobed",
        "segmented-multilobed", "irregular",
    )),
    ("nuclear_cytoplasmic_ratio", ("low", "high")),
    ("chromatin_density", ("densely", "loosely")),
    ("cytoplasm_vacuole", ("no", "yes")),
    ("cytoplasm_texture", ("clear", "frosted")),
    ("cytoplasm_colour", ("light blue", "blue", "purple blue")),
    ("granule_type", ("small", "round", "coarse", "nil")),
    ("granule_colour", ("pink", "purple", "red", "nil")),
    ("granularity", ("yes", "no")),
)  # fmt: skip

FOV_ATTRIBUTE_NAMES: tuple[str, ...] = tuple(name for name, _ in FOV_ATTRIBUTES)
CELL_ATTRIBUTE_NAMES: tuple[str, ...] = tuple(name for name, _ in CELL_ATTRIBUTES)

_DETECTION_INDEX = {name: i for i, name in enumerate(DETECTION_CLASSES)}
_CELL_INDEX = {name: i for i, name in enumerate(CELL_CLASSES)}


def normalize_label(name: str) -> str:
    """Lower case, ``_`` as space, collapsed whitespace: ``" Sickle_Cells "`` -> ``"sickle cells"``."""
    return re.sub(r"\s+", " ", name.replace("_", " ").strip().lower())


def _lookup(name: str, index: dict[str, int], aliases: dict[str, str], vocab: str) -> int:
    key = normalize_label(name)
    for candidate in (key, aliases.get(key), aliases.get(name.strip().lower())):
        if candidate is not None and candidate in index:
            return index[candidate]
    raise KeyError(f"unknown {vocab} class {name!r}: add it to unihema.data.vocab or to its alias table")


def detection_index(name: str) -> int:
    """Index of a detection class name or alias in :data:`DETECTION_CLASSES`."""
    return _lookup(name, _DETECTION_INDEX, DETECTION_ALIASES, "detection")


def cell_index(name: str) -> int:
    """Index of a single-cell class name or alias in :data:`CELL_CLASSES`."""
    return _lookup(name, _CELL_INDEX, CELL_ALIASES, "single-cell")


def attribute_value_index(schema: tuple[tuple[str, tuple[str, ...]], ...], attribute: str, value: str) -> int:
    """Index of ``value`` for ``attribute`` in an attribute schema; raises ``KeyError`` naming both."""
    for name, values in schema:
        if name == attribute:
            normalised = value.strip().lower()
            if normalised in values:
                return values.index(normalised)
            raise KeyError(f"attribute {attribute!r} has no value {value!r} (expected one of {values})")
    raise KeyError(f"unknown attribute {attribute!r}")
