from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from unihema.data.vocab import CELL_CLASSES, DETECTION_CLASSES
from unihema.model.configuration import (
    ALL_BACKBONE_LAYERS,
    PRETRAINED_TRAINABLE_LAYERS,
    ConfigError,
    HemaFormerConfig,
    TextConfig,
    UniHemaConfig,
    VisionConfig,
)
from unihema.model.presets import PRESET_REGISTRY, PRESETS, build_preset
from unihema.train.stages import TrainConfig, TrainConfigError
from unihema.validation import ValidationError, require


def test_validation_helper_names_the_field_and_the_value() -> None:
    require(True, "vision.d_model", "must be a positive integer", 0)  # a holding condition raises nothing
    with pytest.raises(ValidationError) as info:
        require(False, "vision.d_model", "must be a positive integer", 0)
    assert str(info.value) == "vision.d_model must be a positive integer, got 0"
    with pytest.raises(ConfigError) as info:
        require(False, "text.feed_forward_proj", "must be one of ('relu',)", "swish", error=ConfigError)
    assert str(info.value) == "text.feed_forward_proj must be one of ('relu',), got 'swish'"
    # Without a value there is no ", got ...".
    with pytest.raises(ValidationError) as info:
        require(False, "stages", "must list at least one stage")
    assert str(info.value) == "stages must list at least one stage"
    assert str(TrainConfigError.for_field("seed", "must be >= 0", None)) == "seed must be >= 0, got None"
    assert isinstance(TrainConfigError.for_field("seed", "x"), TrainConfigError)


def test_error_families_share_the_base_class() -> None:
    for family in (ConfigError, TrainConfigError):
        assert issubclass(family, ValidationError) and issubclass(family, ValueError)
    assert not issubclass(ConfigError, TrainConfigError) and not issubclass(TrainConfigError, ConfigError)
    # Both still accept a ready-made message (used to prefix the file a problem came from).
    assert (
        str(ConfigError("model.json: vision.d_model must be ...")) == "model.json: vision.d_model must be ..."
    )


@pytest.mark.parametrize("name", sorted(PRESET_REGISTRY))
def test_registry_gives_each_preset(name: str) -> None:
    config = UniHemaConfig.from_preset(name)
    assert config == build_preset(name) == PRESET_REGISTRY[name]()
    assert config.preset == name
    assert UniHemaConfig.from_dict(config.to_dict()) == config


def test_built_in_presets_are_registered() -> None:
    assert PRESETS == tuple(PRESET_REGISTRY) == ("tiny", "fast", "paper")
    # The presets differ in more than their names.
    tiny, fast, paper = (UniHemaConfig.from_preset(name) for name in PRESETS)
    assert dataclasses.replace(tiny, preset=None) != dataclasses.replace(paper, preset=None)
    # ``fast`` is ``tiny`` with one efficiency option; the paper's encoder updates every level.
    assert dataclasses.replace(fast, preset="tiny", vision=tiny.vision) == tiny
    assert fast.vision.encoder_skip_levels == 1 and paper.vision.encoder_skip_levels == 0


def test_from_preset_looks_names_up_in_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    def build_wide() -> UniHemaConfig:
        return UniHemaConfig.from_preset("tiny", vision={"d_model": 192, "num_heads": 6})

    monkeypatch.setitem(PRESET_REGISTRY, "wide", build_wide)
    config = UniHemaConfig.from_preset("wide", vision={"num_queries": 50})
    assert (config.preset, config.vision.d_model, config.vision.num_queries) == ("wide", 192, 50)
    # A registered preset is accepted wherever a preset name is (training configurations).
    stage = {"name": "s1", "tasks": {"classification": ["synthetic"]}, "train": ["heads"], "max_steps": 1}
    assert TrainConfig.from_dict({"stages": [stage], "model": {"preset": "wide"}}).model.preset == "wide"


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        UniHemaConfig.from_preset("huge")
    message = str(info.value)
    assert message.startswith("preset ") and "'huge'" in message
    assert all(repr(name) in message for name in PRESET_REGISTRY)


