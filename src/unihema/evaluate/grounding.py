"""The shuffled-image check of VQA: each question answered with another sample's image
(:func:`shuffled_images`), scored per kind of question (:func:`exact_match_by_question`) and against what a
perfectly grounded model would answer about the image it is shown (:func:`grounded_answers`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unihema.data.schema import Sample
from unihema.data.text import ANSWER_STYLES, SOURCE_CELL_KEY, question_topic, template_answer
from unihema.evaluate.metrics import exact_match


def image_donors(count: int, seed: int = 0) -> list[int]:
    """For each of ``count`` questions, the index of the question whose image it is shown with in the
    shuffled-image check: a random derangement (nobody keeps its own image; ``[0]`` for one question)."""
    if count < 2:
        return list(range(count))
    order = np.random.default_rng(seed).permutation(count)
    donors = [0] * count
    for receiver, donor in zip(order, np.roll(order, 1)):  # order[i] takes the image of order[i - 1]
        donors[receiver] = int(donor)
    return donors


def _answer_about(prompt: str, cell: Mapping[str, Any], style: str) -> str | None:
    return template_answer(prompt, cell["cell_class"], cell["attributes"], answer_style=style)


def shuffled_images(samples: Sequence[Sample], seed: int = 0) -> list[Sample]:
    """The same questions, each paired with the image of another sample (:func:`image_donors`).

    Scoring a model on these tells whether its answers depend on the image: a model that has learned
    only the answer prior of each question scores the same with and without the right image.
    """
    return [
        dataclasses.replace(sample, image=samples[donor].image, image_size=samples[donor].image_size)
        for sample, donor in zip(samples, image_donors(len(samples), seed))
    ]


def grounded_answers(samples: Sequence[Sample], seed: int = 0) -> list[str | None]:
    """What a model that answers every question exactly about the cell it is shown would say in the
    shuffled-image check: each question answered from the class and attributes of its image's cell
    (``extra[SOURCE_CELL_KEY]``, :func:`~unihema.data.text.template_answer`), in the answer style of its
    own reference; ``""`` (matches no reference) where that cell lacks what is asked about, and ``None``
    where the question cannot be answered from a cell: outside the templates, or without its cell.

    Its exact match is the score of perfect grounding with shuffled images, the floor the shuffled score
    approaches as the answers come to follow the image: two cells often share an attribute, so shuffling
    cannot cost a perfect model everything.
    """
    answers: list[str | None] = []
    for index, donor in enumerate(image_donors(len(samples), seed)):
        sample = samples[index]
        own, other = sample.extra.get(SOURCE_CELL_KEY), samples[donor].extra.get(SOURCE_CELL_KEY)
        answer = None
        if own is not None and other is not None and sample.prompt is not None:
            for style in ANSWER_STYLES:  # the style whose answer about the question's own cell is its target
                if _answer_about(sample.prompt, own, style) == sample.text_target:
                    answer = _answer_about(sample.prompt, other, style) or ""
                    break
        answers.append(answer)
    return answers


def exact_match_by_question(
    prompts: Sequence[str],
    hypotheses: Sequence[str],
    shuffled: Sequence[str],
    references: Sequence[str],
    grounded: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Exact match with each cell's own image and with shuffled images, per kind of question.

    Questions are grouped by what they ask about (:func:`unihema.data.text.question_topic`: the cell
    class or one attribute, open or yes/no); questions outside the templates form the group ``"other"``.
    A group where the two rates are equal is answered from the question alone.

    Args:
        grounded: :func:`grounded_answers` of the questions; adds ``"exact_match_shuffled_grounded"`` to
            each row, what perfect grounding scores there with shuffled images.

    Returns:
        one row per group, sorted by topic then form: ``{"topic", "form", "questions", "exact_match",
        "exact_match_shuffled_images"}`` (and ``"exact_match_shuffled_grounded"``).
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(question_topic(prompt) or ("other", "other"), []).append(index)
    rows = []
    for (topic, form), indices in sorted(groups.items()):
        refs = [references[i] for i in indices]
        row = {
            "topic": topic, "form": form, "questions": len(indices),
            "exact_match": exact_match([hypotheses[i] for i in indices], refs),
            "exact_match_shuffled_images": exact_match([shuffled[i] for i in indices], refs),
        }  # fmt: skip
        if grounded is not None:
            row["exact_match_shuffled_grounded"] = exact_match([grounded[i] for i in indices], refs)
        rows.append(row)
    return rows


__all__ = ["exact_match_by_question", "grounded_answers", "image_donors", "shuffled_images"]
