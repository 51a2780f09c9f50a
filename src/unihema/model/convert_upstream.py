"""Load the authors' released Uni-Hema weights (their DINO-style ``checkpoint0023.pth``) into :class:`UniHema`.

The authors' model is mirrored by :func:`upstream_config`: the ``paper`` preset (ResNet-50, d 256, 6 + 6
layers, 900 queries, flan-t5-base sizes) with the Hema-Former choices of their code
(:meth:`HemaFormerConfig.upstream`: gated TGVR, image-first two-layer CMF with feed-forward, output
projection and residual, the authors' QGMF branch with a fixed 512 x 512 mask, text padded to 64 tokens
and attended without padding masks).

:func:`convert_upstream_state_dict` renames their tensors with an explicit rule table
(:data:`CONVERSION_RULES`; the first rule whose pattern matches the whole name wins), checks every shape,
and reports what it did not convert:

- ``dropped``: their tensors with no counterpart here, with the reason (dead parameters of their code,
  copies of tensors shared across decoder layers, the never-trained denoising label embedding);
- ``initialised``: our tensors (or rows of them) with no source in their checkpoint, kept as a freshly
  built model initialises them (the classes our vocabularies add, the single-cell attribute head, our
  denoising label embedding).

Class heads: their detection head has 30 logits of which logit 0 is unused; their logit ``i`` becomes our
class ``i - 1`` (:data:`unihema.data.vocab.DETECTION_CLASSES` starts with their 29 classes in order).
Their 45 single-cell classes are our first 45 (:data:`unihema.data.vocab.CELL_CLASSES`).

The text model's token embedding rows are indexed by flan-t5-base's SentencePiece ids: the VQA/MLM
paths only make sense with that tokenizer (pass ``tokenizer=`` a local flan-t5-base tokenizer folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unihema.data.vocab import (
    CELL_CLASSES,
    DETECTION_CLASSES,
    UPSTREAM_CELL_CLASSES,
    UPSTREAM_DETECTION_CLASSES,
)
from unihema.model.configuration import HemaFormerConfig, UniHemaConfig

if TYPE_CHECKING:
    from unihema.model.unihema import UniHema

# Their detection head: logit 0 unused, logits 1..29 = UPSTREAM_DETECTION_CLASSES.
UPSTREAM_DETECTION_OFFSET = 1
UPSTREAM_DETECTION_LOGITS = len(UPSTREAM_DETECTION_CLASSES) + UPSTREAM_DETECTION_OFFSET
UPSTREAM_CELL_LOGITS = len(UPSTREAM_CELL_CLASSES)
# Keys under which training scripts nest the model's state dict (DINO saves {"model": ..., "args": ...}).
_NESTED_STATE_KEYS = ("model", "state_dict")
# Prefix added by DistributedDataParallel.
_DDP_PREFIX = "module."


class UpstreamConversionError(ValueError):
    """The authors' checkpoint does not fit the configuration; the message names the tensor(s)."""


# ------------------------------------------------------------------------------------- the mirror


def upstream_config(**overrides: Any) -> UniHemaConfig:
    """The configuration that mirrors the authors' architecture (``paper`` preset + their choices).

    ``overrides`` are per-section overrides as for :meth:`UniHemaConfig.from_preset`; they are merged
    on top of the mirror (e.g. ``text={"pretrained_path": ...}``).
    """
    sections: dict[str, Any] = {
        # Their ResNet-50 keeps ImageNet batch-norm statistics frozen and trains layer2-4.
        "vision": {"backbone_norm": "frozen_bn", "trainable_backbone_layers": 3},
        "hemaformer": dataclasses.asdict(HemaFormerConfig.upstream()),
        "text": {"pad_to_max_length": True},
    }
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(sections.get(name), dict):
            sections[name] = {**sections[name], **value}
        else:
            sections[name] = value
    return UniHemaConfig.from_preset("paper", **sections)