def test_overrides_apply_to_their_fields_only() -> None:
    base = UniHemaConfig.from_preset("tiny")
    config = UniHemaConfig.from_preset("tiny", vision={"num_queries": 100}, hemaformer={"tgvr_mode": "gate"})
    assert config.vision == dataclasses.replace(base.vision, num_queries=100)
    assert config.hemaformer == dataclasses.replace(base.hemaformer, tgvr_mode="gate")
    assert (config.text, config.heads, config.denoising) == (base.text, base.heads, base.denoising)
    assert config.preset == "tiny"
    # A whole section dataclass replaces the preset's section.
    text = TextConfig(d_model=64, num_heads=2, vocab_size=1024, tokenizer_vocab_size=512)
    assert UniHemaConfig.from_preset("tiny", text=text).text == text


def test_overrides_of_unknown_sections_or_of_the_wrong_type_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^optimizer is not a configuration section"):
        UniHemaConfig.from_preset("tiny", optimizer={})
    with pytest.raises(ConfigError, match="override for vision must be a dict or a VisionConfig"):
        UniHemaConfig.from_preset("tiny", vision=3)
    with pytest.raises(ConfigError, match=r"vision must be a VisionConfig, got TextConfig"):
        UniHemaConfig.from_preset("tiny", vision=TextConfig())
    with pytest.raises(ConfigError, match=r"^vision\.hidden_size is not a known field of VisionConfig"):
        UniHemaConfig.from_preset("tiny", vision={"hidden_size": 3})


def test_upstream_hemaformer_differs_from_the_paper_and_takes_overrides() -> None:
    paper, upstream = HemaFormerConfig(), HemaFormerConfig.upstream()
    assert upstream != paper and upstream.qgmf_style == "upstream"
    assert HemaFormerConfig.upstream(cmf_num_layers=1) == dataclasses.replace(upstream, cmf_num_layers=1)
    with pytest.raises(ConfigError, match=r"^hemaformer\.tgvr_mode"):
        UniHemaConfig.from_preset("tiny", hemaformer=HemaFormerConfig.upstream(tgvr_mode="sum"))


def test_class_counts_follow_the_vocabulary() -> None:
    for name in PRESETS:
        heads = UniHemaConfig.from_preset(name).heads
        assert (heads.num_detection_classes, heads.num_cell_classes) == (
            len(DETECTION_CLASSES),
            len(CELL_CLASSES),
        )


