"""The sections of the UniHema model configuration, one dataclass per part of the paper.

- :class:`VisionConfig`: backbone B, input projection, image encoder E_I and image decoder D_I;
- :class:`TextConfig`: the T5 text encoder E_T / decoder D_T and its tokenizer;
- :class:`HemaFormerConfig`: the four Hema-Former sub-modules (CMF, TGVR, SCFE, QGMF), including the
  options where the paper and the authors' released code differ (the paper's version is the default);
- :class:`HeadsConfig`: task heads and label-space sizes (taken from :mod:`unihema.data.vocab`);
- :class:`DenoisingConfig`: DINO contrastive denoising queries used in detection training.

:class:`unihema.model.configuration.UniHemaConfig` holds one of each; import them from
:mod:`unihema.model.configuration`. Each section checks its fields in ``validate(prefix)`` and raises a
:class:`ConfigError` whose message starts with the dotted field name (``vision.num_queries must be a
positive integer, got 0``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from unihema.data.vocab import CELL_CLASSES, DETECTION_CLASSES
from unihema.validation import ValidationError, is_int, require

BACKBONE_DEPTHS = (18, 34, 50)
BACKBONE_NORMS = ("frozen_bn", "bn", "gn")
PRETRAINED_TRAINABLE_LAYERS = 3
"""ResNet stages trained on top of pretrained weights (layer2-4), as DINO and the paper."""
ALL_BACKBONE_LAYERS = 5
"""ResNet stages in all (stem, layer1-4): the most ``trainable_backbone_layers`` can be."""
FEED_FORWARD_PROJ = ("relu", "gated-gelu", "gelu", "gated-relu", "gated-silu", "silu")
CMF_ORDERS = ("text_first", "image_first")
CMF_CELL_FEATURES = ("token", "add")
TGVR_MODES = ("concat", "gate")
SCFE_INPUTS = ("encoder_mean", "encoder_mean+backbone", "encoder_mean+backbone_c5")
SCFE_POOLINGS = ("mean", "attention")
QGMF_QUERIES = ("first", "top_scoring")
QGMF_STYLES = ("paper", "upstream")
QGMF_INPUT_SIZE = "input"


class ConfigError(ValidationError):
    """A model configuration value is invalid; the message names the field."""


_require = functools.partial(require, error=ConfigError)


def _positive_int(prefix: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(is_int(value) and value > 0, f"{prefix}{name}", "must be a positive integer", value)


def _positive(prefix: str, obj: Any, *names: str) -> None:
    for name in names:
        _require(getattr(obj, name) > 0, f"{prefix}{name}", "must be positive", getattr(obj, name))


def _probability(prefix: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(
            isinstance(value, (int, float)) and 0.0 <= value < 1.0,
            f"{prefix}{name}",
            "must be in [0, 1)",
            value,
        )


def _one_of(prefix: str, obj: Any, **choices: tuple[Any, ...]) -> None:
    for name, allowed in choices.items():
        value = getattr(obj, name)
        _require(value in allowed, f"{prefix}{name}", f"must be one of {allowed}", value)


def _positive_int_tuple(prefix: str, name: str, value: Any, non_empty: bool) -> None:
    _require(
        isinstance(value, tuple)
        and (len(value) > 0 or not non_empty)
        and all(isinstance(v, int) and v > 0 for v in value),
        f"{prefix}{name}",
        f"must be a {'non-empty ' if non_empty else ''}tuple of positive integers",
        value,
    )


@dataclass
class VisionConfig:
    """Backbone B, input projection, image encoder E_I and image decoder D_I.

    Args:
        backbone_depth (int, default 50): ResNet depth of the backbone B, one of :data:`BACKBONE_DEPTHS`.
            Levels C3-C5 (strides 8/16/32) feed the input projection.
        backbone_weights (str | None, default None): ``None`` for random initialisation, a path to a
            torchvision ResNet state dict (``.safetensors`` or a tensor-only ``.pth``), or ``"imagenet"``
            for torchvision's ImageNet weights (only then may torchvision download them).
        trainable_backbone_layers (int | None, default None): number of trainable ResNet stages counted
            from the top (0 to :data:`ALL_BACKBONE_LAYERS`); the paper's value
            :data:`PRETRAINED_TRAINABLE_LAYERS` trains layer2-layer4 and freezes the stem and layer1.
            ``None`` chooses as torchvision's detection models do: :data:`PRETRAINED_TRAINABLE_LAYERS`
            with pretrained ``backbone_weights``, :data:`ALL_BACKBONE_LAYERS` with random initialisation,
            since random stages would otherwise stay random.
        backbone_norm (str | None, default None): normalisation layers of the ResNet: ``"frozen_bn"``
            (frozen, buffer-only batch norm, as in DETR-family models on pretrained weights), ``"bn"``
            (trainable BatchNorm) or ``"gn"`` (GroupNorm). ``None``: ``"frozen_bn"`` with pretrained
            ``backbone_weights``, ``"gn"`` with random initialisation (a frozen norm of a random network is
            an identity and the un-normalised activations of a deep random ResNet map every image to the
            same features; GroupNorm, unlike BatchNorm, does not depend on the tiny per-task batches or on
            how a batch is split across processes).
        d_model (int, default 256): width M of the projected image tokens, encoder, decoder and
            Hema-Former; divisible by 4 and by ``num_heads``.
        num_levels (int, default 4): number of feature levels (3 backbone levels plus ``num_levels - 3``
            extra stride-2 levels on C5); at least 3, the paper uses 4.
        encoder_layers (int, default 6): number of deformable self-attention layers of E_I.
        encoder_skip_levels (int, default 0): how many of the finest levels E_I leaves un-updated; 0
            updates every level (the paper). With 1, the stride-8 tokens keep the values the input
            projection gave them while every encoder layer still samples them, as Lite-DETR does: the
            finest level holds about 3/4 of the tokens and of the encoder's cost. An efficiency option of
            the ``fast`` preset, not of the paper's model.
        decoder_layers (int, default 6): number of decoder layers of D_I.
        num_heads (int, default 8): attention heads of E_I and D_I.
        num_points (int, default 4): deformable attention sampling points per head and level.
        ffn_dim (int, default 2048): hidden width of the encoder/decoder feed-forward blocks.
        dropout (float, default 0.0): dropout inside E_I and D_I, in [0, 1).
        num_queries (int, default 900): number of object queries K (top-K encoder proposals).
        position_temperature (float, default 20.0): temperature of the sine position encoding (DINO's
            value).
    """

    backbone_depth: int = 50
    backbone_weights: str | None = None
    trainable_backbone_layers: int | None = None
    backbone_norm: str | None = None
    d_model: int = 256
    num_levels: int = 4
    encoder_layers: int = 6
    encoder_skip_levels: int = 0
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
        _one_of(prefix, self, backbone_depth=BACKBONE_DEPTHS)
        layers = self.trainable_backbone_layers
        _require(
            layers is None or (isinstance(layers, int) and 0 <= layers <= ALL_BACKBONE_LAYERS),
            f"{prefix}trainable_backbone_layers",
            f"must be an integer in [0, {ALL_BACKBONE_LAYERS}] or null (automatic)",
            layers,
        )
        _require(
            self.backbone_norm is None or self.backbone_norm in BACKBONE_NORMS,
            f"{prefix}backbone_norm",
            f"must be one of {BACKBONE_NORMS} or null (automatic)",
            self.backbone_norm,
        )
        _positive_int(
            prefix, self, "d_model", "num_levels", "encoder_layers", "decoder_layers", "num_heads",
            "num_points", "ffn_dim", "num_queries",
        )  # fmt: skip
        _require(
            self.num_levels >= 3, f"{prefix}num_levels", "must be at least 3 (C3, C4, C5)", self.num_levels
        )
        _require(
            is_int(self.encoder_skip_levels) and 0 <= self.encoder_skip_levels < self.num_levels,
            f"{prefix}encoder_skip_levels",
            f"must be an integer from 0 to num_levels - 1 ({self.num_levels - 1})",
            self.encoder_skip_levels,
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
        _positive(prefix, self, "position_temperature")


@dataclass
class TextConfig:
    """The T5 text encoder E_T and text decoder D_T, and the tokenizer.

    The model is a ``transformers`` ``T5ForConditionalGeneration`` built from these sizes with random
    weights (nothing is downloaded). With ``pretrained_path`` the T5 weights, sizes and tokenizer are read
    from a local directory (e.g. a saved ``t5-base`` or ``flan-t5-base``) and override the sizes below.
    The defaults are the sizes of flan-t5-base.

    Args:
        pretrained_path (str | None, default None): local directory of a pretrained T5 (``config.json``,
            weights, tokenizer files), or ``None`` to build a random T5 with a tokenizer trained on the
            domain corpus.
        vocab_size (int, default 32128): rows of the token embedding (and lm_head) table; must be at least
            the tokenizer size.
        tokenizer_vocab_size (int, default 8000): target size of the domain tokenizer (Unigram pieces plus
            special tokens and sentinels) when no pretrained tokenizer is used; must not exceed
            ``vocab_size``.
        num_sentinels (int, default 100): number of ``<extra_id_N>`` sentinel tokens (masked-span
            placeholders), at least 1.
        d_model (int, default 768): T5 hidden width N.
        d_kv (int, default 64): width of each attention head.
        d_ff (int, default 2048): feed-forward width.
        num_layers (int, default 12): encoder blocks.
        num_decoder_layers (int, default 12): decoder blocks.
        num_heads (int, default 12): attention heads.
        feed_forward_proj (str, default "gated-gelu"): T5 feed-forward activation, one of
            :data:`FEED_FORWARD_PROJ`, e.g. ``"relu"`` (t5) or ``"gated-gelu"`` (flan-t5).
        tie_word_embeddings (bool, default False): share the input embedding with the lm_head (t5) or not
            (flan-t5).
        dropout_rate (float, default 0.1): T5 dropout, in [0, 1).
        layer_norm_epsilon (float, default 1e-6): T5 RMS-norm epsilon.
        relative_attention_num_buckets (int, default 32): T5 relative position buckets.
        relative_attention_max_distance (int, default 128): T5 relative position maximum distance.
        max_length (int, default 64): maximum number of tokens of a prompt or target text (longer texts are
            truncated); also the number of CMF learnable queries, one per text position.
        pad_to_max_length (bool, default False): pad every prompt to ``max_length`` tokens (the authors'
            code) instead of to the longest prompt of the batch. Only changes results when
            ``hemaformer.text_padding_masks`` is off, i.e. when TGVR and CMF attend to the padding
            positions too.
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
        _one_of(prefix, self, feed_forward_proj=FEED_FORWARD_PROJ)
        _probability(prefix, self, "dropout_rate")
        _require(
            isinstance(self.pad_to_max_length, bool),
            f"{prefix}pad_to_max_length",
            "must be a boolean",
            self.pad_to_max_length,
        )
        _positive(prefix, self, "layer_norm_epsilon")
        path = self.pretrained_path
        _require(
            path is None or (isinstance(path, str) and path != ""),
            f"{prefix}pretrained_path",
            "must be a non-empty path string or None",
            path,
        )


