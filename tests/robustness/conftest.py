"""Fixtures of the bad-input catalog (its dataset builders are in ``bad_input_builders``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from support.testers import SMALL_INPUTS, small_test_config


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny random model with small input sizes (fast on a CPU)."""
    from unihema.model.unihema import UniHema

    directory = tmp_path_factory.mktemp("tiny_model")
    model = UniHema.from_config(small_test_config())
    model.preprocessor = dataclasses.replace(
        SMALL_INPUTS, synthetic={"n_images": 6, "image_size": 64, "rbc_radius": 5.0, "crop_size": 16}
    )
    model.save_pretrained(directory)
    return directory
