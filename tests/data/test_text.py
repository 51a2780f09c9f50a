"""Template-based VQA / masked-sentence supervision from WBCAtt attributes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from unihema.data.schema import UNKNOWN, ArrayImage, Sample, Task
from unihema.data.text import (
    MLM_MASK_COUNTS,
    SOURCE_CELL_KEY,
    decode_attributes,
    describe,
    masked_sentences,
    question_topic,
    template_answer,
    text_samples,
    vqa_pairs,
)
from unihema.data.vocab import CELL_ATTRIBUTE_NAMES, CELL_ATTRIBUTES, CELL_CLASSES, cell_index

NEUTROPHIL = {
    "cell_size": "big",
    "cell_shape": "round",
    "nucleus_shape": "segmented-bilobed",
    "nuclear_cytoplasmic_ratio": "low",
    "chromatin_density": "densely",
    "cytoplasm_vacuole": "no",
    "cytoplasm_texture": "clear",
    "cytoplasm_colour": "light blue",
    "granule_type": "small",
    "granule_colour": "pink",
    "granularity": "yes",
}
# Open questions: class + 11 attributes. Yes/no: class + the 9 attributes whose values are not yes/no.
FULL_VQA = 1 + 11 + 1 + 9
SENTINEL = re.compile(r"<extra_id_(\d+)>")


def test_vqa_is_deterministic_and_seed_dependent() -> None:
    assert vqa_pairs("Neutrophil", NEUTROPHIL, seed=3) == vqa_pairs("Neutrophil", dict(NEUTROPHIL), seed=3)
    # insertion order of the mapping does not matter
    reversed_attrs = dict(reversed(list(NEUTROPHIL.items())))
    assert vqa_pairs("Neutrophil", reversed_attrs, seed=3) == vqa_pairs("Neutrophil", NEUTROPHIL, seed=3)
    outputs = {tuple(vqa_pairs("Neutrophil", NEUTROPHIL, seed=s)) for s in range(8)}
    assert len(outputs) > 1, "the seed should change wording or distractors"


def test_vqa_answers_equal_attribute_values() -> None:
    pairs = vqa_pairs("Neutrophil", NEUTROPHIL, seed=0, answer_style="word")
    assert len(pairs) == FULL_VQA
    assert all(q.startswith("Q: ") and q.endswith("?") for q, _ in pairs)
    assert pairs[0][1] == "neutrophil"
    assert pairs[0][0] in ("Q: What type of cell is this?", "Q: Which cell type is shown?")
    open_answers = [a for _, a in pairs[1:12]]
    assert open_answers == [NEUTROPHIL[name] for name in CELL_ATTRIBUTE_NAMES]
    nucleus_q = pairs[1 + CELL_ATTRIBUTE_NAMES.index("nucleus_shape")]
    assert "nucleus" in nucleus_q[0] and nucleus_q[1] == "segmented-bilobed"
    assert {a for _, a in pairs[12:]} <= {"yes", "no"}


def test_yes_no_answers_are_consistent() -> None:
    values = dict(CELL_ATTRIBUTES)
    for seed in range(20):
        for question, answer in vqa_pairs("Neutrophil", NEUTROPHIL, seed=seed, answer_style="word")[12:]:
            match = re.fullmatch(r"Q: Is this an? (.+)\?", question)
            if match:
                assert answer == ("yes" if match.group(1) == "neutrophil" else "no")
                continue
            # "Is the <part> <value> ...?": find which value of which attribute is asked about
            hits = [
                (name, v)
                for name, vs in values.items()
                for v in vs
                if f" {v}" in question and name.split("_")[0].replace("nuclear", "nuclear-to") in question
            ]
            assert hits, question
            name, asked = max(hits, key=lambda h: len(h[1]))
            assert answer == ("yes" if NEUTROPHIL[name] == asked else "no"), (question, answer)


def test_both_checks_pair_the_true_value_with_a_distractor_of_the_same_question() -> None:
    one = vqa_pairs("Neutrophil", NEUTROPHIL, seed=5, answer_style="word")
    both = vqa_pairs("Neutrophil", NEUTROPHIL, seed=5, answer_style="word", checks="both")
    assert both[:12] == one[:12]  # the open questions are the same
    checks = both[12:]
    assert len(checks) == 2 * 10  # the class and 9 attributes, each checked twice
    for (true_question, true_answer), (other_question, other_answer) in zip(checks[::2], checks[1::2]):
        assert (true_answer, other_answer) == ("yes", "no")
        # The same template, another value: the two prompts differ only where the value is named.
        assert true_question != other_question
        assert true_question.split(" ")[:2] == other_question.split(" ")[:2]
    sentences = vqa_pairs("Neutrophil", NEUTROPHIL, seed=5, checks="both")
    assert ("Q: Is this a neutrophil?", "Yes, this is a neutrophil.") in sentences
    assert sum(q.startswith("Q: Is this a") for q, _ in sentences) == 2
    with pytest.raises(ValueError, match="checks must be one of"):
        vqa_pairs("Neutrophil", NEUTROPHIL, checks="all")


def test_a_limit_keeps_complementary_checks_together() -> None:
    sample = _cell_sample()  # cell size unknown: the class and 10 open questions, then 9 check pairs
    for seed in range(8):
        every = [
            (s.prompt, s.text_target)
            for s in text_samples(sample, seed=seed, checks="both")
            if s.task is Task.VQA
        ]
        assert len(every) == 11 + 2 * 9
        groups = [every[i : i + 1] for i in range(11)] + [every[i : i + 2] for i in range(11, len(every), 2)]
        assert all(pair[0][1].startswith("Yes") and pair[1][1].startswith("No") for pair in groups[11:])
        kept = [(s.prompt, s.text_target) for s in text_samples(sample, seed=seed, max_vqa=5, checks="both")
                if s.task is Task.VQA]  # fmt: skip
        assert 4 <= len(kept) <= 5
        # The kept questions are whole groups, in their original order.
        rest = list(kept)
        for group in groups:
            if rest[: len(group)] == group:
                rest = rest[len(group) :]
        assert not rest, (seed, kept)


def test_no_questions_about_unknown_or_nil() -> None:
    attrs = dict(NEUTROPHIL, cell_size="unknown", cell_shape="", granule_type="nil", granule_colour="nil")
    attrs["granularity"] = "no"
    attrs["cytoplasm_texture"] = None  # type: ignore[assignment]
    pairs = vqa_pairs("Lymphocyte", attrs, seed=1, answer_style="word")
    text = " ".join(q for q, _ in pairs)
    assert "size" not in text and "large" not in text
    assert "shape of the cell" not in text and "cell outline" not in text and "in shape" not in text
    assert "texture" not in text and "clear or frosted" not in text
    assert "type of granules" not in text and "colour of the granules" not in text
    assert "Are the granules" not in text
    assert "nil" not in " ".join(a for _, a in pairs)
    # class + 6 open (nucleus, ratio, chromatin, vacuole, colour, granularity) + class y/n + 4 checks
    assert len(pairs) == 1 + 6 + 1 + 4
    assert ("Q: Is the cytoplasm granular?", "no") in pairs or (
        "Q: Are granules present in the cytoplasm?",
        "no",
    ) in pairs
    assert vqa_pairs("", {}) == []
    assert [a for _, a in vqa_pairs("", {"cell_size": "small"}, answer_style="word")][0] == "small"


def test_invalid_attribute_is_named() -> None:
    with pytest.raises(ValueError, match="nucleus_shape.*trilobed"):
        vqa_pairs("Neutrophil", dict(NEUTROPHIL, nucleus_shape="trilobed"))
    with pytest.raises(ValueError, match="'halo'"):
        describe("Neutrophil", {"halo": "yes"})


def test_describe_mentions_every_value() -> None:
    sentence = describe("Neutrophil", NEUTROPHIL)
    assert sentence == (
        "This neutrophil is big and round; the nucleus is segmented-bilobed with densely packed chromatin, "
        "the nuclear-to-cytoplasmic ratio is low, and the cytoplasm is clear and light blue, has no vacuoles "
        "and contains small pink granules."
    )
    no_granules = describe(
        "Lymphocyte", dict(NEUTROPHIL, granule_type="nil", granule_colour="nil", granularity="no")
    )
    assert "contains no granules" in no_granules and "nil" not in no_granules
    partial = describe("", {"nucleus_shape": "irregular"})
    assert partial == "In this cell, the nucleus is irregular."
    assert describe("eosinophil", {}) == "This is an eosinophil."


def test_masked_sentences_sentinels_and_targets() -> None:
    pairs = masked_sentences("Neutrophil", NEUTROPHIL, seed=5)
    assert pairs == masked_sentences("Neutrophil", NEUTROPHIL, seed=5)
    full = describe("Neutrophil", NEUTROPHIL)
    assert len(pairs) == 1 + len(MLM_MASK_COUNTS)
    assert pairs[0][0] == "mask: " + full.replace("neutrophil", "<extra_id_0>", 1)
    for (prompt, target), count in zip(pairs[1:], MLM_MASK_COUNTS):
        assert prompt.startswith("mask: ") and target == full
        ids = [int(i) for i in SENTINEL.findall(prompt)]
        assert ids == list(range(count)), prompt
        # filling the sentinels back with words gives the target
        pattern = re.escape(prompt[len("mask: ") :])
        for i in ids:
            pattern = pattern.replace(re.escape(f"<extra_id_{i}>"), r"([a-z\- ]+?)")
        match = re.fullmatch(pattern, target)
        assert match is not None, prompt
        hidden = " ".join(match.groups())
        assert all(word in " ".join(NEUTROPHIL.values()) + " visible no" for word in hidden.split())
    assert masked_sentences("", {}) == []


def test_decode_attributes() -> None:
    values = np.full(len(CELL_ATTRIBUTES), UNKNOWN)
    values[2] = 3
    assert decode_attributes(values) == {"nucleus_shape": "segmented-bilobed"}
    with pytest.raises(ValueError, match="cell_size"):
        decode_attributes([7] + [UNKNOWN] * 10)
    with pytest.raises(ValueError, match="expected 11"):
        decode_attributes([0, 0])


def _cell_sample() -> Sample:
    indices = [dict(CELL_ATTRIBUTES)[name].index(NEUTROPHIL[name]) for name in CELL_ATTRIBUTE_NAMES]
    indices[0] = UNKNOWN  # cell size not annotated
    return Sample(
        image=ArrayImage(np.zeros((4, 4, 3), np.uint8)),
        task=Task.CELL_MORPHOLOGY,
        dataset="wbcatt",
        sample_id="BNE_1.jpg",
        split="train",
        cell_class=cell_index("Neutrophil"),
        cell_attributes=np.asarray(indices),
        disease="healthy",
    )


def test_text_samples_share_the_image() -> None:
    sample = _cell_sample()
    out = text_samples(sample, seed=0)
    vqa = [s for s in out if s.task is Task.VQA]
    mlm = [s for s in out if s.task is Task.MLM]
    assert len(vqa) == FULL_VQA - 2  # no open / yes-no question about the unknown cell size
    assert len(mlm) == 1 + len(MLM_MASK_COUNTS)
    assert all(s.image is sample.image and s.split == "train" and s.dataset == "wbcatt" for s in out)
    assert all(s.extra["source_sample_id"] == "BNE_1.jpg" for s in out)
    assert len({s.sample_id for s in out}) == len(out)
    assert vqa[0].prompt.startswith("Q: ") and vqa[0].text_target == "This is a neutrophil."
    assert all("size" not in s.prompt for s in vqa)
    assert [(s.prompt, s.text_target) for s in out] == [
        (s.prompt, s.text_target) for s in text_samples(sample)
    ]
    limited = text_samples(sample, max_vqa=2, max_mlm=1)
    assert [s.task for s in limited] == [Task.VQA, Task.VQA, Task.MLM]
    assert {s.prompt for s in limited[:2]} <= {s.prompt for s in vqa}
    no_attrs = Sample(
        image=sample.image, task=Task.CLASSIFICATION, dataset="pbc", sample_id="x", cell_class=5
    )
    with pytest.raises(ValueError, match="pbc/x has no cell_attributes"):
        text_samples(no_attrs)


def test_sentence_answers_state_the_attribute_value():
    pairs = dict(vqa_pairs("Neutrophil", NEUTROPHIL, seed=0))
    words = dict(vqa_pairs("Neutrophil", NEUTROPHIL, seed=0, answer_style="word"))
    assert pairs.keys() == words.keys()
    for question, answer in pairs.items():
        assert answer.endswith(".") and answer[0].isupper()
        word = words[question]
        if word in ("yes", "no"):
            assert answer.lower().startswith(word + ",")
        else:
            assert word in answer.lower()
    nucleus = [a for q, a in pairs.items() if "shape of the nucleus" in q or "nucleus shape" in q]
    assert nucleus == [f"The nucleus is {NEUTROPHIL['nucleus_shape']}."]
    with pytest.raises(ValueError, match="answer_style"):
        vqa_pairs("Neutrophil", NEUTROPHIL, answer_style="poem")


@pytest.mark.parametrize("name,values", CELL_ATTRIBUTES)
def test_every_attribute_question_is_traced_to_its_attribute(name, values) -> None:
    forms = set()
    for value in values:
        for seed in range(6):  # wording variants and yes/no distractors
            for question, _ in vqa_pairs("", {name: value}, seed=seed):
                topic, form = question_topic(question)
                assert topic == name, question
                forms.add(form)
    # Binary attributes are asked only as open yes/no questions; the others are verified too.
    assert forms == ({"open"} if set(values) <= {"yes", "no"} else {"open", "verify"})


def test_class_questions_and_unknown_wording() -> None:
    for cls in CELL_CLASSES:
        topics = {question_topic(q) for seed in range(6) for q, _ in vqa_pairs(cls, {}, seed=seed)}
        assert topics == {("class", "open"), ("class", "verify")}
    assert question_topic("Q:  What colour are  the granules?") == ("granule_colour", "open")
    assert question_topic("Q: Are the granules red?") == ("granule_colour", "verify")
    assert question_topic("Q: Are the granules coarse?") == ("granule_type", "verify")
    assert question_topic("Q: Is this cell reactive?") is None


@pytest.mark.parametrize("style", ["sentence", "word"])
def test_template_answer_reproduces_every_pair_and_answers_about_another_cell(style) -> None:
    monocyte = {
        **NEUTROPHIL,
        "nucleus_shape": "unsegmented-indented",
        "granule_type": "nil",
        "granule_colour": "nil",
    }
    for seed in range(8):
        for question, answer in vqa_pairs("neutrophil", NEUTROPHIL, seed=seed, answer_style=style):
            assert template_answer(question, "Neutrophil", NEUTROPHIL, answer_style=style) == answer
    asked = {q: template_answer(q, "monocyte", monocyte, answer_style=style) for q in (
        "Q: What is the shape of the nucleus?", "Q: Is this a neutrophil?", "Q: Is the nucleus unsegmented-indented?",
        "Q: What colour are the granules?", "Q: What is the colour of the cytoplasm?",
    )}  # fmt: skip
    if style == "sentence":
        assert asked == {
            "Q: What is the shape of the nucleus?": "The nucleus is unsegmented-indented.",
            "Q: Is this a neutrophil?": "No, this is a monocyte.",
            "Q: Is the nucleus unsegmented-indented?": "Yes, the nucleus is unsegmented-indented.",
            "Q: What colour are the granules?": None,  # the monocyte has none
            "Q: What is the colour of the cytoplasm?": "The cytoplasm is light blue.",
        }
    else:
        assert list(asked.values()) == ["unsegmented-indented", "no", "yes", None, "light blue"]
    assert template_answer("Q: Is this cell reactive?", "monocyte", monocyte) is None
    assert template_answer("Q: What type of cell is this?", "", monocyte) is None


def test_text_samples_carry_their_cell_for_answers_about_it() -> None:
    sample = _cell_sample()
    for text in text_samples(sample, seed=0):
        cell = text.extra[SOURCE_CELL_KEY]
        assert cell["cell_class"] == "neutrophil" and "cell_size" not in cell["attributes"]
        if text.task is Task.VQA:
            assert template_answer(text.prompt, cell["cell_class"], cell["attributes"]) == text.text_target
