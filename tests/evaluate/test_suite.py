"""Several datasets under one progress bar: a task that cannot be scored is reported, not fatal."""

import numpy as np
import pytest
import torch
from torch import nn

from unihema.data.schema import ArrayImage, ArrayMask, FileImage, Sample, Task
from unihema.data.transforms import TransformConfig
from unihema.evaluate.evaluator import EvalConfig
from unihema.evaluate.suite import EvalDataset, evaluate_datasets, spread_subset, total_steps
from unihema.model.outputs import SegmentationOutput

CONFIG = EvalConfig(batch_size=2, transforms=TransformConfig(seg_size=16), pad_to_multiple=1)


class Foreground(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, images, task, prompts=None, targets=None, image_mask=None):
        masks = torch.full((images.shape[0], 1, *images.shape[-2:]), 10.0)
        return SegmentationOutput(masks=masks, masks_lowres=masks)


def _sample(name, image):
    return Sample(image, Task.SEGMENTATION, name, "s0", mask=ArrayMask(np.ones((16, 16), bool)))


def test_a_dataset_whose_samples_all_fail_is_reported_and_the_others_scored(tmp_path):
    good = EvalDataset(
        "good", {Task.SEGMENTATION: [_sample("good", ArrayImage(np.zeros((16, 16, 3), np.uint8)))]}
    )
    bad = EvalDataset("bad", {Task.SEGMENTATION: [_sample("bad", FileImage(tmp_path / "missing.png"))]})
    assert total_steps([good, bad], CONFIG) == 2
    results = evaluate_datasets(Foreground(), [good, bad], CONFIG, progress=False)
    assert results[0].results["segmentation"].value == pytest.approx(1.0)
    assert results[1].results == {} and "bad/s0" in results[1].failed["segmentation"]
    with pytest.raises(ValueError, match="nothing could be evaluated; bad segmentation: none of the 1"):
        evaluate_datasets(Foreground(), [bad], CONFIG, progress=False)


def test_spread_subset_spans_the_whole_list() -> None:
    # Ten classes listed one after another, 20 samples each: a prefix of 10 would hold one class.
    listed = [(cls, i) for cls in range(10) for i in range(20)]
    picked = spread_subset(listed, 10)
    assert len(picked) == 10 and picked[0] == listed[0] and picked[-1] == listed[-1]
    assert {cls for cls, _ in picked} == set(range(10))
    assert spread_subset(listed, None) == listed and spread_subset(listed[:5], 10) == listed[:5]
    assert len(set(spread_subset(listed[:3], 2))) == 2
