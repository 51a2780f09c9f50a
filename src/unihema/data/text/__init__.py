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

from unihema.data.text.attributes import (
    ANSWER_STYLES,
    MISSING_VALUES,
    MLM_PREFIX,
    NIL,
    VQA_PREFIX,
    decode_attributes,
    sentinel,
)
from unihema.data.text.descriptions import MLM_MASK_COUNTS, describe, masked_sentences
from unihema.data.text.samples import SOURCE_CELL_KEY, text_samples
from unihema.data.text.vqa import QUESTION_FORMS, WBC_CLASSES, question_topic, template_answer, vqa_pairs

__all__ = [
    "ANSWER_STYLES",
    "MISSING_VALUES",
    "MLM_MASK_COUNTS",
    "MLM_PREFIX",
    "NIL",
    "QUESTION_FORMS",
    "SOURCE_CELL_KEY",
    "VQA_PREFIX",
    "WBC_CLASSES",
    "decode_attributes",
    "describe",
    "masked_sentences",
    "question_topic",
    "sentinel",
    "template_answer",
    "text_samples",
    "vqa_pairs",
]
