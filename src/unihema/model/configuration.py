"""Configuration of the UniHema model: nested dataclasses, validation, presets, JSON/YAML files.

The configuration is split by module so each part of the paper maps to one section:

- :class:`VisionConfig`: backbone B, input projection, image encoder E_I and image decoder D_I;
- :class:`TextConfig`: the T5 text encoder E_T / decoder D_T and its tokenizer;
- :class:`HemaFormerConfig`: the four Hema-Former sub-modules (CMF, TGVR, SCFE, QGMF), including the
  options where the paper and the authors' released code differ (the paper's version is the default);
- :class:`HeadsConfig`: task heads and label-space sizes (taken from :mod:`unihema.data.vocab`);
- :class:`DenoisingConfig`: DINO contrastive denoising queries used in detection training.

Two presets are provided: ``tiny`` (ResNet-18, d 128, fast on a CPU) and ``paper`` (ResNet-50, d 256,
6+6 layers, 900 queries, flan-t5-base sized text model: the dimensions of the authors' model).

Every validation error is a :class:`ConfigError` (a ``ValueError``) whose message starts with the dotted
name of the offending field, e.g. ``vision.d_model must be divisible by vision.num_heads (8), got 130``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from unihema.atomic import atomic_write_text
from unihema.data.vocab import CELL_CLASSES, DETECTION_CLASSES

MODULE_GROUPS: tuple[str, ...] = ("B", "E_I", "D_I", "E_T", "D_T", "CMF", "TGVR", "SCFE", "QGMF", "heads")
"""The paper's module groups (:meth:`unihema.model.unihema.UniHema.module_groups`): what a stage trains or freezes."""
BACKBONE_DEPTHS = (18, 34, 50)
BACKBONE_NORMS = ("frozen_bn", "bn", "gn")
PRETRAINED_TRAINABLE_LAYERS = 3
"""ResNet stages trained on top of pretrained weights (layer2-4), as DINO and the paper."""
ALL_BACKBONE_LAYERS = 5
FEED_FORWARD_PROJ = ("relu", "gated-gelu", "gelu", "gated-relu", "gated-silu", "silu")
CMF_ORDERS = ("text_first", "image_first")
TGVR_MODES = ("concat", "gate")
SCFE_INPUTS = ("encoder_mean", "encoder_mean+backbone", "encoder_mean+backbone_c5")
SCFE_POOLINGS = ("mean", "attention")
QGMF_QUERIES = ("first", "top_scoring")
QGMF_STYLES = ("paper", "upstream")
QGMF_INPUT_SIZE = "input"
PRESETS = ("tiny", "paper")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def _require(condition: bool, name: str, message: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{name} {message}, got {value!r}")


def _positive_int(prefix: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{prefix}{name}",
            "must be a positive integer",
            value,
        )


def _probability(prefix: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(
            isinstance(value, (int, float)) and 0.0 <= value < 1.0,
            f"{prefix}{name}",
            "must be in [0, 1)",
            value,
        )


@dataclass
class VisionConfig:
    """Backbone B, input projection, image encoder E_I and image decoder D_I.

    Args:
        backbone_depth: ResNet depth of the backbone B, one of 18, 34, 50. Levels C3-C5 (strides
            8/16/32) feed the input projection.
        backbone_weights: ``None`` for random initialisation, a path to a torchvision ResNet state dict
            (``.safetensors`` or a tensor-only ``.pth``), or ``"imagenet"`` for torchvision's ImageNet
            weights (only then may torchvision download them).
        trainable_backbone_layers: number of trainable ResNet stages counted from the top (0-5); the
            paper's value 3 trains layer2-layer4 and freezes the stem and layer1. ``None`` (default)
            chooses as torchvision's detection models do: 3 with pretrained ``backbone_weights``, 5 (all)
            with random initialisation, since random stages would otherwise stay random.
        backbone_norm: normalisation layers of the ResNet: ``"frozen_bn"`` (frozen, buffer-only batch
            norm, as in DETR-family models on pretrained weights), ``"bn"`` (trainable BatchNorm) or
            ``"gn"`` (GroupNorm). ``None`` (default): ``"frozen_bn"`` with pretrained ``backbone_weights``,
            ``"gn"`` with random initialisation (a frozen norm of a random network is an identity and the
            un-normalised activations of a deep random ResNet map every image to the same features;
            GroupNorm, unlike BatchNorm, does not depend on the tiny per-task batches or on how a batch is
            split across processes).
        d_model: width M of the projected image tokens, encoder, decoder and Hema-Former.
        num_levels: number of feature levels (3 backbone levels plus ``num_levels - 3`` extra stride-2
            levels on C5); the paper uses 4.
        encoder_layers: number of deformable self-attention layers of E_I.
        decoder_layers: number of decoder layers of D_I.
        num_heads: attention heads of E_I and D_I.
        num_points: deformable attention sampling points per head and level.
        ffn_dim: hidden width of the encoder/decoder feed-forward blocks.
        dropout: dropout inside E_I and D_I.
        num_queries: number of object queries K (top-K encoder proposals).
        position_temperature: temperature of the sine position encoding (DINO uses 20).
    """

    backbone_depth: int = 50
    backbone_weights: str | None = None
    trainable_backbone_layers: int | None = None
    backbone_norm: str | None = None
    d_model: int = 256
    num_levels: int = 4
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 2048
    dropout: float = 0.0
    num_queries: int = 900
    position_temperature: float = 20.0

    @property
    def pretrained_backbone(self) -> bool:
        return self.backbone_weights is not None

    def resolved_trainable_backbone_layers(self) -> int:
        """``trainable_backbone_layers``, with ``None`` resolved (3 when pretrained, else 5)."""
        if self.trainable_backbone_layers is not None:
            return self.trainable_backbone_layers
        return PRETRAINED_TRAINABLE_LAYERS if self.pretrained_backbone else ALL_BACKBONE_LAYERS

    def resolved_backbone_norm(self) -> str:
        """``backbone_norm``, with ``None`` resolved (``frozen_bn`` when pretrained, else ``gn``)."""
        if self.backbone_norm is not None:
            return self.backbone_norm
        return "frozen_bn" if self.pretrained_backbone else "gn"

    def validate(self, prefix: str = "vision.") -> None:
        _require(
            self.backbone_depth in BACKBONE_DEPTHS,
            f"{prefix}backbone_depth",
            f"must be one of {BACKBONE_DEPTHS}",
            self.backbone_depth,
        )
        _require(
            self.trainable_backbone_layers is None
            or (isinstance(self.trainable_backbone_layers, int) and 0 <= self.trainable_backbone_layers <= 5),
            f"{prefix}trainable_backbone_layers",
            "must be an integer in [0, 5] or null (automatic)",
            self.trainable_backbone_layers,
        )
        _require(
            self.backbone_norm is None or self.backbone_norm in BACKBONE_NORMS,
            f"{prefix}backbone_norm",
            f"must be one of {BACKBONE_NORMS} or null (automatic)",
            self.backbone_norm,
        )
        _positive_int(
            prefix,
            self,
            "d_model",
            "num_levels",
            "encoder_layers",
            "decoder_layers",
            "num_heads",
            "num_points",
            "ffn_dim",
            "num_queries",
        )
        _require(
            self.num_levels >= 3, f"{prefix}num_levels", "must be at least 3 (C3, C4, C5)", self.num_levels
        )
        _require(
            self.d_model % 4 == 0,
            f"{prefix}d_model",
            "must be divisible by 4 (sine position encoding: two axes of an even number of channels)",
            self.d_model,
        )
        _require(
            self.d_model % self.num_heads == 0,
            f"{prefix}d_model",
            f"must be divisible by {prefix}num_heads ({self.num_heads})",
            self.d_model,
        )
        _probability(prefix, self, "dropout")
        _require(
            self.position_temperature > 0,
            f"{prefix}position_temperature",
            "must be positive",
            self.position_temperature,
        )


@dataclass
class TextConfig:
    """The T5 text encoder E_T and text decoder D_T, and the tokenizer.

    The model is a ``transformers`` ``T5ForConditionalGeneration`` built from these sizes with random
    weights (nothing is downloaded). With ``pretrained_path`` the T5 weights, sizes and tokenizer are read
    from a local directory (e.g. a saved ``t5-base`` or ``flan-t5-base``) and override the sizes below.

    Args:
        pretrained_path: local directory of a pretrained T5 (``config.json``, weights, tokenizer files), or
            ``None`` to build a random T5 with a tokenizer trained on the domain corpus.
        vocab_size: rows of the token embedding (and lm_head) table; must be at least the tokenizer size.
        tokenizer_vocab_size: target size of the domain tokenizer (Unigram pieces plus special tokens and
            sentinels) when no pretrained tokenizer is used; must not exceed ``vocab_size``.
        num_sentinels: number of ``<extra_id_N>`` sentinel tokens (masked-span placeholders).
        d_model: T5 hidden width N.
        d_kv: width of each attention head.
        d_ff: feed-forward width.
        num_layers: encoder blocks.
        num_decoder_layers: decoder blocks.
        num_heads: attention heads.
        feed_forward_proj: T5 feed-forward activation, e.g. ``"relu"`` (t5) or ``"gated-gelu"`` (flan-t5).
        tie_word_embeddings: share the input embedding with the lm_head (t5) or not (flan-t5).
        dropout_rate: T5 dropout.
        layer_norm_epsilon: T5 RMS-norm epsilon.
        relative_attention_num_buckets: T5 relative position buckets.
        relative_attention_max_distance: T5 relative position maximum distance.
        max_length: maximum number of tokens of a prompt or target text (longer texts are truncated); also
            the number of CMF learnable queries, one per text position.
        pad_to_max_length: pad every prompt to ``max_length`` tokens (the authors' code) instead of to the
            longest prompt of the batch. Only changes results when ``hemaformer.text_padding_masks`` is
            off, i.e. when TGVR and CMF attend to the padding positions too.
    """

    pretrained_path: str | None = None
    vocab_size: int = 32128
    tokenizer_vocab_size: int = 8000
    num_sentinels: int = 100
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 12
    num_decoder_layers: int = 12
    num_heads: int = 12
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = False
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    max_length: int = 64
    pad_to_max_length: bool = False

    def validate(self, prefix: str = "text.") -> None:
        _positive_int(
            prefix, self, "vocab_size", "tokenizer_vocab_size", "d_model", "d_kv", "d_ff", "num_layers",
            "num_decoder_layers", "num_heads", "relative_attention_num_buckets",
            "relative_attention_max_distance", "max_length",
        )  # fmt: skip
        _require(
            isinstance(self.num_sentinels, int) and self.num_sentinels >= 1,
            f"{prefix}num_sentinels",
            "must be an integer >= 1 (masked sentences use <extra_id_0>)",
            self.num_sentinels,
        )
        _require(
            self.tokenizer_vocab_size <= self.vocab_size,
            f"{prefix}tokenizer_vocab_size",
            f"must not exceed {prefix}vocab_size ({self.vocab_size})",
            self.tokenizer_vocab_size,
        )
        _require(
            self.tokenizer_vocab_size > self.num_sentinels + 3,
            f"{prefix}tokenizer_vocab_size",
            f"must leave room for the 3 special tokens and {self.num_sentinels} sentinels",
            self.tokenizer_vocab_size,
        )
        _require(
            self.feed_forward_proj in FEED_FORWARD_PROJ,
            f"{prefix}feed_forward_proj",
            f"must be one of {FEED_FORWARD_PROJ}",
            self.feed_forward_proj,
        )
        _probability(prefix, self, "dropout_rate")
        _require(
            isinstance(self.pad_to_max_length, bool),
            f"{prefix}pad_to_max_length",
            "must be a boolean",
            self.pad_to_max_length,
        )
        _require(
            self.layer_norm_epsilon > 0,
            f"{prefix}layer_norm_epsilon",
            "must be positive",
            self.layer_norm_epsilon,
        )
        if self.pretrained_path is not None:
            _require(
                isinstance(self.pretrained_path, str) and self.pretrained_path != "",
                f"{prefix}pretrained_path",
                "must be a non-empty path string or None",
                self.pretrained_path,
            )


@dataclass
class HemaFormerConfig:
    """The Hema-Former sub-modules. Defaults follow the paper (section 3.2.2, eqs. 1-5).

    Args:
        text_padding_masks: mask padded text tokens in the TGVR and CMF cross-attentions (the authors'
            code attends to padding; masking is the correct behaviour).
        cmf_order: ``"text_first"`` (eqs. 1-2: learnable queries attend to the text, then to the projected
            backbone tokens E_B^I) or ``"image_first"`` (the authors' code: image, then text).
        cmf_num_layers: number of stacked CMF blocks (paper 1, code 2).
        cmf_ffn: add a GELU feed-forward sub-layer after the two cross-attentions (code) or not (paper).
        cmf_ffn_dim: width of that feed-forward sub-layer.
        cmf_residual: add the text-encoder states E_E^T to the projected CMF output (code) or return the
            projection alone (paper). The output is always projected from M to the text width N.
        cmf_num_heads: attention heads of the CMF cross-attentions.
        cmf_cell_feature: let the CMF image attention also read the SCFE cell feature E_Z as one more
            token (off in the paper). E_Z is what single-cell classification and cell morphology train; with
            it the answers about a cell follow what the classifier sees (``docs/training.md``).
        tgvr_mode: ``"concat"`` (eq. 3: concatenate the queries with their text cross-attention and
            project) or ``"gate"`` (the code: per-channel sigmoid gate mixing query and attention).
        tgvr_num_heads: attention heads of the TGVR cross-attention.
        scfe_inputs: ``"encoder_mean"`` (learned query concatenated with the mean of the encoder tokens,
            as in the paper) or ``"encoder_mean+backbone"`` (additionally the mean of the projected
            level-0 backbone tokens, the ablation's "backbone + SCFE features") or
            ``"encoder_mean+backbone_c5"`` (additionally the mean of the raw last backbone level, before
            the input projection's GroupNorm removes each image's channel means).
        scfe_pooling: how SCFE summarises the encoder tokens: ``"mean"`` (the paper) or ``"attention"``
            (the learned query attends to the tokens; learns much faster from scratch, see
            ``docs/training.md``).
        qgmf_query: which decoder query gives the mask (eq. 5): ``"first"`` (the paper: the first query;
            queries are ordered by their encoder-proposal score, so it is the most object-like proposal)
            or ``"top_scoring"`` (the query with the highest final-layer class score).
        qgmf_mask_size: ``"input"`` to predict the mask at the (padded) input size, or an integer side
            length for a fixed square output (the authors' code uses 512).
        qgmf_mlp_layers: layers of the query-embedding MLP of eq. 4.
        qgmf_upsampler_channels: widths of the learnable upsampler; each entry is one x2 stage from the
            stride-8 query mask, three stages reach the input resolution.
        qgmf_style: ``"paper"`` (eqs. 4-5 as described above) or ``"upstream"`` (the authors' mask branch:
            pixel embedding ``ReLU(Linear(E_E^I level 0)) + Conv1x1(projected C3)``, query embedding
            ``MLP(LayerNorm(E_D^I[q]))``, and an upsampler that fuses both pixel branches with two
            conv-BatchNorm-ReLU blocks before its x2 stages, with no residual to the query mask). The
            upstream style exists to load the authors' weights (:mod:`unihema.model.convert_upstream`).
    """

    text_padding_masks: bool = True
    cmf_order: str = "text_first"
    cmf_num_layers: int = 1
    cmf_ffn: bool = False
    cmf_ffn_dim: int = 1024
    cmf_residual: bool = False
    cmf_num_heads: int = 8
    cmf_cell_feature: bool = False
    tgvr_mode: str = "concat"
    tgvr_num_heads: int = 8
    scfe_inputs: str = "encoder_mean"
    scfe_pooling: str = "mean"
    qgmf_query: str = "first"
    qgmf_mask_size: str | int = QGMF_INPUT_SIZE
    qgmf_mlp_layers: int = 3
    qgmf_upsampler_channels: tuple[int, ...] = (128, 64, 32)
    qgmf_style: str = "paper"

    @classmethod
    def upstream(cls, **overrides: Any) -> HemaFormerConfig:
        """The choices of the authors' released code (where it differs from the paper)."""
        values: dict[str, Any] = dict(
            text_padding_masks=False, cmf_order="image_first", cmf_num_layers=2, cmf_ffn=True,
            cmf_residual=True, tgvr_mode="gate", qgmf_mask_size=512, qgmf_style="upstream",
            qgmf_upsampler_channels=(128, 64),
        )  # fmt: skip
        values.update(overrides)
        return cls(**values)

    def validate(self, prefix: str = "hemaformer.") -> None:
        _require(
            self.cmf_order in CMF_ORDERS, f"{prefix}cmf_order", f"must be one of {CMF_ORDERS}", self.cmf_order
        )
        _require(
            self.tgvr_mode in TGVR_MODES, f"{prefix}tgvr_mode", f"must be one of {TGVR_MODES}", self.tgvr_mode
        )
        _require(
            self.scfe_inputs in SCFE_INPUTS,
            f"{prefix}scfe_inputs",
            f"must be one of {SCFE_INPUTS}",
            self.scfe_inputs,
        )
        _require(
            isinstance(self.cmf_cell_feature, bool),
            f"{prefix}cmf_cell_feature",
            "must be true or false",
            self.cmf_cell_feature,
        )
        _require(
            self.scfe_pooling in SCFE_POOLINGS,
            f"{prefix}scfe_pooling",
            f"must be one of {SCFE_POOLINGS}",
            self.scfe_pooling,
        )
        _require(
            self.qgmf_query in QGMF_QUERIES,
            f"{prefix}qgmf_query",
            f"must be one of {QGMF_QUERIES}",
            self.qgmf_query,
        )
        _require(
            self.qgmf_style in QGMF_STYLES,
            f"{prefix}qgmf_style",
            f"must be one of {QGMF_STYLES}",
            self.qgmf_style,
        )
        _positive_int(
            prefix,
            self,
            "cmf_num_layers",
            "cmf_ffn_dim",
            "cmf_num_heads",
            "tgvr_num_heads",
            "qgmf_mlp_layers",
        )
        size = self.qgmf_mask_size
        _require(
            size == QGMF_INPUT_SIZE or (isinstance(size, int) and not isinstance(size, bool) and size > 0),
            f"{prefix}qgmf_mask_size",
            f"must be {QGMF_INPUT_SIZE!r} or a positive integer",
            size,
        )
        channels = self.qgmf_upsampler_channels
        _require(
            isinstance(channels, tuple)
            and len(channels) > 0
            and all(isinstance(c, int) and c > 0 for c in channels),
            f"{prefix}qgmf_upsampler_channels",
            "must be a non-empty tuple of positive integers",
            channels,
        )


@dataclass
class HeadsConfig:
    """Task heads. Class counts default to the unified vocabularies of :mod:`unihema.data.vocab`.

    Args:
        num_detection_classes: detection classes (``len(DETECTION_CLASSES)``); the shared class head of
            D_I has this many sigmoid logits.
        num_cell_classes: single-cell classes (``len(CELL_CLASSES)``) of the SCFE classifier.
        cell_head_hidden_dims: hidden widths of the single-cell class MLP on the SCFE vector.
        cell_head_dropout: dropout between the layers of that MLP.
        box_attribute_hidden_dim: hidden width of the per-box morphology head (0 = one linear layer).
        cell_attribute_hidden_dim: hidden width of the single-cell attribute head (0 = linear).
    """

    num_detection_classes: int = len(DETECTION_CLASSES)
    num_cell_classes: int = len(CELL_CLASSES)
    cell_head_hidden_dims: tuple[int, ...] = (256, 128)
    cell_head_dropout: float = 0.1
    box_attribute_hidden_dim: int = 0
    cell_attribute_hidden_dim: int = 256

    def validate(self, prefix: str = "heads.") -> None:
        _positive_int(prefix, self, "num_detection_classes", "num_cell_classes")
        dims = self.cell_head_hidden_dims
        _require(
            isinstance(dims, tuple) and all(isinstance(d, int) and d > 0 for d in dims),
            f"{prefix}cell_head_hidden_dims",
            "must be a tuple of positive integers",
            dims,
        )
        _probability(prefix, self, "cell_head_dropout")
        for name in ("box_attribute_hidden_dim", "cell_attribute_hidden_dim"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and value >= 0, f"{prefix}{name}", "must be an integer >= 0", value
            )


@dataclass
class DenoisingConfig:
    """DINO contrastive denoising (active in training when detection targets are given).

    Args:
        enabled: build denoising queries from the ground truth during training (the authors' code
            configures but never runs them).
        number: total number of denoising queries per image (``dn_number``).
        label_noise_ratio: probability of flipping a denoising query's label.
        box_noise_scale: scale of the box jitter.
    """

    enabled: bool = True
    number: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 0.4

    def validate(self, prefix: str = "denoising.") -> None:
        _require(
            isinstance(self.number, int) and self.number >= 0,
            f"{prefix}number",
            "must be an integer >= 0",
            self.number,
        )
        _require(
            0.0 <= self.label_noise_ratio <= 1.0,
            f"{prefix}label_noise_ratio",
            "must be in [0, 1]",
            self.label_noise_ratio,
        )
        _require(
            self.box_noise_scale >= 0.0, f"{prefix}box_noise_scale", "must be >= 0", self.box_noise_scale
        )


_SECTIONS: dict[str, type] = {
    "vision": VisionConfig,
    "text": TextConfig,
    "hemaformer": HemaFormerConfig,
    "heads": HeadsConfig,
    "denoising": DenoisingConfig,
}


@dataclass
class UniHemaConfig:
    """The whole model. Build from a preset (:meth:`from_preset`), a dict, or a JSON/YAML file.

    Args:
        vision: backbone, image encoder and image decoder (:class:`VisionConfig`).
        text: T5 text encoder/decoder and tokenizer (:class:`TextConfig`).
        hemaformer: CMF, TGVR, SCFE and QGMF (:class:`HemaFormerConfig`).
        heads: task heads and label-space sizes (:class:`HeadsConfig`).
        denoising: DINO denoising queries (:class:`DenoisingConfig`).
        preset: name of the preset this configuration started from (informational).
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    hemaformer: HemaFormerConfig = field(default_factory=HemaFormerConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    denoising: DenoisingConfig = field(default_factory=DenoisingConfig)
    preset: str | None = None

    FORMAT_VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raises :class:`ConfigError` naming the first invalid one."""
        for name, cls in _SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {type(section).__name__}")
            section.validate(f"{name}.")
        d_model = self.vision.d_model
        for name in ("cmf_num_heads", "tgvr_num_heads"):
            heads = getattr(self.hemaformer, name)
            _require(
                d_model % heads == 0, f"hemaformer.{name}", f"must divide vision.d_model ({d_model})", heads
            )

    # ----------------------------------------------------------------------------------------- dicts
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), suitable for JSON and YAML."""

        def plain(value: Any) -> Any:
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value

        out: dict[str, Any] = {"format_version": self.FORMAT_VERSION, "preset": self.preset}
        for name in _SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UniHemaConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError` naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"configuration must be a mapping, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format_version", cls.FORMAT_VERSION)
        if version != cls.FORMAT_VERSION:
            raise ConfigError(f"format_version {version!r} is not supported (expected {cls.FORMAT_VERSION})")
        preset = data.pop("preset", None)
        sections: dict[str, Any] = {}
        for name, value in data.items():
            if name not in _SECTIONS:
                raise ConfigError(
                    f"{name} is not a configuration section (expected one of {tuple(_SECTIONS)})"
                )
            sections[name] = _section_from_dict(name, _SECTIONS[name], value)
        return cls(**sections, preset=preset)

    # ----------------------------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the configuration as JSON (``.json``) or YAML (``.yaml``/``.yml``), atomically."""
        path = Path(path)
        data = self.to_dict()
        suffix = path.suffix.lower()
        if suffix == ".json":
            text = json.dumps(data, indent=2) + "\n"
        elif suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            raise ConfigError(f"{path}: configuration files must end in .json, .yaml or .yml")
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UniHemaConfig:
        """Read a configuration written by :meth:`save` (JSON or YAML by suffix)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"configuration file not found: {path}")
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                data = json.loads(text)
            elif suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                raise ConfigError(f"{path}: configuration files must end in .json, .yaml or .yml")
        except (json.JSONDecodeError, ImportError) as error:
            raise ConfigError(f"{path}: not a valid configuration file ({error})") from error
        except Exception as error:  # yaml.YAMLError without importing yaml at module level
            if type(error).__module__.startswith("yaml"):
                raise ConfigError(f"{path}: not a valid YAML configuration ({error})") from error
            raise
        try:
            return cls.from_dict(data)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from error

    # --------------------------------------------------------------------------------------- presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> UniHemaConfig:
        """A named preset (``"tiny"`` or ``"paper"``) with optional per-section overrides.

        ``overrides`` maps a section name to a dict of fields (merged into the preset) or to a complete
        section dataclass, e.g. ``from_preset("tiny", vision={"num_queries": 100})``.
        """
        if name not in PRESETS:
            raise ConfigError(f"preset must be one of {PRESETS}, got {name!r}")
        base = (_tiny_preset if name == "tiny" else _paper_preset)().to_dict()
        for section, value in overrides.items():
            if section not in _SECTIONS:
                raise ConfigError(
                    f"{section} is not a configuration section (expected one of {tuple(_SECTIONS)})"
                )
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                base[section] = UniHemaConfig(**{section: value}).to_dict()[section]
            elif isinstance(value, dict):
                base[section] = {**base[section], **value}
            else:
                raise ConfigError(f"override for {section} must be a dict or a {_SECTIONS[section].__name__}")
        base["preset"] = name
        return cls.from_dict(base)


def _section_from_dict(name: str, cls: type, value: Any) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping, got {type(value).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise ConfigError(f"{name}.{key} is not a known field of {cls.__name__}")
        if isinstance(item, list):
            item = tuple(item)
        kwargs[key] = item
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{name}: {error}") from error


def _tiny_preset() -> UniHemaConfig:
    return UniHemaConfig(
        vision=VisionConfig(
            backbone_depth=18, d_model=128, num_levels=4, encoder_layers=2, decoder_layers=2, num_heads=4,
            num_points=4, ffn_dim=512, num_queries=300,
        ),
        text=TextConfig(
            vocab_size=1024, tokenizer_vocab_size=1024, num_sentinels=32, d_model=128, d_kv=32, d_ff=512,
            num_layers=2, num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu", max_length=64,
        ),
        hemaformer=HemaFormerConfig(cmf_num_heads=4, tgvr_num_heads=4, cmf_ffn_dim=512, qgmf_upsampler_channels=(64, 32, 16)),
        heads=HeadsConfig(cell_head_hidden_dims=(128, 64), cell_attribute_hidden_dim=128),
        preset="tiny",
    )  # fmt: skip


def _paper_preset() -> UniHemaConfig:
    # flan-t5-base sizes: what the authors' code actually loads (the paper says "t5_base").
    return UniHemaConfig(
        vision=VisionConfig(),
        text=TextConfig(),
        hemaformer=HemaFormerConfig(),
        heads=HeadsConfig(),
        preset="paper",
    )
