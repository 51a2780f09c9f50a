"""Named model configurations: the preset registry behind :meth:`UniHemaConfig.from_preset`.

:data:`PRESET_REGISTRY` maps a preset name to a function that builds its
:class:`~unihema.model.configuration.UniHemaConfig`, as segment-anything's ``sam_model_registry`` maps a
model name to its builder. :meth:`UniHemaConfig.from_preset` (and so ``UniHema.from_preset``, the CLI and
the ``model.preset`` of a training configuration) looks names up here; an entry added to the registry is
a preset like the built-in ones::

    PRESET_REGISTRY["small"] = lambda: UniHemaConfig.from_preset("tiny", vision={"d_model": 192})

Built-in presets:

- ``tiny`` (:func:`build_tiny`): ResNet-18, d 128, 2+2 image and text layers, 300 queries; fast on a CPU.
- ``fast`` (:func:`build_fast`): ``tiny`` whose image encoder updates only the three coarsest levels
  (``vision.encoder_skip_levels: 1``); the stride-8 tokens are still attended to. An efficiency
  option outside the paper; its speed and accuracy against ``tiny`` are in ``docs/benchmarks.md``.
- ``paper`` (:func:`build_paper`): every section's defaults, the dimensions of the authors' model
  (ResNet-50, d 256, 6+6 layers, 900 queries, a flan-t5-base sized text model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from unihema.model.configuration import (
    ConfigError,
    HeadsConfig,
    HemaFormerConfig,
    TextConfig,
    UniHemaConfig,
    VisionConfig,
)
from unihema.validation import require


def build_tiny() -> UniHemaConfig:
    """The ``tiny`` preset: small enough to train and test on a CPU."""
    return UniHemaConfig(
        vision=VisionConfig(
            backbone_depth=18, d_model=128, num_levels=4, encoder_layers=2, decoder_layers=2, num_heads=4,
            num_points=4, ffn_dim=512, num_queries=300,
        ),
        text=TextConfig(
            vocab_size=1024, tokenizer_vocab_size=1024, num_sentinels=32, d_model=128, d_kv=32, d_ff=512,
            num_layers=2, num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu", max_length=64,
        ),
        hemaformer=HemaFormerConfig(
            cmf_num_heads=4, tgvr_num_heads=4, cmf_ffn_dim=512, qgmf_upsampler_channels=(64, 32, 16)
        ),
        heads=HeadsConfig(cell_head_hidden_dims=(128, 64), cell_attribute_hidden_dim=128),
        preset="tiny",
    )  # fmt: skip


def build_fast() -> UniHemaConfig:
    """The ``fast`` preset: ``tiny`` with an encoder that leaves the finest level's tokens as they are."""
    tiny = build_tiny()
    vision = dataclasses.replace(tiny.vision, encoder_skip_levels=1)
    return dataclasses.replace(tiny, vision=vision, preset="fast")


def build_paper() -> UniHemaConfig:
    """The ``paper`` preset: the section defaults, i.e. the sizes of the authors' model."""
    # flan-t5-base sizes: what the authors' code actually loads (the paper says "t5_base").
    return UniHemaConfig(preset="paper")


PRESET_REGISTRY: dict[str, Callable[[], UniHemaConfig]] = {
    "tiny": build_tiny,
    "fast": build_fast,
    "paper": build_paper,
}
"""Preset name -> function building that preset's configuration (add entries to register presets)."""

PRESETS: tuple[str, ...] = tuple(PRESET_REGISTRY)
"""Names of the built-in presets."""


def build_preset(name: str) -> UniHemaConfig:
    """The configuration of the registered preset ``name``, with ``preset`` set to ``name``.

    Raises:
        ConfigError: ``name`` is not in :data:`PRESET_REGISTRY`; the message lists the known names.
    """
    require(
        name in PRESET_REGISTRY, "preset", f"must be one of {tuple(PRESET_REGISTRY)}", name, error=ConfigError
    )
    return dataclasses.replace(PRESET_REGISTRY[name](), preset=name)