@dataclass
class HemaFormerConfig:
    """The Hema-Former sub-modules. Defaults follow the paper (section 3.2.2, eqs. 1-5).

    Args:
        text_padding_masks (bool, default True): mask padded text tokens in the TGVR and CMF
            cross-attentions (the authors' code attends to padding; masking is the correct behaviour).
        cmf_order (str, default "text_first"): ``"text_first"`` (eqs. 1-2: learnable queries attend to the
            text, then to the projected backbone tokens E_B^I) or ``"image_first"`` (the authors' code:
            image, then text).
        cmf_num_layers (int, default 1): number of stacked CMF blocks (paper 1, code 2).
        cmf_ffn (bool, default False): add a GELU feed-forward sub-layer after the two cross-attentions
            (code) or not (paper).
        cmf_ffn_dim (int, default 1024): width of that feed-forward sub-layer.
        cmf_residual (bool, default False): add the text-encoder states E_E^T to the projected CMF output
            (code) or return the projection alone (paper). The output is always projected from M to the
            text width N.
        cmf_num_heads (int, default 8): attention heads of the CMF cross-attentions; must divide
            ``vision.d_model``.
        cmf_cell_feature (bool or str, default False): give the text decoder the SCFE cell feature E_Z
            (off in the paper). E_Z is what single-cell classification and cell morphology train; with it
            the answers about a cell can follow what the classifier sees (``docs/training.md``).
            ``"token"`` (or ``true``): the CMF image attention reads E_Z as one more image token;
            ``"add"``: a linear map of E_Z is also added to every position of CMF's output E_W^T, so
            every cross-attention read of the text decoder carries it.
        tgvr_mode (str, default "concat"): ``"concat"`` (eq. 3: concatenate the queries with their text
            cross-attention and project) or ``"gate"`` (the code: per-channel sigmoid gate mixing query
            and attention).
        tgvr_num_heads (int, default 8): attention heads of the TGVR cross-attention; must divide
            ``vision.d_model``.
        scfe_inputs (str, default "encoder_mean"): ``"encoder_mean"`` (learned query concatenated with the
            mean of the encoder tokens, as in the paper) or ``"encoder_mean+backbone"`` (additionally the
            mean of the projected level-0 backbone tokens, the ablation's "backbone + SCFE features") or
            ``"encoder_mean+backbone_c5"`` (additionally the mean of the raw last backbone level, before
            the input projection's GroupNorm removes each image's channel means).
        scfe_pooling (str, default "mean"): how SCFE summarises the encoder tokens: ``"mean"`` (the paper)
            or ``"attention"`` (the learned query attends to the tokens; learns much faster from scratch,
            see ``docs/training.md``).
        qgmf_query (str, default "first"): which decoder query gives the mask (eq. 5): ``"first"`` (the
            paper: the first query; queries are ordered by their encoder-proposal score, so it is the most
            object-like proposal) or ``"top_scoring"`` (the query with the highest final-layer class
            score).
        qgmf_mask_size (str | int, default "input"): ``"input"`` (:data:`QGMF_INPUT_SIZE`) to predict the
            mask at the (padded) input size, or an integer side length for a fixed square output (the
            authors' code uses 512).
        qgmf_mlp_layers (int, default 3): layers of the query-embedding MLP of eq. 4.
        qgmf_upsampler_channels (tuple[int, ...], default (128, 64, 32)): widths of the learnable
            upsampler; each entry is one x2 stage from the stride-8 query mask, three stages reach the
            input resolution.
        qgmf_style (str, default "paper"): ``"paper"`` (eqs. 4-5 as described above) or ``"upstream"`` (the
            authors' mask branch: pixel embedding ``ReLU(Linear(E_E^I level 0)) + Conv1x1(projected C3)``,
            query embedding ``MLP(LayerNorm(E_D^I[q]))``, and an upsampler that fuses both pixel branches
            with two conv-BatchNorm-ReLU blocks before its x2 stages, with no residual to the query mask).
            The upstream style exists to load the authors' weights (:mod:`unihema.model.convert_upstream`).
    """

    text_padding_masks: bool = True
    cmf_order: str = "text_first"
    cmf_num_layers: int = 1
    cmf_ffn: bool = False
    cmf_ffn_dim: int = 1024
    cmf_residual: bool = False
    cmf_num_heads: int = 8
    cmf_cell_feature: bool | str = False
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

    @property
    def cell_feature_fusion(self) -> str | None:
        """How the text path reads E_Z: ``None`` (paper), ``"token"`` or ``"add"``."""
        if self.cmf_cell_feature is True:
            return "token"
        return self.cmf_cell_feature or None

    def validate(self, prefix: str = "hemaformer.") -> None:
        _one_of(
            prefix, self, cmf_order=CMF_ORDERS, tgvr_mode=TGVR_MODES, scfe_inputs=SCFE_INPUTS,
            scfe_pooling=SCFE_POOLINGS, qgmf_query=QGMF_QUERIES, qgmf_style=QGMF_STYLES,
        )  # fmt: skip
        _require(
            isinstance(self.cmf_cell_feature, bool) or self.cmf_cell_feature in CMF_CELL_FEATURES,
            f"{prefix}cmf_cell_feature",
            f"must be false, true or one of {CMF_CELL_FEATURES}",
            self.cmf_cell_feature,
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
            size == QGMF_INPUT_SIZE or (is_int(size) and size > 0),
            f"{prefix}qgmf_mask_size",
            f"must be {QGMF_INPUT_SIZE!r} or a positive integer",
            size,
        )
        _positive_int_tuple(prefix, "qgmf_upsampler_channels", self.qgmf_upsampler_channels, non_empty=True)


