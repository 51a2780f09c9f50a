"""Conversion of the authors' checkpoint, tested on synthetic state dicts built from their tensor listing
(``upstream-state-dict.tsv``: every name, shape and dtype of their model)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from support.paths import REFERENCE_ROOT, reference_file
from support.testers import IMAGE_SIZE, PROMPTS, small_test_config
from unihema.cli import model as model_cli
from unihema.data.vocab import DETECTION_CLASSES, UPSTREAM_CELL_CLASSES, UPSTREAM_DETECTION_CLASSES
from unihema.model.configuration import HemaFormerConfig, UniHemaConfig
from unihema.model.convert_upstream import (
    CONVERSION_RULES,
    UpstreamConversionError,
    check_upstream_compatible,
    convert_upstream_state_dict,
    read_upstream_checkpoint,
    upstream_config,
)
from unihema.model.hemaformer import UpstreamQueryGuidedMaskFormer
from unihema.model.image_decoder import PRIOR_PROB
from unihema.model.text import TextModel
from unihema.model.unihema import UniHema

UPSTREAM_STATE_DICT = REFERENCE_ROOT / "upstream-state-dict.tsv"
UPSTREAM_TENSORS = 1062  # rows of the listing
# Spot checks: upstream name -> our name, copied as is.
KNOWN_PAIRS = {
    "input_proj.0.0.weight": "input_proj.levels.0.0.weight",
    "input_proj.3.1.bias": "input_proj.levels.3.1.bias",
    "backbone.0.body.layer2.0.downsample.1.running_var": "backbone.body.layer2.0.downsample.1.running_var",
    "transformer.encoder.layers.0.self_attn.sampling_offsets.weight": (
        "image_encoder.layers.0.self_attn.sampling_offsets.weight"
    ),
    "transformer.decoder.layers.5.cross_attn.attention_weights.bias": (
        "image_decoder.layers.5.cross_attn.attention_weights.bias"
    ),
    "T5_model.shared.weight": "text.t5.shared.weight",
    "T5_model.lm_head.weight": "text.t5.lm_head.weight",
    "xformer.layers.1.norm1.weight": "cmf.layers.1.norm1.weight",
    "transformer.cross_attnn.in_proj_weight": "tgvr.cross_attn.in_proj_weight",
    "mask_embed.layers.2.weight": "qgmf.query_mlp.layers.2.weight",
    "upsampler.upsample.8.weight": "qgmf.upsampler.upsample.8.weight",
    "upsampler.fusion_conv.4.num_batches_tracked": "qgmf.upsampler.fusion_conv.4.num_batches_tracked",
    "morphology_embed.0.weight": "box_attribute_head.mlp.0.weight",
}
# Heads shared by the decoder layers, listed once per layer (and again under transformer.decoder.).
SHARED_HEADS = ("class_embed.", "bbox_embed.", "morphology_embed.")


def upstream_listing() -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    reference_file(UPSTREAM_STATE_DICT.name)
    rows = []
    for line in UPSTREAM_STATE_DICT.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.split("x")) if shape else ()
        rows.append((name, dims, getattr(torch, dtype)))
    return rows


def _first_copy(name: str) -> str | None:
    """``class_embed.3.bias`` / ``transformer.decoder.class_embed.3.bias`` -> ``class_embed.0.bias``."""
    for head in SHARED_HEADS:
        for prefix in (head, f"transformer.decoder.{head}"):
            if name.startswith(prefix):
                layer, _, tail = name[len(prefix) :].partition(".")
                if layer.isdigit():
                    return f"{head}0.{tail}"
    return None


def synthetic_state(device: str = "meta", real: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of the listed shapes: ``meta`` (shape only) except the ``real`` names (random values).
    Copies of a shared head are the same tensor, as in the authors' checkpoint."""
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for name, dims, dtype in upstream_listing():
        if device == "cpu" or (real and name in real):
            if dtype.is_floating_point:
                state[name] = torch.randn(dims, generator=generator, dtype=dtype)
            else:
                state[name] = torch.randint(0, 100, dims, generator=generator, dtype=dtype)
        else:
            state[name] = torch.empty(dims, dtype=dtype, device="meta")
    for name in list(state):
        first = _first_copy(name)
        if first is not None:
            state[name] = state[first]
    for name in ("T5_model.encoder.embed_tokens.weight", "T5_model.decoder.embed_tokens.weight"):
        state[name] = state["T5_model.shared.weight"]
    return state