# Options the authors' weights depend on that no shape check can catch: field -> required value.
_REQUIRED_OPTIONS: dict[str, Any] = {
    "vision.backbone_depth": 50,
    "vision.backbone_norm": "frozen_bn",
    "hemaformer.cmf_order": "image_first",
    "hemaformer.cmf_ffn": True,
    "hemaformer.cmf_residual": True,
    "hemaformer.tgvr_mode": "gate",
    "hemaformer.scfe_inputs": "encoder_mean",
    "hemaformer.qgmf_style": "upstream",
    "heads.box_attribute_hidden_dim": 0,
}


def check_upstream_compatible(config: UniHemaConfig) -> None:
    """Raise :class:`UpstreamConversionError` listing every option that the authors' weights cannot fill."""
    problems = []
    for dotted, required in _REQUIRED_OPTIONS.items():
        section, name = dotted.split(".")
        value = getattr(getattr(config, section), name)
        if value != required:
            problems.append(f"{dotted} is {value!r} but the authors' weights need {required!r}")
    for name, needed in (
        ("num_detection_classes", len(UPSTREAM_DETECTION_CLASSES)),
        ("num_cell_classes", UPSTREAM_CELL_LOGITS),
    ):
        value = getattr(config.heads, name)
        if value < needed:
            problems.append(f"heads.{name} is {value} but the authors' head has {needed} classes")
    if problems:
        raise UpstreamConversionError(
            "configuration does not mirror the authors' model (use upstream_config()): " + "; ".join(problems)
        )


# -------------------------------------------------------------------------------------- the rules

Transform = Callable[[Tensor, Tensor], Tensor]


def _flatten(source: Tensor, initial: Tensor) -> Tensor:
    """Their SCFE token is (1, 1, M); ours is (M,)."""
    if source.numel() != initial.numel():
        raise ValueError(f"has {source.numel()} values, expected {initial.numel()}")
    return source.reshape(initial.shape)


def _rows(offset: int, expected_rows: int) -> Transform:
    """Their rows ``offset..`` become our first rows; our remaining rows keep their initial values."""

    def transform(source: Tensor, initial: Tensor) -> Tensor:
        if source.shape[0] != expected_rows:
            raise ValueError(f"has {source.shape[0]} class rows, expected the authors' {expected_rows}")
        kept = expected_rows - offset
        if initial.shape[0] < kept or initial.shape[1:] != source.shape[1:]:
            raise ValueError(
                f"rows {offset}.. of shape {(kept, *source.shape[1:])} do not fit our {tuple(initial.shape)}"
            )
        out = initial.detach().clone()
        out[:kept] = source[offset:].to(out.dtype)
        return out

    return transform


@dataclass(frozen=True)
class Rule:
    """One line of the conversion table.

    Attributes:
        pattern: regular expression matched against the whole upstream name.
        target: ``re`` replacement template giving our name, or ``None`` for a dropped tensor.
        reason: why the tensor is dropped (dropped rules), or a note on the mapping.
        transform: ``(their tensor, our initial tensor) -> converted``; ``None`` copies as is.
        duplicate_of: for dropped copies of a shared tensor, the template of the copy that is converted
            (both must hold the same values).
    """

    pattern: str
    target: str | None
    reason: str = ""
    transform: Transform | None = None
    duplicate_of: str | None = None


_SHARED = "the authors share one {} across the six decoder layers; every copy holds the same tensor"
_DETECTION_ROWS = _rows(UPSTREAM_DETECTION_OFFSET, UPSTREAM_DETECTION_LOGITS)
_CELL_ROWS = _rows(0, UPSTREAM_CELL_LOGITS)