def test_dict_round_trip_is_plain_json() -> None:
    config = UniHemaConfig.from_preset(
        "tiny", hemaformer={"qgmf_upsampler_channels": (16, 8), "tgvr_mode": "gate"}
    )
    data = json.loads(json.dumps(config.to_dict()))  # plain JSON types only
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
    ("overrides", "field", "value"),
    [
        ({"vision": {"backbone_depth": 101}}, "vision.backbone_depth", 101),
        (
            {"vision": {"trainable_backbone_layers": ALL_BACKBONE_LAYERS + 1}},
            "vision.trainable_backbone_layers",
            ALL_BACKBONE_LAYERS + 1,
        ),
        ({"vision": {"backbone_norm": "layer"}}, "vision.backbone_norm", "layer"),
        ({"vision": {"d_model": 130}}, "vision.d_model", 130),
        ({"vision": {"num_levels": 2}}, "vision.num_levels", 2),
        ({"vision": {"num_queries": 0}}, "vision.num_queries", 0),
        ({"vision": {"encoder_layers": True}}, "vision.encoder_layers", True),
        ({"vision": {"encoder_skip_levels": 4}}, "vision.encoder_skip_levels", 4),
        ({"vision": {"encoder_skip_levels": -1}}, "vision.encoder_skip_levels", -1),
        ({"vision": {"dropout": 1.5}}, "vision.dropout", 1.5),
        ({"vision": {"position_temperature": 0}}, "vision.position_temperature", 0),
        ({"text": {"tokenizer_vocab_size": 5000, "vocab_size": 1000}}, "text.tokenizer_vocab_size", 5000),
        ({"text": {"num_sentinels": 0}}, "text.num_sentinels", 0),
        ({"text": {"feed_forward_proj": "swish"}}, "text.feed_forward_proj", "swish"),
        ({"text": {"dropout_rate": 1.0}}, "text.dropout_rate", 1.0),
        ({"text": {"pad_to_max_length": 1}}, "text.pad_to_max_length", 1),
        ({"text": {"layer_norm_epsilon": 0.0}}, "text.layer_norm_epsilon", 0.0),
        ({"text": {"pretrained_path": ""}}, "text.pretrained_path", ""),
        ({"hemaformer": {"tgvr_mode": "sum"}}, "hemaformer.tgvr_mode", "sum"),
        ({"hemaformer": {"cmf_order": "both"}}, "hemaformer.cmf_order", "both"),
        ({"hemaformer": {"scfe_inputs": "backbone"}}, "hemaformer.scfe_inputs", "backbone"),
        ({"hemaformer": {"scfe_pooling": "max"}}, "hemaformer.scfe_pooling", "max"),
        ({"hemaformer": {"qgmf_query": "last"}}, "hemaformer.qgmf_query", "last"),
        ({"hemaformer": {"qgmf_style": "mine"}}, "hemaformer.qgmf_style", "mine"),
        ({"hemaformer": {"cmf_cell_feature": 1}}, "hemaformer.cmf_cell_feature", 1),
        ({"hemaformer": {"cmf_cell_feature": "sum"}}, "hemaformer.cmf_cell_feature", "sum"),
        ({"hemaformer": {"qgmf_mask_size": "full"}}, "hemaformer.qgmf_mask_size", "full"),
        ({"hemaformer": {"qgmf_upsampler_channels": ()}}, "hemaformer.qgmf_upsampler_channels", ()),
        ({"hemaformer": {"cmf_num_heads": 3}}, "hemaformer.cmf_num_heads", 3),
        ({"hemaformer": {"tgvr_num_heads": 5}}, "hemaformer.tgvr_num_heads", 5),
        ({"heads": {"num_cell_classes": -1}}, "heads.num_cell_classes", -1),
        ({"heads": {"cell_head_hidden_dims": (0,)}}, "heads.cell_head_hidden_dims", (0,)),
        ({"heads": {"box_attribute_hidden_dim": -1}}, "heads.box_attribute_hidden_dim", -1),
        ({"denoising": {"number": -1}}, "denoising.number", -1),
        ({"denoising": {"label_noise_ratio": 2.0}}, "denoising.label_noise_ratio", 2.0),
        ({"denoising": {"box_noise_scale": -0.1}}, "denoising.box_noise_scale", -0.1),
    ],
)
def test_each_invalid_field_gives_an_error_naming_it(overrides: dict, field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        UniHemaConfig.from_preset("tiny", **overrides)
    message = str(info.value)
    assert message.startswith(f"{field} ") and message.endswith(f", got {value!r}")


def test_unknown_keys_are_named() -> None:
    data = UniHemaConfig.from_preset("tiny").to_dict()
    data["vision"]["hidden_size"] = 3
    with pytest.raises(ConfigError, match=r"vision\.hidden_size"):
        UniHemaConfig.from_dict(data)
    with pytest.raises(ConfigError, match="optimizer"):
        UniHemaConfig.from_dict({"optimizer": {}})


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


def test_direct_construction_checks_section_types() -> None:
    with pytest.raises(ConfigError, match="vision must be a VisionConfig"):
        UniHemaConfig(vision={"d_model": 64})  # type: ignore[arg-type]
    assert UniHemaConfig(vision=VisionConfig(d_model=64, num_heads=4)).vision.d_model == 64


def test_backbone_norm_and_trainable_stages_follow_pretraining(tmp_path):
    from torchvision.models import resnet18

    from unihema.model.backbone import ResNetBackbone

    random_init = VisionConfig(backbone_depth=18)
    assert random_init.resolved_backbone_norm() == "gn"
    assert random_init.resolved_trainable_backbone_layers() == ALL_BACKBONE_LAYERS
    weights = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), weights)
    pretrained = VisionConfig(backbone_depth=18, backbone_weights=str(weights))
    assert pretrained.resolved_backbone_norm() == "frozen_bn"
    assert pretrained.resolved_trainable_backbone_layers() == PRETRAINED_TRAINABLE_LAYERS
    explicit = VisionConfig(backbone_depth=18, backbone_norm="bn", trainable_backbone_layers=1)
    assert explicit.resolved_backbone_norm() == "bn" and explicit.resolved_trainable_backbone_layers() == 1
    backbone = ResNetBackbone(
        18, None, random_init.resolved_trainable_backbone_layers(), random_init.resolved_backbone_norm()
    )
    assert isinstance(backbone.body.bn1, torch.nn.GroupNorm)
    assert all(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match="backbone_norm"):
        VisionConfig(backbone_norm="layer").validate()