@pytest.fixture(scope="module")
def meta_model() -> UniHema:
    with torch.device("meta"):
        return UniHema.from_config(upstream_config())


def test_mirror_configuration() -> None:
    config = upstream_config()
    assert config.preset == "paper"
    h = config.hemaformer
    assert (h.tgvr_mode, h.cmf_order, h.cmf_num_layers, h.cmf_ffn, h.cmf_residual) == (
        "gate", "image_first", 2, True, True,
    )  # fmt: skip
    assert (h.qgmf_style, h.qgmf_mask_size, h.qgmf_upsampler_channels, h.text_padding_masks) == (
        "upstream", 512, (128, 64), False,
    )  # fmt: skip
    assert config.text.pad_to_max_length and config.text.max_length == 64
    check_upstream_compatible(config)
    # The config survives a save/load round trip (what save_pretrained writes).
    assert UniHemaConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UpstreamConversionError) as error:
        check_upstream_compatible(UniHemaConfig.from_preset("paper"))
    for field in ("hemaformer.cmf_order", "hemaformer.tgvr_mode", "hemaformer.qgmf_style", "cmf_residual"):
        assert field in str(error.value)


def test_meta_conversion_accounts_for_every_tensor(meta_model: UniHema) -> None:
    state = synthetic_state()
    assert len(state) == UPSTREAM_TENSORS
    result = convert_upstream_state_dict(state, meta_model.config, meta_model.state_dict())
    # Every upstream tensor is converted or dropped with a reason, never both.
    converted_from = {source.split("[")[0] for source in result.sources.values()}
    assert converted_from | set(result.dropped) == set(state)
    assert not converted_from & set(result.dropped)
    assert all(reason for reason in result.dropped.values())
    # Every one of our tensors is filled; strict loading accepts the result.
    assert set(result.state_dict) == set(meta_model.state_dict())
    assert set(result.sources) | set(result.initialised) == set(meta_model.state_dict())
    meta_model.load_state_dict(result.state_dict, strict=True)
    for theirs, ours in KNOWN_PAIRS.items():
        assert result.sources[ours] == theirs
    assert result.sources["scfe.query"] == "transformer.encoder.cls_token"
    assert result.sources["image_decoder.class_embed.weight"].startswith("class_embed.0.weight[1:30]")
    # Dead parameters and shared copies are dropped, with the reason.
    assert "never called" in result.dropped["transformer.combined_proj.weight"]
    assert "commented out" in result.dropped["transformer.encoder.cls_fusion.linear1.weight"]
    assert "never trained" in result.dropped["label_enc.weight"]
    assert "no loss" in result.dropped["class_embed_seg.weight"]
    assert result.dropped["class_embed.3.bias"].startswith("copy of class_embed.0.bias")
    assert result.dropped["transformer.decoder.bbox_embed.0.layers.2.weight"].startswith(
        "copy of bbox_embed.0"
    )
    for name in (
        "class_tokens.0",
        "class_pos_tokens.3",
        "transformer.label_enc.weight",
        "transformer.encoder.cls_pos",
    ):
        assert name in result.dropped
    # Fully initialised tensors: only the ones without an upstream counterpart.
    fully = {name for name in result.initialised if name not in result.sources}
    assert fully == {
        "image_decoder.label_enc.weight",
        "cell_attribute_head.mlp.0.weight",
        "cell_attribute_head.mlp.0.bias",
        "cell_attribute_head.mlp.2.weight",
        "cell_attribute_head.mlp.2.bias",
    }
    assert "p. falciparum" in result.initialised["image_decoder.class_embed.weight"]
    assert result.summary() == {"converted": 927, "dropped": 135, "initialised": 11}