CONVERSION_RULES: tuple[Rule, ...] = (
    # B: backbone and input projection.
    Rule(r"backbone\.0\.body\.(.+)", r"backbone.body.\1"),
    Rule(r"input_proj\.(\d+)\.([01])\.(weight|bias)", r"input_proj.levels.\1.\2.\3"),
    # E_I.
    Rule(r"transformer\.level_embed", "image_encoder.level_embed"),
    Rule(r"transformer\.encoder\.layers\.(\d+)\.(.+)", r"image_encoder.layers.\1.\2"),
    # D_I, two-stage selection and the shared heads (the first copy is converted).
    Rule(r"transformer\.decoder\.layers\.(\d+)\.(.+)", r"image_decoder.layers.\1.\2"),
    Rule(r"transformer\.decoder\.norm\.(weight|bias)", r"image_decoder.norm.\1"),
    Rule(r"transformer\.decoder\.ref_point_head\.(.+)", r"image_decoder.ref_point_head.\1"),
    Rule(r"transformer\.tgt_embed\.weight", "image_decoder.tgt_embed.weight"),
    Rule(r"transformer\.enc_output\.(weight|bias)", r"image_decoder.enc_output.\1"),
    Rule(r"transformer\.enc_output_norm\.(weight|bias)", r"image_decoder.enc_output_norm.\1"),
    Rule(r"transformer\.enc_out_bbox_embed\.(.+)", r"image_decoder.enc_out_bbox_embed.\1"),
    Rule(
        r"transformer\.enc_out_class_embed\.(weight|bias)",
        r"image_decoder.enc_out_class_embed.\1",
        "their logit i -> our detection class i - 1",
        _DETECTION_ROWS,
    ),
    Rule(r"bbox_embed\.0\.(.+)", r"image_decoder.bbox_embed.\1"),
    Rule(
        r"class_embed\.0\.(weight|bias)",
        r"image_decoder.class_embed.\1",
        "their logit i -> our detection class i - 1",
        _DETECTION_ROWS,
    ),
    Rule(r"bbox_embed\.[1-9]\d*\.(.+)", None, _SHARED.format("box MLP"), duplicate_of=r"bbox_embed.0.\1"),
    Rule(
        r"transformer\.decoder\.bbox_embed\.\d+\.(.+)",
        None,
        _SHARED.format("box MLP") + " (the decoder holds a reference to it)",
        duplicate_of=r"bbox_embed.0.\1",
    ),
    Rule(
        r"class_embed\.[1-9]\d*\.(weight|bias)",
        None,
        _SHARED.format("class head"),
        duplicate_of=r"class_embed.0.\1",
    ),
    Rule(
        r"transformer\.decoder\.class_embed\.\d+\.(weight|bias)",
        None,
        _SHARED.format("class head") + " (the decoder holds a reference to it)",
        duplicate_of=r"class_embed.0.\1",
    ),
    # Heads on decoder states.
    Rule(r"morphology_embed\.0\.(weight|bias)", r"box_attribute_head.mlp.0.\1"),
    Rule(
        r"morphology_embed\.[1-9]\d*\.(weight|bias)",
        None,
        _SHARED.format("morphology head"),
        duplicate_of=r"morphology_embed.0.\1",
    ),
    # E_T / D_T: the whole T5 (flan-t5-base layout).
    Rule(r"T5_model\.(.+)", r"text.t5.\1"),
    # CMF.
    Rule(r"xformer\.(.+)", r"cmf.\1"),
    # TGVR (gate).
    Rule(r"transformer\.text_proj\.(weight|bias)", r"tgvr.text_proj.\1"),
    Rule(r"transformer\.cross_attnn\.(.+)", r"tgvr.cross_attn.\1"),
    Rule(r"transformer\.gate_mlp\.([02])\.(weight|bias)", r"tgvr.gate_mlp.\1.\2"),
    # SCFE and the single-cell classifier.
    Rule(r"transformer\.encoder\.cls_token", "scfe.query", "(1, 1, M) -> (M,)", _flatten),
    Rule(r"transformer\.encoder\.fuse_proj\.(weight|bias)", r"scfe.proj.\1"),
    Rule(
        r"classifier_image\.classifier2\.6\.(weight|bias)",
        r"cell_class_head.mlp.6.\1",
        "their class i -> our single-cell class i",
        _CELL_ROWS,
    ),
    Rule(r"classifier_image\.classifier2\.(\d+)\.(weight|bias)", r"cell_class_head.mlp.\1.\2"),
    # QGMF (qgmf_style="upstream").
    Rule(r"transformer\.encoder\.mask_feature_proj\.0\.(weight|bias)", r"qgmf.encoder_proj.0.\1"),
    Rule(r"transformer\.encoder\.mask_features\.(weight|bias)", r"qgmf.backbone_proj.\1"),
    Rule(r"decoder_norm\.(weight|bias)", r"qgmf.query_norm.\1"),
    Rule(r"mask_embed\.layers\.(\d+)\.(weight|bias)", r"qgmf.query_mlp.layers.\1.\2"),
    Rule(r"upsampler\.(.+)", r"qgmf.upsampler.\1"),
    # Dead upstream parameters.
    Rule(
        r"transformer\.combined_proj\.(weight|bias)",
        None,
        "eq. (3)'s concatenation projection: constructed but never called (their TGVR gates instead)",
    ),
    Rule(
        r"transformer\.encoder\.cls_fusion\..+",
        None,
        "attention layer for the SCFE token: constructed but its call is commented out",
    ),
    Rule(
        r"transformer\.encoder\.cls_pos",
        None,
        "position embedding of the SCFE token, which skips every encoder layer: it reaches no output",
    ),
    Rule(
        r"transformer\.(class_embed|label_enc|mask_embed|decoder_norm)\..+",
        None,
        "transformer-level module that their forward never uses",
    ),
    Rule(
        r"class(_pos)?_tokens\.\d+",
        None,
        "class-token patch of an extra-level loop that never runs (the first loop fills all levels)",
    ),
    Rule(
        r"class_embed_seg\.(weight|bias)",
        None,
        "segmentation class head: computed but read by no loss and no output",
    ),
    Rule(
        r"label_enc\.weight",
        None,
        "denoising label embedding: their denoising never ran (its gate is inverted), so it was never "
        "trained; ours is initialised fresh",
    ),
)