@dataclass
class HeadsConfig:
    """Task heads. Class counts default to the unified vocabularies of :mod:`unihema.data.vocab`.

    Args:
        num_detection_classes (int, default ``len(DETECTION_CLASSES)``): detection classes; the shared
            class head of D_I has this many sigmoid logits.
        num_cell_classes (int, default ``len(CELL_CLASSES)``): single-cell classes of the SCFE classifier.
        cell_head_hidden_dims (tuple[int, ...], default (256, 128)): hidden widths of the single-cell class
            MLP on the SCFE vector.
        cell_head_dropout (float, default 0.1): dropout between the layers of that MLP, in [0, 1).
        box_attribute_hidden_dim (int, default 0): hidden width of the per-box morphology head (0 = one
            linear layer).
        cell_attribute_hidden_dim (int, default 256): hidden width of the single-cell attribute head
            (0 = linear).
    """

    num_detection_classes: int = len(DETECTION_CLASSES)
    num_cell_classes: int = len(CELL_CLASSES)
    cell_head_hidden_dims: tuple[int, ...] = (256, 128)
    cell_head_dropout: float = 0.1
    box_attribute_hidden_dim: int = 0
    cell_attribute_hidden_dim: int = 256

    def validate(self, prefix: str = "heads.") -> None:
        _positive_int(prefix, self, "num_detection_classes", "num_cell_classes")
        _positive_int_tuple(prefix, "cell_head_hidden_dims", self.cell_head_hidden_dims, non_empty=False)
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
        enabled (bool, default True): build denoising queries from the ground truth during training (the
            authors' code configures but never runs them).
        number (int, default 100): total number of denoising queries per image (``dn_number``), >= 0.
        label_noise_ratio (float, default 0.5): probability of flipping a denoising query's label, in
            [0, 1].
        box_noise_scale (float, default 0.4): scale of the box jitter, >= 0.
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
