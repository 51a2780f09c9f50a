"""Descriptions of a cell and the masked sentences made from them (the MLM task's supervision)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from unihema.data.text.attributes import (
    MLM_PREFIX,
    NIL,
    NO,
    YES,
    article,
    canonical_class,
    known_attributes,
    seeded_rng,
    sentinel,
)

MLM_MASK_COUNTS: tuple[int, ...] = (1, 2, 3)
"""Number of attribute words hidden in each random masked-sentence variant (one variant per entry)."""


@dataclass(frozen=True)
class _Slot:
    """A maskable word of the description and the attribute (or ``"class"``) it expresses."""

    source: str
    text: str


_Piece = str | _Slot


def _join_and(items: list[list[_Piece]], *, serial_comma: bool = False) -> list[_Piece]:
    """``[a], [b], [c]`` -> ``a, b and c`` (or ``a, b, and c``) as a flat piece list."""
    out: list[_Piece] = []
    last = ", and " if serial_comma and len(items) > 2 else " and "
    for i, item in enumerate(items):
        if i > 0:
            out.append(last if i == len(items) - 1 else ", ")
        out.extend(item)
    return out


def _description_pieces(cls: str, known: Mapping[str, str]) -> list[_Piece]:
    """The description as literal text and maskable slots (see :func:`describe`)."""

    def slot(name: str) -> _Slot:
        return _Slot(name, known[name])

    subject: list[_Piece] = [_Slot("class", cls)] if cls else ["cell"]

    cell = [[slot(n)] for n in ("cell_size", "cell_shape") if n in known]

    clauses: list[list[_Piece]] = []
    if "nucleus_shape" in known:
        clause: list[_Piece] = ["the nucleus is ", slot("nucleus_shape")]
        if "chromatin_density" in known:
            clause += [" with ", slot("chromatin_density"), " packed chromatin"]
        clauses.append(clause)
    elif "chromatin_density" in known:
        clauses.append(["the chromatin is ", slot("chromatin_density"), " packed"])
    if "nuclear_cytoplasmic_ratio" in known:
        clauses.append(["the nuclear-to-cytoplasmic ratio is ", slot("nuclear_cytoplasmic_ratio")])

    cytoplasm: list[list[_Piece]] = []
    looks = [[slot(n)] for n in ("cytoplasm_texture", "cytoplasm_colour") if n in known]
    if looks:
        cytoplasm.append(["is ", *_join_and(looks)])
    if "cytoplasm_vacuole" in known:
        word = "visible" if known["cytoplasm_vacuole"] == YES else "no"
        cytoplasm.append(["has ", _Slot("cytoplasm_vacuole", word), " vacuoles"])
    granule_words = [slot(n) for n in ("granule_type", "granule_colour") if known.get(n, NIL) != NIL]
    granularity = known.get("granularity")
    if granularity == NO:
        cytoplasm.append(["contains ", _Slot("granularity", "no"), " granules"])
    elif granule_words:
        cytoplasm.append(["contains ", *_join_words(granule_words), " granules"])
    elif granularity == YES:
        cytoplasm.append(["contains ", _Slot("granularity", "visible"), " granules"])
    elif known.get("granule_type") == NIL or known.get("granule_colour") == NIL:
        source = "granule_type" if known.get("granule_type") == NIL else "granule_colour"
        cytoplasm.append(["contains ", _Slot(source, "no"), " granules"])
    if cytoplasm:
        clauses.append(["the cytoplasm ", *_join_and(cytoplasm)])

    if cell:
        head: list[_Piece] = ["This ", *subject, " is ", *_join_and(cell)]
        if clauses:
            head.append("; ")
        body = _join_and(clauses, serial_comma=True)
    elif clauses:
        head = ["In this ", *subject, ", "]
        body = _join_and(clauses, serial_comma=True)
    else:
        # Nothing but (maybe) the class: the article is chosen from the class word.
        return ["This is ", article(cls) + " " if cls else "a ", *subject, "."]
    return [*head, *body, "."]


def _join_words(words: list[_Slot]) -> list[_Piece]:
    out: list[_Piece] = []
    for i, word in enumerate(words):
        if i:
            out.append(" ")
        out.append(word)
    return out


def _render(pieces: list[_Piece], masked: frozenset[int] = frozenset()) -> str:
    """Text of ``pieces``; slots whose position is in ``masked`` become sentinels numbered left to right."""
    parts: list[str] = []
    next_sentinel = 0
    for i, piece in enumerate(pieces):
        if isinstance(piece, _Slot):
            if i in masked:
                parts.append(sentinel(next_sentinel))
                next_sentinel += 1
            else:
                parts.append(piece.text)
        else:
            parts.append(piece)
    return "".join(parts)


def describe(cell_class: str, attributes: Mapping[str, str]) -> str:
    """One description sentence of a cell from its class and attributes.

    Example: ``"This neutrophil is big and round; the nucleus is segmented-bilobed with densely packed
    chromatin, the nuclear-to-cytoplasmic ratio is low, and the cytoplasm is clear and light blue, has no
    vacuoles and contains small pink granules."`` Missing attributes are left out of the sentence.
    """
    return _render(_description_pieces(canonical_class(cell_class), known_attributes(attributes)))


def masked_sentences(
    cell_class: str, attributes: Mapping[str, str], *, seed: int | str = 0
) -> list[tuple[str, str]]:
    """Masked-sentence completion pairs built from :func:`describe`.

    The first variant hides the class name (when the class and at least one attribute are known); then one
    variant per entry of :data:`MLM_MASK_COUNTS` hides that many attribute words chosen by ``seed``. Hidden
    words are replaced by ``<extra_id_0>``, ``<extra_id_1>``... from left to right. Duplicate prompts are
    dropped.

    Returns:
        ``[("mask: <sentence with sentinels>", "<complete sentence>"), ...]``; empty when nothing is known.
    """
    cls = canonical_class(cell_class)
    known = known_attributes(attributes)
    pieces = _description_pieces(cls, known)
    target = _render(pieces)
    slots = [i for i, p in enumerate(pieces) if isinstance(p, _Slot)]
    attribute_slots = [i for i in slots if pieces[i].source != "class"]  # type: ignore[union-attr]
    class_slots = [i for i in slots if pieces[i].source == "class"]  # type: ignore[union-attr]
    rng = seeded_rng(seed, cls, known, "mlm")

    variants: list[frozenset[int]] = []
    if class_slots and attribute_slots:
        variants.append(frozenset(class_slots))
    for count in MLM_MASK_COUNTS:
        if attribute_slots:
            variants.append(frozenset(rng.sample(attribute_slots, min(count, len(attribute_slots)))))
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for masked in variants:
        prompt = MLM_PREFIX + _render(pieces, masked)
        if prompt not in seen:
            seen.add(prompt)
            pairs.append((prompt, target))
    return pairs