def test_real_values_land_bit_exact(meta_model: UniHema) -> None:
    real = set(KNOWN_PAIRS) - {"T5_model.shared.weight"} | {
        "class_embed.0.weight",
        "class_embed.0.bias",
        "transformer.enc_out_class_embed.bias",
        "classifier_image.classifier2.6.weight",
        "transformer.encoder.cls_token",
    }
    state = synthetic_state(real=real)
    initial = dict(meta_model.state_dict())
    # Real initial values where rows are kept from initialisation.
    for name in ("image_decoder.class_embed.weight", "image_decoder.class_embed.bias",
                 "image_decoder.enc_out_class_embed.bias", "cell_class_head.mlp.6.weight"):  # fmt: skip
        initial[name] = torch.randn(initial[name].shape)
    result = convert_upstream_state_dict(state, meta_model.config, initial)
    out = result.state_dict
    for theirs, ours in KNOWN_PAIRS.items():
        if theirs in real:
            assert torch.equal(out[ours], state[theirs]), theirs
    # Detection head: their logit i -> our class i - 1 (logit 0 unused); our extra classes keep their init.
    n = len(UPSTREAM_DETECTION_CLASSES)
    for name, source in (("class_embed.weight", "class_embed.0.weight"), ("class_embed.bias", "class_embed.0.bias"),
                         ("enc_out_class_embed.bias", "transformer.enc_out_class_embed.bias")):  # fmt: skip
        ours = out[f"image_decoder.{name}"]
        assert ours.shape[0] == len(DETECTION_CLASSES)
        assert torch.equal(ours[:n], state[source][1:])
        assert torch.equal(ours[n:], initial[f"image_decoder.{name}"][n:])
    rbc = DETECTION_CLASSES.index("rbc")
    assert torch.equal(out["image_decoder.class_embed.weight"][rbc], state["class_embed.0.weight"][rbc + 1])
    # Single-cell head: their class i -> our class i.
    cells = out["cell_class_head.mlp.6.weight"]
    assert torch.equal(cells[: len(UPSTREAM_CELL_CLASSES)], state["classifier_image.classifier2.6.weight"])
    assert torch.equal(cells[len(UPSTREAM_CELL_CLASSES) :], initial["cell_class_head.mlp.6.weight"][45:])
    assert torch.equal(out["scfe.query"], state["transformer.encoder.cls_token"].reshape(-1))


def test_shape_mismatch_names_tensor_and_both_shapes(meta_model: UniHema) -> None:
    state = synthetic_state()
    state["input_proj.0.0.weight"] = torch.empty(256, 256, 1, 1, device="meta")
    with pytest.raises(UpstreamConversionError) as error:
        convert_upstream_state_dict(state, meta_model.config, meta_model.state_dict())
    message = str(error.value)
    assert "'input_proj.0.0.weight'" in message and "(256, 256, 1, 1)" in message
    assert "'input_proj.levels.0.0.weight'" in message and "(256, 512, 1, 1)" in message
    # A class head of the wrong width names the row count.
    state = synthetic_state()
    state["class_embed.0.weight"] = torch.empty(91, 256, device="meta")
    with pytest.raises(UpstreamConversionError, match=r"class_embed\.0\.weight.*91 class rows.*30"):
        convert_upstream_state_dict(state, meta_model.config, meta_model.state_dict())


def test_unknown_missing_and_untied_tensors_are_errors(meta_model: UniHema) -> None:
    initial = meta_model.state_dict()
    state = synthetic_state()
    state["transformer.something_new.weight"] = torch.empty(3, device="meta")
    with pytest.raises(UpstreamConversionError, match="something_new.*matches no conversion rule"):
        convert_upstream_state_dict(state, meta_model.config, initial)
    state = synthetic_state()
    del state["xformer.queries"]
    with pytest.raises(UpstreamConversionError, match=r"'cmf\.queries'.*no source"):
        convert_upstream_state_dict(state, meta_model.config, initial)
    state = synthetic_state(real={"class_embed.0.bias"})
    state["class_embed.2.bias"] = state["class_embed.0.bias"] + 1.0
    with pytest.raises(
        UpstreamConversionError, match=r"class_embed\.2\.bias.*differs from 'class_embed\.0\.bias'"
    ):
        convert_upstream_state_dict(state, meta_model.config, initial)
    # A wrapped DistributedDataParallel state dict converts the same.
    wrapped = {f"module.{name}": tensor for name, tensor in synthetic_state().items()}
    assert convert_upstream_state_dict(wrapped, meta_model.config, initial).summary()["converted"] == 927


