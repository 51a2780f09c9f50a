"""Text samples (VQA and masked sentences) that share a cell sample's image."""

from __future__ import annotations

import hashlib
import random

from unihema.data.schema import Sample, Task
from unihema.data.text.attributes import decode_attributes
from unihema.data.text.descriptions import masked_sentences
from unihema.data.text.vqa import vqa_groups
from unihema.data.vocab import CELL_CLASSES

SOURCE_CELL_KEY = "source_cell"
"""``Sample.extra`` key of a text sample's cell: ``{"cell_class": name, "attributes": {name: value}}``."""


def text_samples(
    sample: Sample,
    *,
    seed: int | str = 0,
    max_vqa: int | None = None,
    max_mlm: int | None = None,
    answer_style: str = "sentence",
    checks: str = "one",
) -> list[Sample]:
    """VQA and MLM samples sharing ``sample``'s image, from its ``cell_attributes`` and ``cell_class``.

    Args:
        sample: a sample with ``cell_attributes`` (typically a WBCAtt ``cell_morphology`` sample).
        seed: combined with the sample's dataset and id, so wording differs between cells but is
            reproducible.
        max_vqa: keep at most this many VQA pairs (a seeded choice, original order kept); ``None`` = all.
        max_mlm: the same for masked sentences.
        answer_style: VQA answer style (see :func:`vqa_pairs`).
        checks: yes/no checks per class and attribute, ``"one"`` or ``"both"`` (see :func:`vqa_pairs`);
            ``max_vqa`` keeps or drops a complementary pair whole, so it may keep one pair fewer.

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

    def keep_groups(groups: list[list[tuple[str, str]]], limit: int | None) -> list[tuple[str, str]]:
        # Single questions draw as ``keep`` always did, so corpora built before ``checks`` stay the same.
        if all(len(group) == 1 for group in groups):
            return keep([group[0] for group in groups], limit)
        if limit is None or limit >= sum(map(len, groups)):
            return [pair for group in groups for pair in group]
        chosen, count = [], 0
        for index in chosen_rng.sample(range(len(groups)), len(groups)):
            if count + len(groups[index]) <= limit:
                chosen.append(index)
                count += len(groups[index])
        return [pair for index in sorted(chosen) for pair in groups[index]]

    out: list[Sample] = []
    for task, tag, pairs in (
        (
            Task.VQA,
            "vqa",
            keep_groups(
                vqa_groups(cls, attributes, seed=sample_seed, answer_style=answer_style, checks=checks),
                max_vqa,
            ),
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
