"""Fixtures of the server tests: a tiny random model (loaded, and saved to a folder) and test images."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.testers import SMALL_INPUTS, small_test_config
from unihema.model.unihema import UniHema


@pytest.fixture(scope="session")
def serve_model() -> UniHema:
    """The shrunk tiny preset with random weights and small input sizes."""
    model = UniHema.from_config(small_test_config()).eval()
    model.preprocessor = SMALL_INPUTS
    return model


@pytest.fixture(scope="session")
def serve_model_dir(serve_model: UniHema, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("serve-model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serve_model.save_pretrained(directory)
    return directory


def _field_pixels(height: int = 60, width: int = 90, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    """``make_image(height=60, width=90, seed=0, format="PNG")``: an encoded random field."""

    def make(height: int = 60, width: int = 90, seed: int = 0, format: str = "PNG") -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(_field_pixels(height, width, seed)).save(buffer, format=format)
        return buffer.getvalue()

    return make