def test_rules_are_anchored_and_unique() -> None:
    # Every name of the listing matches a rule (the first match wins) and every rule is used.
    import re

    used = set()
    for name, _, _ in upstream_listing():
        matches = [i for i, rule in enumerate(CONVERSION_RULES) if re.fullmatch(rule.pattern, name)]
        assert matches, name
        used.add(matches[0])
    assert used == set(range(len(CONVERSION_RULES)))


def test_read_checkpoint_formats(tmp_path: Path) -> None:
    tensors = {"input_proj.0.0.bias": torch.arange(4.0), "xformer.queries": torch.ones(2, 3)}
    plain = tmp_path / "plain.pth"
    torch.save(tensors, plain)
    training = tmp_path / "training.pth"
    torch.save({"model": tensors, "args": argparse.Namespace(lr=1e-4, num_classes=30), "epoch": 23}, training)
    for path in (plain, training):
        state = read_upstream_checkpoint(path)
        assert set(state) == set(tensors) and torch.equal(
            state["xformer.queries"], tensors["xformer.queries"]
        )
    broken = tmp_path / "broken.pth"
    torch.save({"model": {"a": torch.ones(1), "b": "text"}}, broken)
    with pytest.raises(UpstreamConversionError, match="'b'.*not a tensor"):
        read_upstream_checkpoint(broken)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UpstreamConversionError, match="garbage.pth"):
        read_upstream_checkpoint(garbage)
    with pytest.raises(FileNotFoundError):
        read_upstream_checkpoint(tmp_path / "missing.pth")


def test_upstream_qgmf_matches_its_definition() -> None:
    torch.manual_seed(0)
    qgmf = UpstreamQueryGuidedMaskFormer(16, upsampler_channels=(8, 4)).eval()
    projected_c3, level0 = torch.randn(2, 16, 6, 7), torch.randn(2, 16, 6, 7)
    hidden = torch.randn(2, 5, 16)
    masks, low = qgmf(projected_c3, level0, hidden, None, (24, 20))
    assert masks.shape == (2, 1, 24, 20) and low.shape == (2, 1, 6, 7)
    encoder_pixels = torch.relu(torch.einsum("bchw,oc->bohw", level0, qgmf.encoder_proj[0].weight)
                                + qgmf.encoder_proj[0].bias[:, None, None])  # fmt: skip
    pixels = encoder_pixels + qgmf.backbone_proj(projected_c3)
    query = qgmf.query_mlp(qgmf.query_norm(hidden[:, 0]))
    torch.testing.assert_close(low[:, 0], torch.einsum("bc,bchw->bhw", query, pixels))
    # The upsampler has the authors' layout (the converter copies it key by key).
    keys = {k for k in qgmf.upsampler.state_dict() if k.endswith("weight")}
    assert keys == {f"fusion_conv.{i}.weight" for i in (0, 1, 3, 4)} | {
        f"upsample.{i}.weight" for i in (1, 2, 5, 6, 8)
    }


def test_upstream_style_model_segments_and_pads_text() -> None:
    config = small_test_config(
        hemaformer={**HemaFormerConfig.upstream().__dict__, "cmf_num_heads": 2, "tgvr_num_heads": 2,
                    "cmf_ffn_dim": 64, "qgmf_mask_size": 40, "qgmf_upsampler_channels": (8, 8)},
        text={"pad_to_max_length": True},
    )  # fmt: skip
    model = UniHema.from_config(config).eval()
    assert isinstance(model.qgmf, UpstreamQueryGuidedMaskFormer)
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        out = model(images, "segmentation", PROMPTS)
    assert out.masks.shape == (2, 1, 40, 40) and torch.isfinite(out.masks).all()
    text: TextModel = model.text
    ids, mask = text.tokenize(["a", "rbc"])
    assert ids.shape == (2, config.text.max_length) and mask.sum(1).tolist() == [2, 2]


