from __future__ import annotations

import json

import pytest
import torch

from unihema.data.vocab import CELL_CLASSES, DETECTION_CLASSES
from unihema.model.configuration import ConfigError, HemaFormerConfig, TextConfig, UniHemaConfig, VisionConfig


def test_tiny_preset_values() -> None:
    config = UniHemaConfig.from_preset("tiny")
    assert config.preset == "tiny"
    assert (config.vision.backbone_depth, config.vision.d_model) == (18, 128)
    assert (config.vision.encoder_layers, config.vision.decoder_layers, config.vision.num_queries) == (
        2,
        2,
        300,
    )
    assert config.text.d_model == 128 and config.text.num_layers == 2 and config.text.num_decoder_layers == 2
    assert config.text.vocab_size <= 2048


def test_paper_preset_mirrors_upstream_sizes() -> None:
    config = UniHemaConfig.from_preset("paper")
    v, t = config.vision, config.text
    assert (v.backbone_depth, v.d_model, v.encoder_layers, v.decoder_layers) == (50, 256, 6, 6)
    assert (v.num_queries, v.num_levels, v.num_heads, v.num_points, v.ffn_dim) == (900, 4, 8, 4, 2048)
    assert (t.d_model, t.num_layers, t.num_decoder_layers, t.num_heads, t.d_ff) == (768, 12, 12, 12, 2048)
    assert (t.feed_forward_proj, t.vocab_size, t.tie_word_embeddings) == ("gated-gelu", 32128, False)
    # The paper's choices are the defaults where paper and code differ.
    h = config.hemaformer
    assert (h.tgvr_mode, h.cmf_order, h.cmf_residual, h.qgmf_mask_size, h.text_padding_masks) == (
        "concat", "text_first", False, "input", True,
    )  # fmt: skip


def test_class_counts_come_from_the_vocabulary() -> None:
    heads = UniHemaConfig.from_preset("paper").heads
    assert heads.num_detection_classes == len(DETECTION_CLASSES)
    assert heads.num_cell_classes == len(CELL_CLASSES)


def test_upstream_hemaformer_options() -> None:
    upstream = HemaFormerConfig.upstream()
    assert (upstream.tgvr_mode, upstream.cmf_order, upstream.cmf_num_layers, upstream.cmf_ffn) == (
        "gate",
        "image_first",
        2,
        True,
    )
    assert upstream.qgmf_mask_size == 512 and upstream.cmf_residual and not upstream.text_padding_masks


def test_dict_round_trip() -> None:
    config = UniHemaConfig.from_preset(
        "tiny", hemaformer={"qgmf_upsampler_channels": (16, 8), "tgvr_mode": "gate"}
    )
    data = config.to_dict()
    json.dumps(data)  # plain JSON types only
    assert UniHemaConfig.from_dict(data) == config
    assert data["hemaformer"]["qgmf_upsampler_channels"] == [16, 8]


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_save_load_round_trip(tmp_path, suffix: str) -> None:
    config = UniHemaConfig.from_preset(
        "paper", vision={"num_queries": 100}, hemaformer={"qgmf_mask_size": 256}
    )
    path = config.save(tmp_path / f"model{suffix}")
    assert UniHemaConfig.load(path) == config
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_save_rejects_unknown_suffix(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"\.json, \.yaml or \.yml"):
        UniHemaConfig.from_preset("tiny").save(tmp_path / "model.txt")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"vision": {"d_model": 130}}, "vision.d_model"),
        ({"vision": {"backbone_depth": 101}}, "vision.backbone_depth"),
        ({"vision": {"num_queries": 0}}, "vision.num_queries"),
        ({"vision": {"dropout": 1.5}}, "vision.dropout"),
        ({"text": {"tokenizer_vocab_size": 5000, "vocab_size": 1000}}, "text.tokenizer_vocab_size"),
        ({"text": {"feed_forward_proj": "swish"}}, "text.feed_forward_proj"),
        ({"hemaformer": {"tgvr_mode": "sum"}}, "hemaformer.tgvr_mode"),
        ({"hemaformer": {"cmf_order": "both"}}, "hemaformer.cmf_order"),
        ({"hemaformer": {"qgmf_mask_size": "full"}}, "hemaformer.qgmf_mask_size"),
        ({"hemaformer": {"qgmf_upsampler_channels": ()}}, "hemaformer.qgmf_upsampler_channels"),
        ({"hemaformer": {"cmf_num_heads": 3}}, "hemaformer.cmf_num_heads"),
        ({"heads": {"num_cell_classes": -1}}, "heads.num_cell_classes"),
        ({"denoising": {"label_noise_ratio": 2.0}}, "denoising.label_noise_ratio"),
    ],
)
def test_validation_errors_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        UniHemaConfig.from_preset("tiny", **overrides)
    assert str(info.value).startswith(field)


def test_unknown_keys_are_named() -> None:
    data = UniHemaConfig.from_preset("tiny").to_dict()
    data["vision"]["hidden_size"] = 3
    with pytest.raises(ConfigError, match=r"vision\.hidden_size"):
        UniHemaConfig.from_dict(data)
    with pytest.raises(ConfigError, match="optimizer"):
        UniHemaConfig.from_dict({"optimizer": {}})
    with pytest.raises(ConfigError, match="preset"):
        UniHemaConfig.from_preset("huge")


def test_load_error_names_file_and_field(tmp_path) -> None:
    path = tmp_path / "bad.json"
    data = UniHemaConfig.from_preset("tiny").to_dict()
    data["vision"]["num_heads"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        UniHemaConfig.load(path)
    assert str(path) in str(info.value) and "vision.d_model" in str(info.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("vision: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml"):
        UniHemaConfig.load(broken)
    with pytest.raises(FileNotFoundError):
        UniHemaConfig.load(tmp_path / "missing.json")


def test_override_with_dataclass_and_direct_construction() -> None:
    config = UniHemaConfig.from_preset(
        "tiny", text=TextConfig(d_model=64, num_heads=2, vocab_size=1024, tokenizer_vocab_size=512)
    )
    assert config.text.d_model == 64 and config.text.tokenizer_vocab_size == 512
    with pytest.raises(ConfigError, match="vision must be a VisionConfig"):
        UniHemaConfig(vision={"d_model": 64})  # type: ignore[arg-type]
    assert UniHemaConfig(vision=VisionConfig(d_model=64, num_heads=4)).vision.d_model == 64


def test_backbone_norm_and_trainable_stages_follow_pretraining(tmp_path):
    from torchvision.models import resnet18

    from unihema.model.backbone import ResNetBackbone

    random_init = VisionConfig(backbone_depth=18)
    assert random_init.resolved_backbone_norm() == "gn"
    assert random_init.resolved_trainable_backbone_layers() == 5
    weights = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), weights)
    pretrained = VisionConfig(backbone_depth=18, backbone_weights=str(weights))
    assert pretrained.resolved_backbone_norm() == "frozen_bn"
    assert pretrained.resolved_trainable_backbone_layers() == 3
    explicit = VisionConfig(backbone_depth=18, backbone_norm="bn", trainable_backbone_layers=1)
    assert explicit.resolved_backbone_norm() == "bn" and explicit.resolved_trainable_backbone_layers() == 1
    backbone = ResNetBackbone(
        18, None, random_init.resolved_trainable_backbone_layers(), random_init.resolved_backbone_norm()
    )
    assert isinstance(backbone.body.bn1, torch.nn.GroupNorm)
    assert all(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match="backbone_norm"):
        VisionConfig(backbone_norm="layer").validate()