# Our tensors that no upstream tensor fills: pattern (whole name) -> reason.
INITIALISED_RULES: tuple[tuple[str, str], ...] = (
    (
        r"image_decoder\.label_enc\.weight",
        "denoising label embedding (training only): the authors' was never trained",
    ),
    (
        r"cell_attribute_head\..+",
        "single-cell (WBCAtt) attribute head: the authors' model has none",
    ),
)

# Upstream tensors that are tied to each other (must be equal): the T5 token embedding.
_TIED_UPSTREAM: tuple[tuple[str, ...], ...] = (
    (
        "T5_model.shared.weight",
        "T5_model.encoder.embed_tokens.weight",
        "T5_model.decoder.embed_tokens.weight",
    ),
)


@dataclass
class ConversionResult:
    """Outcome of :func:`convert_upstream_state_dict`.

    Attributes:
        state_dict: our tensor names -> tensors, complete for strict loading (converted tensors share
            storage with the input where no transform was needed).
        dropped: upstream name -> why it has no counterpart here.
        initialised: our name -> why it (or some of its rows) keeps its fresh initialisation.
        sources: our name -> the upstream tensor (and rows) it was converted from.
    """

    state_dict: dict[str, Tensor]
    dropped: dict[str, str] = field(default_factory=dict)
    initialised: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        """Counts of converted tensors (ours), dropped tensors (theirs) and initialised tensors (ours)."""
        return {
            "converted": len(self.sources),
            "dropped": len(self.dropped),
            "initialised": len(self.initialised),
        }


def _match(name: str) -> tuple[Rule, re.Match[str]] | None:
    for rule in _COMPILED_RULES:
        match = rule[1].fullmatch(name)
        if match is not None:
            return rule[0], match
    return None


_COMPILED_RULES = tuple((rule, re.compile(rule.pattern)) for rule in CONVERSION_RULES)


