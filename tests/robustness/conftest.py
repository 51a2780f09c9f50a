"""Fixtures of the bad-input catalog (its dataset builders are in ``bad_input_builders``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.testers import small_test_config


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny random model with small input sizes (fast on a CPU)."""
    from unihema.data.transforms import TransformConfig
    from unihema.inference.preprocessor import PreprocessorConfig
    from unihema.model.unihema import UniHema

    directory = tmp_path_factory.mktemp("tiny_model")
    model = UniHema.from_config(small_test_config())
    model.preprocessor = PreprocessorConfig(
        transforms=TransformConfig(det_train_sizes=(64,), det_eval_size=64, det_max_size=96, seg_size=64,
                                   cls_size=32, text_size=32),
        pad_to_multiple=32, synthetic={"n_images": 6, "image_size": 64, "rbc_radius": 5.0, "crop_size": 16},
    )  # fmt: skip
    model.save_pretrained(directory)
    return directory
