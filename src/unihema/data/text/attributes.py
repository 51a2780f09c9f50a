"""Cell attributes as words: validation, decoding, and the declarative sentence of each value.

Shared by the VQA templates (:mod:`unihema.data.text.vqa`) and the descriptions and masked sentences
(:mod:`unihema.data.text.descriptions`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence

import numpy as np

from unihema.data.schema import UNKNOWN
from unihema.data.vocab import (
    CELL_ATTRIBUTE_NAMES,
    CELL_ATTRIBUTES,
    CELL_CLASSES,
    cell_index,
    normalize_label,
)

VQA_PREFIX = "Q: "
"""Prefix of every VQA prompt (the paper: "For Question Answer, the prompt starts with Q:")."""

MLM_PREFIX = "mask: "
"""Prefix of every masked-sentence prompt (the paper: "... starts with mask: tokens")."""

MISSING_VALUES = frozenset({"", "unknown", "n/a", "na", "-1"})
"""Attribute strings treated as "not annotated" (compared after lower-casing and stripping)."""

NIL = "nil"
"""WBCAtt's value for granule type / colour of a cell without granules."""

YES, NO = "yes", "no"

ANSWER_STYLES: tuple[str, ...] = ("sentence", "word")
"""``sentence``: answers are short sentences ("The nucleus is segmented-bilobed."), like the paper's
WBCAtt-VQA answers, so BLEU-4 measures them; ``word``: the bare value ("segmented-bilobed", "yes")."""

# Declarative answer for each attribute value: ``{value}`` is filled in; yes/no attributes have one
# sentence per value.
_STATEMENTS: dict[str, str | dict[str, str]] = {
    "cell_size": "the cell is {value}",
    "cell_shape": "the cell is {value} in shape",
    "nucleus_shape": "the nucleus is {value}",
    "nuclear_cytoplasmic_ratio": "the nuclear-to-cytoplasmic ratio is {value}",
    "chromatin_density": "the chromatin is {value} packed",
    "cytoplasm_vacuole": {
        "yes": "vacuoles are present in the cytoplasm",
        "no": "the cytoplasm has no vacuoles",
    },
    "cytoplasm_texture": "the cytoplasm is {value}",
    "cytoplasm_colour": "the cytoplasm is {value}",
    "granule_type": "the granules are {value}",
    "granule_colour": "the granules are {value}",
    "granularity": {"yes": "the cytoplasm is granular", "no": "the cytoplasm is not granular"},
}

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = dict(CELL_ATTRIBUTES)
"""Each WBCAtt attribute's value names."""

assert set(_STATEMENTS) == set(CELL_ATTRIBUTE_NAMES), "a WBCAtt attribute has no answer sentence"


def sentinel(index: int) -> str:
    """The T5 sentinel token number ``index`` (``<extra_id_0>``, ``<extra_id_1>``...)."""
    return f"<extra_id_{index}>"


def statement(name: str, value: str) -> str:
    """The lower-case clause stating that attribute ``name`` has ``value`` ("the nucleus is round")."""
    template = _STATEMENTS[name]
    return template[value] if isinstance(template, dict) else template.format(value=value)


def sentence_case(text: str) -> str:
    """``text`` capitalised and closed with a full stop."""
    return text[0].upper() + text[1:] + "."


def seeded_rng(
    seed: int | str, cell_class: str, attributes: Mapping[str, str], purpose: str
) -> random.Random:
    """A generator seeded from a stable digest of everything that defines the output."""
    key = "\x1f".join([str(seed), purpose, cell_class, *(f"{k}={attributes[k]}" for k in sorted(attributes))])
    return random.Random(int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big"))


def canonical_class(cell_class: str | None) -> str:
    """Vocabulary name of a class (``"Neutrophil"`` -> ``"neutrophil"``, ``"ig"`` -> ``"immature
    granulocyte"``); a name the vocabulary lacks is kept, normalised. ``""`` means unknown."""
    if cell_class is None or not cell_class.strip():
        return ""
    try:
        return CELL_CLASSES[cell_index(cell_class)]
    except KeyError:
        return normalize_label(cell_class)


def known_attributes(attributes: Mapping[str, str | None]) -> dict[str, str]:
    """Validated, normalised ``{attribute: value}`` without the missing ones.

    Raises:
        ValueError: naming an unknown attribute or a value outside the attribute's WBCAtt value set.
    """
    known: dict[str, str] = {}
    for name, raw in attributes.items():
        if name not in ATTRIBUTE_VALUES:
            raise ValueError(
                f"unknown cell attribute {name!r}; expected one of {', '.join(CELL_ATTRIBUTE_NAMES)}"
            )
        if raw is None:
            continue
        value = " ".join(str(raw).strip().lower().split())
        if value in MISSING_VALUES:
            continue
        if value not in ATTRIBUTE_VALUES[name]:
            raise ValueError(
                f"cell attribute {name!r} has no value {raw!r}; expected one of {ATTRIBUTE_VALUES[name]}"
            )
        known[name] = value
    # Keep schema order so that every output is independent of the mapping's insertion order.
    return {name: known[name] for name in CELL_ATTRIBUTE_NAMES if name in known}


def decode_attributes(values: Sequence[int] | np.ndarray) -> dict[str, str]:
    """``Sample.cell_attributes`` (value indices, ``UNKNOWN`` = -1) -> ``{attribute: value name}``.

    Unknown attributes are left out. Raises ``ValueError`` on a wrong length or an out-of-range index.
    """
    array = np.asarray(values, dtype=np.int64).reshape(-1)
    if len(array) != len(CELL_ATTRIBUTES):
        raise ValueError(f"expected {len(CELL_ATTRIBUTES)} cell attribute indices, got {len(array)}")
    decoded: dict[str, str] = {}
    for (name, names), index in zip(CELL_ATTRIBUTES, array.tolist()):
        if index == UNKNOWN:
            continue
        if not 0 <= index < len(names):
            raise ValueError(f"cell attribute {name!r}: index {index} outside 0..{len(names) - 1} ({names})")
        decoded[name] = names[index]
    return decoded


def article(word: str) -> str:
    """The indefinite article before ``word`` ("a" or "an")."""
    return "an" if word[:1] in "aeiou" else "a"


# ------------------------------------------------------------------------------------------------ VQA
