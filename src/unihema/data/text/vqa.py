"""VQA templates: questions about one cell and their answers, and the answer to any template question about
any cell.

One open question per annotated attribute and the class, and yes/no checks of the true value or a
distractor (:func:`vqa_pairs`); :func:`question_topic` and :func:`template_answer` read a template question
back, which the evaluator's shuffled-image check needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from unihema.data.text.attributes import (
    ANSWER_STYLES,
    ATTRIBUTE_VALUES,
    NIL,
    NO,
    VQA_PREFIX,
    YES,
    article,
    canonical_class,
    known_attributes,
    seeded_rng,
    sentence_case,
    statement,
)
from unihema.data.vocab import CELL_ATTRIBUTE_NAMES, CELL_CLASSES

WBC_CLASSES: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
"""Distractors for "Is this a ...?" questions (the five WBCAtt classes)."""


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

assert set(_ATTRIBUTE_TEXT) == set(CELL_ATTRIBUTE_NAMES), "a WBCAtt attribute has no question template"


VQA_CHECKS: tuple[str, ...] = ("one", "both")
"""``one``: each yes/no check names the true value or a distractor; ``both``: the two complementary checks
of the same cell (the balanced pairs of VQA v2), so the verdict cannot be read off the cell alone."""


def vqa_pairs(
    cell_class: str,
    attributes: Mapping[str, str],
    *,
    seed: int | str = 0,
    answer_style: str = "sentence",
    checks: str = "one",
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
        checks: ``"one"`` (default) check per class and attribute, naming the true value or a
            distractor, or ``"both"``: the true-value check followed by a distractor check (see
            :data:`VQA_CHECKS`).

    Returns:
        ``[(prompt, answer), ...]``; every prompt starts with ``"Q: "``; word answers are lower case.
    """
    return [
        pair
        for group in vqa_groups(cell_class, attributes, seed=seed, answer_style=answer_style, checks=checks)
        for pair in group
    ]


def vqa_groups(
    cell_class: str,
    attributes: Mapping[str, str],
    *,
    seed: int | str = 0,
    answer_style: str = "sentence",
    checks: str = "one",
) -> list[list[tuple[str, str]]]:
    """:func:`vqa_pairs` grouped: one open question per group, and each attribute's checks together (one,
    or with ``checks="both"`` the complementary two), so a sample of the questions keeps the pairs whole."""
    words = _words(answer_style)
    if checks not in VQA_CHECKS:
        raise ValueError(f"checks must be one of {VQA_CHECKS}, got {checks!r}")
    cls = canonical_class(cell_class)
    known = known_attributes(attributes)
    rng = seeded_rng(seed, cls, known, "vqa")
    groups: list[list[tuple[str, str]]] = []
    if cls:
        groups.append([(VQA_PREFIX + rng.choice(_CLASS_QUESTIONS), _class_answer(cls, words))])
    for name, value in known.items():
        if value == NIL:  # no granules: nothing to say about their type or colour
            continue
        groups.append(
            [(VQA_PREFIX + rng.choice(_ATTRIBUTE_TEXT[name].questions), _open_answer(name, value, words))]
        )

    def asked_values(true: str, others: list[str]) -> list[str]:
        # "one": about half ask about the true value, the rest about a distractor.
        if checks == "both":
            return [true, rng.choice(others)] if others else [true]
        return [true if (not others or rng.random() < 0.5) else rng.choice(others)]

    if cls:
        groups.append(
            [
                (f"{VQA_PREFIX}Is this {article(asked)} {asked}?", _class_check_answer(asked, cls, words))
                for asked in asked_values(cls, [c for c in WBC_CLASSES if c != cls])
            ]
        )
    for name, value in known.items():
        check = _ATTRIBUTE_TEXT[name].check
        if check is None or value == NIL:
            continue
        others = [v for v in ATTRIBUTE_VALUES[name] if v not in (value, NIL)]
        groups.append(
            [
                (VQA_PREFIX + check.format(value=asked), _check_answer(name, asked, value, words))
                for asked in asked_values(value, others)
            ]
        )
    return groups


def _words(answer_style: str) -> bool:
    if answer_style not in ANSWER_STYLES:
        raise ValueError(f"answer_style must be one of {ANSWER_STYLES}, got {answer_style!r}")
    return answer_style == "word"


def _class_answer(cls: str, words: bool) -> str:
    return cls if words else sentence_case(f"this is {article(cls)} {cls}")


def _open_answer(name: str, value: str, words: bool) -> str:
    if words:
        return value
    if name in ("cytoplasm_vacuole", "granularity"):
        return ("Yes, " if value == YES else "No, ") + statement(name, value) + "."
    return sentence_case(statement(name, value))


def _class_check_answer(asked: str, cls: str, words: bool) -> str:
    verdict = YES if asked == cls else NO
    return verdict if words else f"{verdict.capitalize()}, this is {article(cls)} {cls}."


def _check_answer(name: str, asked: str, value: str, words: bool) -> str:
    verdict = YES if asked == value else NO
    return verdict if words else f"{verdict.capitalize()}, {statement(name, value)}."


QUESTION_FORMS: tuple[str, ...] = ("open", "verify")
"""``open``: the answer states the value ("What is the shape of the nucleus?"); ``verify``: a yes/no check
of a named value ("Is the nucleus round?", "Is this a monocyte?")."""


def _question_table() -> dict[str, tuple[str, str, str | None]]:
    """Every template question -> (topic, form, the value a yes/no check names or ``None``)."""
    table: dict[str, tuple[str, str, str | None]] = {}
    for question in _CLASS_QUESTIONS:
        table[VQA_PREFIX + question] = ("class", "open", None)
    for name in CELL_CLASSES:
        table[f"{VQA_PREFIX}Is this {article(name)} {name}?"] = ("class", "verify", name)
    for name, text in _ATTRIBUTE_TEXT.items():
        for question in text.questions:
            table[VQA_PREFIX + question] = (name, "open", None)
        if text.check is not None:
            # Granule type and colour share a wording; their value sets (without "nil", never asked)
            # tell them apart.
            for value in ATTRIBUTE_VALUES[name]:
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
        cls = canonical_class(cell_class)
        if not cls:
            return None
        return _class_answer(cls, words) if form == "open" else _class_check_answer(asked, cls, words)
    value = known_attributes(attributes).get(topic)
    if value is None or value == NIL:
        return None
    return _open_answer(topic, value, words) if form == "open" else _check_answer(topic, asked, value, words)
