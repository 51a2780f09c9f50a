"""Text supervision from single-cell morphology attributes: VQA pairs and masked sentences.

The paper's WBCAtt-VQA set was produced by prompting a medical language model with each cell's
ground-truth attributes. That corpus is not released, so UniHema builds the same two kinds of text
supervision from *deterministic templates* over the 11 WBCAtt attributes
(:data:`unihema.data.vocab.CELL_ATTRIBUTES`) and the cell class:

- :func:`vqa_pairs` — ``("Q: What is the shape of the nucleus?", "segmented-bilobed")``: one open question
  per annotated attribute, a class question, and yes/no verification questions;
- :func:`masked_sentences` — ``("mask: ... <extra_id_0> ...", "<complete sentence>")``: the description of
  :func:`describe` with one or more attribute words replaced by T5 sentinels;
- :func:`text_samples` — turns a :class:`~unihema.data.schema.Sample` with ``cell_attributes`` into VQA and
  MLM samples that share its image.

Attributes whose value is missing (absent key, ``None``, ``""``, ``"unknown"``) are never asked about nor
described. ``"nil"`` granule type / colour means "no granules": it is described as such but no open
question is asked about the type or colour of granules that are not there.

Everything is deterministic: the wording variant of each template and the choice of yes/no distractors
and masked words come from a random generator seeded by a SHA-256 of ``seed`` and the inputs, never from
Python's salted ``hash``. See ``docs/text-supervision.md``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from unihema.data.schema import UNKNOWN, Sample, Task
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

WBC_CLASSES: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
"""Distractors for "Is this a ...?" questions (the five WBCAtt classes)."""

MLM_MASK_COUNTS: tuple[int, ...] = (1, 2, 3)
"""Number of attribute words hidden in each random masked-sentence variant (one variant per entry)."""

YES, NO = "yes", "no"

SOURCE_CELL_KEY = "source_cell"
"""``Sample.extra`` key of a text sample's cell: ``{"cell_class": name, "attributes": {name: value}}``."""

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


def sentinel(index: int) -> str:
    """The T5 sentinel token number ``index`` (``<extra_id_0>``, ``<extra_id_1>``...)."""
    return f"<extra_id_{index}>"


@dataclass(frozen=True)
class _AttributeText:
    """How one attribute is asked about.

    Attributes:
        questions: wording variants of the open question (without the ``Q:`` prefix); the answer is the
            attribute value itself.
        check: yes/no verification question with a ``{value}`` placeholder, or ``None`` when the open
            question is already a yes/no question (binary ``yes``/``no`` attributes).
    """

    questions: tuple[str, ...]
    check: str | None


_ATTRIBUTE_TEXT: dict[str, _AttributeText] = {
    "cell_size": _AttributeText(
        ("What is the size of the cell?", "How large is this cell?"), "Is the cell {value}?"
    ),
    "cell_shape": _AttributeText(
        ("What is the shape of the cell?", "What shape is the cell outline?"), "Is the cell {value} in shape?"
    ),
    "nucleus_shape": _AttributeText(
        ("What is the shape of the nucleus?", "How would you describe the nucleus shape?"),
        "Is the nucleus {value}?",
    ),
    "nuclear_cytoplasmic_ratio": _AttributeText(
        ("What is the nuclear-to-cytoplasmic ratio?", "Is the nuclear-to-cytoplasmic ratio low or high?"),
        "Is the nuclear-to-cytoplasmic ratio {value}?",
    ),
    "chromatin_density": _AttributeText(
        ("How is the chromatin packed?", "Is the chromatin densely or loosely packed?"),
        "Is the chromatin {value} packed?",
    ),
    "cytoplasm_vacuole": _AttributeText(
        ("Does the cytoplasm contain vacuoles?", "Are vacuoles visible in the cytoplasm?"), None
    ),
    "cytoplasm_texture": _AttributeText(
        ("What is the texture of the cytoplasm?", "Does the cytoplasm look clear or frosted?"),
        "Is the cytoplasm {value}?",
    ),
    "cytoplasm_colour": _AttributeText(
        ("What is the colour of the cytoplasm?", "What colour is the cytoplasm?"),
        "Is the cytoplasm {value} in colour?",
    ),
    "granule_type": _AttributeText(
        ("What type of granules does the cytoplasm contain?", "What kind of granules are present?"),
        "Are the granules {value}?",
    ),
    "granule_colour": _AttributeText(
        ("What is the colour of the granules?", "What colour are the granules?"),
        "Are the granules {value}?",
    ),
    "granularity": _AttributeText(
        ("Is the cytoplasm granular?", "Are granules present in the cytoplasm?"), None
    ),
}

