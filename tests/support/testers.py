"""A very small UniHema configuration for fast CPU tests (like the model testers of transformers)."""

from __future__ import annotations

from typing import Any

import torch

from unihema.data.transforms import TransformConfig
from unihema.inference.preprocessor import PreprocessorConfig
from unihema.model.configuration import UniHemaConfig

IMAGE_SIZE = 64
PROMPTS = ["Q: What is the shape of the nucleus?", "This image is for the detection of rbc cells"]
SMALL_INPUTS = PreprocessorConfig(
    transforms=TransformConfig(
        det_train_sizes=(64,), det_eval_size=64, det_max_size=96, seg_size=64, cls_size=32, text_size=32
    ),
    pad_to_multiple=32,
)
"""Small input sizes for models used through the predictor, the server or an export (``model.preprocessor``)."""


def small_test_config(**overrides: Any) -> UniHemaConfig:
    """Tiny preset shrunk further: d 32, 1 encoder + 2 decoder layers, 20 queries, T5 d 32 (1 + 1 layers)."""
    sections: dict[str, dict[str, Any]] = {
        "vision": dict(d_model=32, encoder_layers=1, decoder_layers=2, num_heads=2, num_points=2, ffn_dim=64, num_queries=20),
        "text": dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, max_length=24, dropout_rate=0.0),
        "hemaformer": dict(cmf_num_heads=2, tgvr_num_heads=2, cmf_ffn_dim=64, qgmf_upsampler_channels=(8, 8, 8)),
        "heads": dict(cell_head_hidden_dims=(32,), cell_attribute_hidden_dim=16, cell_head_dropout=0.0),
        "denoising": dict(number=10),
    }  # fmt: skip
    for name, values in overrides.items():
        sections[name] = {**sections.get(name, {}), **values}
    return UniHemaConfig.from_preset("tiny", **sections)


def detection_targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([3]), "attributes": torch.tensor([[0, 1, -1, 0, 1, 0]])},
        {"boxes": torch.tensor([[0.3, 0.5, 0.2, 0.1], [0.6, 0.6, 0.1, 0.1]]), "labels": torch.tensor([1, 2]),
         "attributes": torch.full((2, 6), -1)},
    ]  # fmt: skip


def text_targets() -> list[dict[str, str]]:
    return [{"text": "segmented-bilobed"}, {"text": "yes"}]