def _same_values(a: Tensor, b: Tensor) -> bool:
    if a.is_meta or b.is_meta:
        return a.shape == b.shape
    return a.shape == b.shape and torch.equal(a, b)


def _strip_ddp(state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    if state and all(name.startswith(_DDP_PREFIX) for name in state):
        return {name[len(_DDP_PREFIX) :]: tensor for name, tensor in state.items()}
    return state


def _extra_rows_reason(name: str, kept: int, total: int) -> str:
    vocabulary = DETECTION_CLASSES if "class_embed" in name else CELL_CLASSES
    extra = ", ".join(vocabulary[kept:total])
    return (
        f"rows {kept}..{total - 1} ({extra}): classes of our vocabulary that the authors' head lacks, "
        "kept from initialisation"
    )


def convert_upstream_state_dict(
    state: Mapping[str, Tensor],
    config: UniHemaConfig,
    initial_state: Mapping[str, Tensor] | None = None,
) -> ConversionResult:
    """Convert the authors' state dict to ours.

    Args:
        state: their tensor names -> tensors (the ``"model"`` entry of their checkpoint).
        config: our configuration; must mirror theirs (:func:`upstream_config`,
            :func:`check_upstream_compatible`).
        initial_state: the state dict of a freshly built model of ``config``, source of the tensors and
            rows that their checkpoint does not fill (and of the expected shapes); built from ``config``
            when omitted. A ``meta`` state gives a shape-only conversion.

    Raises:
        UpstreamConversionError: a tensor matches no rule, a shape does not fit (the message names the
            upstream tensor, our tensor and both shapes), a shared copy differs from its first copy, or
            one of our tensors has no source and no initialisation rule.
    """
    check_upstream_compatible(config)
    if initial_state is None:
        from unihema.model.unihema import UniHema

        initial_state = UniHema.from_config(config).state_dict()
    state = _strip_ddp(state)
    result = ConversionResult(state_dict={})
    errors: list[str] = []
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor):
            errors.append(f"upstream entry {name!r} is a {type(tensor).__name__}, not a tensor")
            continue
        found = _match(name)
        if found is None:
            errors.append(f"upstream tensor {name!r} {tuple(tensor.shape)} matches no conversion rule")
            continue
        rule, match = found
        if rule.target is None:
            if rule.duplicate_of is not None:
                original = match.expand(rule.duplicate_of)
                if original not in state:
                    errors.append(f"upstream tensor {name!r} is a copy of {original!r}, which is missing")
                    continue
                if not _same_values(tensor, state[original]):
                    errors.append(
                        f"upstream tensor {name!r} differs from {original!r}: the authors' heads are "
                        "expected to be shared across decoder layers"
                    )
                    continue
                result.dropped[name] = f"copy of {original}: {rule.reason}"
            else:
                result.dropped[name] = rule.reason
            continue
        ours = match.expand(rule.target)
        if ours not in initial_state:
            errors.append(f"upstream tensor {name!r} maps to {ours!r}, which this model does not have")
            continue
        if ours in result.state_dict:
            errors.append(f"{ours!r} is filled twice (from {result.sources[ours]!r} and {name!r})")
            continue
        initial = initial_state[ours]
        if rule.transform is not None:
            try:
                converted = rule.transform(tensor, initial)
            except ValueError as error:
                errors.append(
                    f"upstream tensor {name!r} {tuple(tensor.shape)} -> {ours!r} {tuple(initial.shape)}: {error}"
                )
                continue
        else:
            converted = tensor
        if converted.shape != initial.shape:
            errors.append(
                f"shape mismatch: upstream tensor {name!r} has shape {tuple(tensor.shape)} but {ours!r} "
                f"expects {tuple(initial.shape)}"
            )
            continue
        result.state_dict[ours] = converted.to(initial.dtype)
        if rule.transform is _DETECTION_ROWS or rule.transform is _CELL_ROWS:
            offset = UPSTREAM_DETECTION_OFFSET if rule.transform is _DETECTION_ROWS else 0
            rows = UPSTREAM_DETECTION_LOGITS if rule.transform is _DETECTION_ROWS else UPSTREAM_CELL_LOGITS
            kept = rows - offset
            result.sources[ours] = f"{name}[{offset}:{rows}] -> rows 0..{kept - 1}"
            if initial.shape[0] > kept:
                result.initialised[ours] = _extra_rows_reason(ours, kept, initial.shape[0])
        else:
            result.sources[ours] = name
    for group in _TIED_UPSTREAM:
        present = [n for n in group if n in state]
        for other in present[1:]:
            if not _same_values(state[present[0]], state[other]):
                errors.append(f"upstream tensors {present[0]!r} and {other!r} should be tied but differ")
    initialised_rules = [(re.compile(p), reason) for p, reason in INITIALISED_RULES]
    for ours, initial in initial_state.items():
        if ours in result.state_dict:
            continue
        reason = next((r for pattern, r in initialised_rules if pattern.fullmatch(ours)), None)
        if reason is None:
            errors.append(
                f"our tensor {ours!r} {tuple(initial.shape)} has no source in the upstream checkpoint"
            )
            continue
        result.state_dict[ours] = initial
        result.initialised[ours] = reason
    if errors:
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise UpstreamConversionError(f"cannot convert the upstream state dict:\n  {shown}{more}")
    return result