def test_cli_converts_a_full_size_checkpoint(tmp_path: Path, capsys) -> None:
    """End to end with real tensors of the authors' sizes: read, convert, load strictly, save."""
    from safetensors import safe_open

    state = synthetic_state(device="cpu")
    checkpoint = tmp_path / "checkpoint0023.pth"
    torch.save({"model": state, "args": argparse.Namespace(num_classes=30), "epoch": 23}, checkpoint)
    expected = {theirs: state[theirs].clone() for theirs in KNOWN_PAIRS}
    class_weight = state["class_embed.0.weight"].clone()
    cell_bias = state["classifier_image.classifier2.6.bias"].clone()
    del state

    parser = argparse.ArgumentParser(prog="unihema")
    model_cli.register(parser.add_subparsers(dest="command", required=True))
    out_dir = tmp_path / "converted"
    args = parser.parse_args(["model", "convert-upstream", str(checkpoint), "--out", str(out_dir), "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["converted"], report["dropped"], report["initialised"]) == (927, 135, 11)
    assert report["warnings"] and "tokenizer" in report["warnings"][0]

    config = UniHemaConfig.load(out_dir / "config.json")
    assert config == upstream_config()
    with safe_open(str(out_dir / "model.safetensors"), framework="pt") as handle:
        aliases = json.loads(handle.metadata()["aliases"])

        def stored(name: str) -> torch.Tensor:
            return handle.get_tensor(aliases.get(name, name))

        for theirs, ours in KNOWN_PAIRS.items():
            assert torch.equal(stored(ours), expected[theirs]), theirs
        n = len(UPSTREAM_DETECTION_CLASSES)
        assert torch.equal(stored("image_decoder.class_embed.weight")[:n], class_weight[1:])
        # Our extra detection classes start from the focal-loss prior, as in a fresh model.
        prior = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        torch.testing.assert_close(stored("image_decoder.class_embed.bias")[n:], torch.full((4,), prior))
        assert torch.equal(stored("cell_class_head.mlp.6.bias")[: len(UPSTREAM_CELL_CLASSES)], cell_bias)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hemaformer": {"qgmf_style": "authors"}}, "hemaformer.qgmf_style"),
        ({"text": {"pad_to_max_length": "yes"}}, "text.pad_to_max_length"),
    ],
)
def test_new_options_are_validated(overrides: dict, field: str) -> None:
    from unihema.model.configuration import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        UniHemaConfig.from_preset("tiny", **overrides)


def test_cli_text_summary(tmp_path: Path, monkeypatch, capsys) -> None:
    from unihema.model import convert_upstream
    from unihema.model.convert_upstream import ConversionResult

    model = UniHema.from_config(small_test_config())
    result = ConversionResult(
        state_dict={},
        dropped={
            "class_embed.1.bias": "copy of class_embed.0.bias: shared head",
            "class_embed.2.bias": "copy of class_embed.0.bias: shared head",
            "label_enc.weight": "never trained",
        },
        initialised={"cell_attribute_head.mlp.0.bias": "no upstream head"},
        sources={"input_proj.levels.0.0.weight": "input_proj.0.0.weight"},
    )
    calls = []

    def fake_convert(path, config, tokenizer=None):
        calls.append((path, config, tokenizer))
        return model, result

    monkeypatch.setattr(convert_upstream, "convert_upstream_checkpoint", fake_convert)
    parser = argparse.ArgumentParser(prog="unihema")
    model_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["model", "convert-upstream", "ckpt.pth", "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "converted 1 tensors, dropped 3 upstream tensors, initialised 1" in text
    assert "2 x shared head" in text and "1 x never trained" in text
    assert "cell_attribute_head.mlp.0.bias: no upstream head" in text and "warning:" in text
    assert calls == [("ckpt.pth", None, None)]
    assert (tmp_path / "out" / "model.safetensors").is_file()
