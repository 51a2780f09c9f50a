"""A very small model and synthetic corpus for training tests (a few seconds per stage on a CPU)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

MINI_MODEL: dict[str, Any] = {
    "preset": "tiny",
    "overrides": {
        "vision": {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "num_queries": 12, "ffn_dim": 64,
                   "num_heads": 2, "num_points": 2},
        "text": {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2},
        "hemaformer": {"cmf_num_heads": 2, "tgvr_num_heads": 2, "cmf_ffn_dim": 64, "qgmf_upsampler_channels": [8, 8, 8]},
        "heads": {"cell_head_hidden_dims": [32], "cell_attribute_hidden_dim": 32, "cell_head_dropout": 0.0},
        "denoising": {"number": 8},
    },
}  # fmt: skip

MINI_DATA: dict[str, Any] = {
    "synthetic": {"n_images": 8, "image_size": 96, "crop_size": 32, "rbc_radius": 6.0, "split_fractions": [0.75, 0.125, 0.125]},
    "transforms": {"det_train_sizes": [64], "det_eval_size": 64, "det_max_size": 96, "seg_size": 64, "cls_size": 32,
                   "text_size": 32},
}  # fmt: skip


def mini_config(stages: list[dict[str, Any]], **runtime: Any) -> dict[str, Any]:
    """A training configuration dict over the mini model and corpus."""
    return {
        "seed": 3,
        "model": copy.deepcopy(MINI_MODEL),
        "data": copy.deepcopy(MINI_DATA),
        "runtime": {
            "device": "cpu",
            "log_every": 1,
            "checkpoint_every": 0,
            "keep_last": 2,
            "tensorboard": False,
            **runtime,
        },
        "stages": stages,
    }


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