# ------------------------------------------------------------------------------------ checkpoints


def read_upstream_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read their ``.pth`` without executing pickled code (``torch.load(weights_only=True)``).

    Accepts a plain state dict or a training checkpoint ``{"model": state dict, "args": Namespace, ...}``
    (``argparse.Namespace`` is the only non-tensor class allowed while unpickling).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upstream checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors do not name the file
        raise UpstreamConversionError(
            f"{path}: not a checkpoint readable with torch.load(weights_only=True): {error}"
        ) from error
    if isinstance(data, Mapping):
        for key in _NESTED_STATE_KEYS:
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data:
        raise UpstreamConversionError(f"{path}: expected a state dict or a mapping with a 'model' state dict")
    bad = [key for key, value in data.items() if not isinstance(value, Tensor)]
    if bad:
        raise UpstreamConversionError(f"{path}: entry {bad[0]!r} of the state dict is not a tensor")
    return dict(data)


def convert_upstream_checkpoint(
    path: str | os.PathLike[str],
    config: UniHemaConfig | None = None,
    tokenizer: Any = None,
) -> tuple[UniHema, ConversionResult]:
    """Build the mirror model and load their checkpoint into it strictly.

    Args:
        path: their ``.pth`` (training checkpoint or plain state dict).
        config: defaults to :func:`upstream_config`.
        tokenizer: a tokenizer object or a local folder with flan-t5-base's tokenizer files; ``None``
            keeps the domain tokenizer (the text paths then read wrong embedding rows).

    Returns:
        ``(model in eval mode, conversion report)``.
    """
    from unihema.model.text import load_tokenizer
    from unihema.model.unihema import UniHema

    config = upstream_config() if config is None else config
    check_upstream_compatible(config)
    state = read_upstream_checkpoint(path)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    model = UniHema.from_config(config, tokenizer=tokenizer)
    try:
        result = convert_upstream_state_dict(state, model.config, model.state_dict())
    except UpstreamConversionError as error:
        raise UpstreamConversionError(f"{path}: {error}") from error
    model.load_state_dict(result.state_dict, strict=True)
    return model.eval(), result


def load_upstream_checkpoint(
    path: str | os.PathLike[str], config: UniHemaConfig | None = None, tokenizer: Any = None
) -> UniHema:
    """The authors' weights as a :class:`UniHema` (see :func:`convert_upstream_checkpoint`)."""
    return convert_upstream_checkpoint(path, config, tokenizer)[0]
