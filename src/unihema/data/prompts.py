"""Text-encoder prompts for the vision tasks.

Readers fill ``Sample.disease`` and leave ``Sample.prompt`` empty for vision tasks; text tasks carry their
question or masked sentence in ``Sample.prompt``. The prompt is built from the disease context only, never
from the sample's labels, so it cannot leak ground truth into the model at evaluation time (the authors'
code takes detection prompts from annotation fields, see upstream notes section 1.5).
"""

from __future__ import annotations

from unihema.data.schema import Sample, Task

DEFAULT_DISEASE = "blood"
VISION_PROMPT = "This image is for the detection of {disease} cells."
SINGLE_CELL_PROMPT = "This image shows a single {disease} cell."


def task_prompt(sample: Sample) -> str:
    """The prompt given to the text encoder for ``sample``: its own prompt when set, else one from its disease."""
    if sample.prompt:
        return sample.prompt
    if sample.task.is_text:
        raise ValueError(
            f"sample {sample.dataset}/{sample.sample_id}: a {sample.task.value} sample needs a prompt"
        )
    disease = sample.disease or DEFAULT_DISEASE
    if sample.task in (Task.CLASSIFICATION, Task.CELL_MORPHOLOGY):
        return SINGLE_CELL_PROMPT.format(disease=disease)
    return VISION_PROMPT.format(disease=disease)