_CLASS_QUESTIONS: tuple[str, ...] = ("What type of cell is this?", "Which cell type is shown?")

_ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = dict(CELL_ATTRIBUTES)
assert set(_ATTRIBUTE_TEXT) == set(CELL_ATTRIBUTE_NAMES), "a WBCAtt attribute has no question template"
assert set(_STATEMENTS) == set(CELL_ATTRIBUTE_NAMES), "a WBCAtt attribute has no answer sentence"


def _statement(name: str, value: str) -> str:
    template = _STATEMENTS[name]
    return template[value] if isinstance(template, dict) else template.format(value=value)


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


# --------------------------------------------------------------------------------------------- inputs


def _rng(seed: int | str, cell_class: str, attributes: Mapping[str, str], purpose: str) -> random.Random:
    """A generator seeded from a stable digest of everything that defines the output."""
    key = "\x1f".join([str(seed), purpose, cell_class, *(f"{k}={attributes[k]}" for k in sorted(attributes))])
    return random.Random(int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big"))


def _canonical_class(cell_class: str | None) -> str:
    """Vocabulary name of a class (``"Neutrophil"`` -> ``"neutrophil"``, ``"ig"`` -> ``"immature
    granulocyte"``); a name the vocabulary lacks is kept, normalised. ``""`` means unknown."""
    if cell_class is None or not cell_class.strip():
        return ""
    try:
        return CELL_CLASSES[cell_index(cell_class)]
    except KeyError:
        return normalize_label(cell_class)


def _known_attributes(attributes: Mapping[str, str | None]) -> dict[str, str]:
    """Validated, normalised ``{attribute: value}`` without the missing ones.

    Raises:
        ValueError: naming an unknown attribute or a value outside the attribute's WBCAtt value set.
    """
    known: dict[str, str] = {}
    for name, raw in attributes.items():
        if name not in _ATTRIBUTE_VALUES:
            raise ValueError(
                f"unknown cell attribute {name!r}; expected one of {', '.join(CELL_ATTRIBUTE_NAMES)}"
            )
        if raw is None:
            continue
        value = " ".join(str(raw).strip().lower().split())
        if value in MISSING_VALUES:
            continue
        if value not in _ATTRIBUTE_VALUES[name]:
            raise ValueError(
                f"cell attribute {name!r} has no value {raw!r}; expected one of {_ATTRIBUTE_VALUES[name]}"
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


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


# ------------------------------------------------------------------------------------------------ VQA


def vqa_pairs(
    cell_class: str, attributes: Mapping[str, str], *, seed: int | str = 0, answer_style: str = "sentence"
) -> list[tuple[str, str]]:
    """Question/answer pairs about one cell.

    In order: "What type of cell is this?" (when the class is known), one open question per annotated
    attribute whose answer is the attribute value (``"segmented-bilobed"``, ``"light blue"``...), then
    yes/no questions: "Is this a <class>?" against the true class or another WBC class, and "Is the
    <part> <value>?" against the true value or another value of the same attribute. Questions are never
    asked about a missing attribute, nor about the type/colour of absent (``"nil"``) granules.

    Args:
        cell_class: class name or alias (``"Neutrophil"``, ``"band neutrophil"``); ``""`` if unknown.
        attributes: ``{attribute name: value}`` with WBCAtt names and values (see ``CELL_ATTRIBUTES``).
        seed: selects wording variants and distractors; same inputs and seed give the same pairs.
        answer_style: ``"sentence"`` (default; "The nucleus is segmented-bilobed.", "No, this is a
            monocyte.") or ``"word"`` (the bare value, ``"yes"`` / ``"no"``), see :data:`ANSWER_STYLES`.

    Returns:
        ``[(prompt, answer), ...]``; every prompt starts with ``"Q: "``; word answers are lower case.
    """
    words = _words(answer_style)
    cls = _canonical_class(cell_class)
    known = _known_attributes(attributes)
    rng = _rng(seed, cls, known, "vqa")
    pairs: list[tuple[str, str]] = []
    if cls:
        pairs.append((VQA_PREFIX + rng.choice(_CLASS_QUESTIONS), _class_answer(cls, words)))
    for name, value in known.items():
        if value == NIL:  # no granules: nothing to say about their type or colour
            continue
        pairs.append(
            (VQA_PREFIX + rng.choice(_ATTRIBUTE_TEXT[name].questions), _open_answer(name, value, words))
        )
    # Yes/no verification: about half ask about the true value, the rest about a distractor.
    if cls:
        others = [c for c in WBC_CLASSES if c != cls]
        asked = cls if rng.random() < 0.5 else rng.choice(others)
        pairs.append(
            (f"{VQA_PREFIX}Is this {_article(asked)} {asked}?", _class_check_answer(asked, cls, words))
        )
    for name, value in known.items():
        check = _ATTRIBUTE_TEXT[name].check
        if check is None or value == NIL:
            continue
        others = [v for v in _ATTRIBUTE_VALUES[name] if v not in (value, NIL)]
        asked = value if (not others or rng.random() < 0.5) else rng.choice(others)
        pairs.append((VQA_PREFIX + check.format(value=asked), _check_answer(name, asked, value, words)))
    return pairs


def _words(answer_style: str) -> bool:
    if answer_style not in ANSWER_STYLES:
        raise ValueError(f"answer_style must be one of {ANSWER_STYLES}, got {answer_style!r}")
    return answer_style == "word"


def _class_answer(cls: str, words: bool) -> str:
    return cls if words else _sentence(f"this is {_article(cls)} {cls}")


def _open_answer(name: str, value: str, words: bool) -> str:
    if words:
        return value
    if name in ("cytoplasm_vacuole", "granularity"):
        return ("Yes, " if value == YES else "No, ") + _statement(name, value) + "."
    return _sentence(_statement(name, value))


def _class_check_answer(asked: str, cls: str, words: bool) -> str:
    verdict = YES if asked == cls else NO
    return verdict if words else f"{verdict.capitalize()}, this is {_article(cls)} {cls}."


def _check_answer(name: str, asked: str, value: str, words: bool) -> str:
    verdict = YES if asked == value else NO
    return verdict if words else f"{verdict.capitalize()}, {_statement(name, value)}."


QUESTION_FORMS: tuple[str, ...] = ("open", "verify")
"""``open``: the answer states the value ("What is the shape of the nucleus?"); ``verify``: a yes/no check
of a named value ("Is the nucleus round?", "Is this a monocyte?")."""


def _question_table() -> dict[str, tuple[str, str, str | None]]:
    """Every template question -> (topic, form, the value a yes/no check names or ``None``)."""
    table: dict[str, tuple[str, str, str | None]] = {}
    for question in _CLASS_QUESTIONS:
        table[VQA_PREFIX + question] = ("class", "open", None)
    for name in CELL_CLASSES:
        table[f"{VQA_PREFIX}Is this {_article(name)} {name}?"] = ("class", "verify", name)
    for name, text in _ATTRIBUTE_TEXT.items():
        for question in text.questions:
            table[VQA_PREFIX + question] = (name, "open", None)
        if text.check is not None:
            # Granule type and colour share a wording; their value sets (without "nil", never asked)
            # tell them apart.
            for value in _ATTRIBUTE_VALUES[name]:
                question = VQA_PREFIX + text.check.format(value=value)
                if value != NIL:
                    assert question not in table, f"two topics share the question {question!r}"
                    table[question] = (name, "verify", value)
    return table


_QUESTIONS = _question_table()


def question_topic(prompt: str) -> tuple[str, str] | None:
    """What a :func:`vqa_pairs` question asks about: ``("class" or an attribute name, form)``, the form
    being one of :data:`QUESTION_FORMS`; ``None`` for a question the templates do not produce (a real
    dataset's own wording).

    >>> question_topic("Q: What colour are the granules?")
    ('granule_colour', 'open')
    """
    entry = _QUESTIONS.get(" ".join(prompt.split()))
    return None if entry is None else entry[:2]


def template_answer(
    prompt: str, cell_class: str, attributes: Mapping[str, str], *, answer_style: str = "sentence"
) -> str | None:
    """The answer :func:`vqa_pairs` gives to the template question ``prompt`` about a cell of class
    ``cell_class`` with ``attributes``, whichever cell the question was first asked about.

    It answers a question about another cell than the one it was written for, which is how the evaluator
    measures what a perfectly grounded model would score when the images are shuffled among the questions.

    Returns:
        the answer, or ``None`` when ``prompt`` is not a template question or asks about what this cell
        lacks (an unknown class, a missing attribute, the type or colour of absent granules).
    """
    words = _words(answer_style)
    entry = _QUESTIONS.get(" ".join(prompt.split()))
    if entry is None:
        return None
    topic, form, asked = entry
    if topic == "class":
        cls = _canonical_class(cell_class)
        if not cls:
            return None
        return _class_answer(cls, words) if form == "open" else _class_check_answer(asked, cls, words)
    value = _known_attributes(attributes).get(topic)
    if value is None or value == NIL:
        return None
    return _open_answer(topic, value, words) if form == "open" else _check_answer(topic, asked, value, words)


# ------------------------------------------------------------------------------------- descriptions


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
        return ["This is ", _article(cls) + " " if cls else "a ", *subject, "."]
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
    return _render(_description_pieces(_canonical_class(cell_class), _known_attributes(attributes)))


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
    cls = _canonical_class(cell_class)
    known = _known_attributes(attributes)
    pieces = _description_pieces(cls, known)
    target = _render(pieces)
    slots = [i for i, p in enumerate(pieces) if isinstance(p, _Slot)]
    attribute_slots = [i for i in slots if pieces[i].source != "class"]  # type: ignore[union-attr]
    class_slots = [i for i in slots if pieces[i].source == "class"]  # type: ignore[union-attr]
    rng = _rng(seed, cls, known, "mlm")

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


# -------------------------------------------------------------------------------------------- samples


def text_samples(
    sample: Sample,
    *,
    seed: int | str = 0,
    max_vqa: int | None = None,
    max_mlm: int | None = None,
    answer_style: str = "sentence",
) -> list[Sample]:
    """VQA and MLM samples sharing ``sample``'s image, from its ``cell_attributes`` and ``cell_class``.

    Args:
        sample: a sample with ``cell_attributes`` (typically a WBCAtt ``cell_morphology`` sample).
        seed: combined with the sample's dataset and id, so wording differs between cells but is
            reproducible.
        max_vqa: keep at most this many VQA pairs (a seeded choice, original order kept); ``None`` = all.
        max_mlm: the same for masked sentences.
        answer_style: VQA answer style (see :func:`vqa_pairs`).

    Returns:
        the VQA samples followed by the MLM samples; ids are ``<sample_id>#vqa<i>`` / ``<sample_id>#mlm<i>``
        and ``extra["source_sample_id"]`` names the source sample; ``extra[SOURCE_CELL_KEY]`` holds its
        class and attributes (``{"cell_class": ..., "attributes": {...}}``), which the evaluator needs to
        answer a question about another cell (:func:`template_answer`).

    Raises:
        ValueError: when the sample has no ``cell_attributes`` or a limit is negative.
    """
    if sample.cell_attributes is None:
        raise ValueError(
            f"sample {sample.dataset}/{sample.sample_id} has no cell_attributes to build text from"
        )
    for name, limit in (("max_vqa", max_vqa), ("max_mlm", max_mlm)):
        if limit is not None and limit < 0:
            raise ValueError(f"{name} must be >= 0 or None, got {limit}")
    attributes = decode_attributes(sample.cell_attributes)
    cls = CELL_CLASSES[sample.cell_class] if sample.cell_class is not None else ""
    source_cell = {"cell_class": cls, "attributes": attributes}
    sample_seed = f"{seed}|{sample.dataset}|{sample.sample_id}"
    chosen_rng = random.Random(hashlib.sha256(sample_seed.encode("utf-8")).hexdigest())

    def keep(pairs: list[tuple[str, str]], limit: int | None) -> list[tuple[str, str]]:
        if limit is None or limit >= len(pairs):
            return pairs
        indices = sorted(chosen_rng.sample(range(len(pairs)), limit))
        return [pairs[i] for i in indices]

    out: list[Sample] = []
    for task, tag, pairs in (
        (
            Task.VQA,
            "vqa",
            keep(vqa_pairs(cls, attributes, seed=sample_seed, answer_style=answer_style), max_vqa),
        ),
        (Task.MLM, "mlm", keep(masked_sentences(cls, attributes, seed=sample_seed), max_mlm)),
    ):
        for i, (prompt, answer) in enumerate(pairs):
            out.append(
                Sample(
                    image=sample.image,
                    task=task,
                    dataset=sample.dataset,
                    sample_id=f"{sample.sample_id}#{tag}{i}",
                    split=sample.split,
                    disease=sample.disease,
                    prompt=prompt,
                    text_target=answer,
                    image_size=sample.image_size,
                    source_path=sample.source_path,
                    extra={"source_sample_id": sample.sample_id, SOURCE_CELL_KEY: source_cell},
                )
            )
    return out


__all__ = [
    "MLM_PREFIX",
    "QUESTION_FORMS",
    "SOURCE_CELL_KEY",
    "VQA_PREFIX",
    "decode_attributes",
    "describe",
    "masked_sentences",
    "question_topic",
    "sentinel",
    "template_answer",
    "text_samples",
    "vqa_pairs",
]
