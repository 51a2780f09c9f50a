import numpy as np
import pytest

from unihema.data.prompts import task_prompt
from unihema.data.schema import ArrayImage, Sample, Task

IMAGE = ArrayImage(np.zeros((4, 4, 3), np.uint8))


def test_vision_prompt_uses_disease_not_labels():
    sample = Sample(
        IMAGE, Task.DETECTION, "m5", "a", disease="malaria", boxes=[[0, 0, 1, 1]], box_labels=[17]
    )
    assert task_prompt(sample) == "This image is for the detection of malaria cells."
    assert "ring" not in task_prompt(sample)
    assert "blood" in task_prompt(Sample(IMAGE, Task.SEGMENTATION, "x", "b"))


def test_text_prompt_kept_and_required():
    assert task_prompt(Sample(IMAGE, Task.VQA, "x", "c", prompt="Q: size?", text_target="big")) == "Q: size?"
    with pytest.raises(ValueError, match="needs a prompt"):
        task_prompt(Sample(IMAGE, Task.MLM, "x", "d"))
