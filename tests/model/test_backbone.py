"""Backbone B, input projection and sine position encoding."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models import resnet18
from torchvision.ops import FrozenBatchNorm2d

from unihema.model.backbone import (
    CHANNELS_LAST_MIN_PIXELS,
    InputProjection,
    ResNetBackbone,
    SinePositionEncoding,
    groupnorm_groups,
)


@pytest.fixture(scope="module")
def r18() -> ResNetBackbone:
    torch.manual_seed(0)
    return ResNetBackbone(depth=18)


def test_large_inputs_run_channels_last_with_the_contiguous_result(r18):
    """Above ``CHANNELS_LAST_MIN_PIXELS`` the backbone convolves channels-last activations (faster on a
    CPU there); the features equal those of contiguous input, small inputs stay contiguous, and the
    weights (hence state dicts) keep their layout."""
    side = math.isqrt(CHANNELS_LAST_MIN_PIXELS) + 16
    large, small = torch.randn(1, 3, side, side), torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        fast, plain = r18.eval()(large), r18.body(large)
        small_features = r18(small)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in fast)
    assert all(f.is_contiguous() for f in plain + small_features)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert all(p.is_contiguous() for p in r18.state_dict().values())


@pytest.mark.parametrize("depth,channels", [(18, [128, 256, 512]), (50, [512, 1024, 2048])])
def test_output_shapes(depth, channels):
    backbone = ResNetBackbone(depth=depth).eval()
    assert backbone.out_channels == channels
    assert backbone.strides == [8, 16, 32]
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (2, channels[0], 8, 12),
        (2, channels[1], 4, 6),
        (2, channels[2], 2, 3),
    ]


def test_rejects_bad_arguments(r18):
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNetBackbone(depth=101)
    with pytest.raises(ValueError, match="trainable_layers"):
        ResNetBackbone(depth=18, trainable_layers=6)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        r18(torch.randn(1, 1, 32, 32))


def test_frozen_batchnorm_and_default_freezing(r18):
    norms = [m for m in r18.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    for name, param in r18.body.named_parameters():
        stage = name.split(".")[0]
        expected = stage in {"layer2", "layer3", "layer4"}
        assert param.requires_grad == expected, name
    # Frozen norms have no parameters at all.
    assert sum(p.numel() for m in norms for p in m.parameters()) == 0


@pytest.mark.parametrize(
    "layers,trainable", [(0, set()), (1, {"layer4"}), (5, {"conv1", "layer1", "layer2", "layer3", "layer4"})]
)
def test_trainable_layers_count_from_top(layers, trainable):
    backbone = ResNetBackbone(depth=18, trainable_layers=layers)
    stages = {n.split(".")[0] for n, p in backbone.body.named_parameters() if p.requires_grad}
    assert stages == trainable


def test_plain_batchnorm_keeps_frozen_stages_in_eval():
    backbone = ResNetBackbone(depth=18, norm="bn").train()
    assert not backbone.body.bn1.training
    assert not backbone.body.layer1[0].bn1.training
    assert backbone.body.layer4[0].bn1.training
    assert not backbone.body.bn1.weight.requires_grad
    assert backbone.body.layer4[0].bn1.weight.requires_grad


def test_gradient_reaches_trainable_layers_only(r18):
    r18.train()
    r18.zero_grad()
    sum(f.mean() for f in r18(torch.randn(1, 3, 64, 64))).backward()
    assert r18.body.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert r18.body.layer4[-1].conv2.weight.grad.abs().sum() > 0
    assert r18.body.layer1[0].conv1.weight.grad is None
    assert r18.body.conv1.weight.grad is None


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_round_trip(tmp_path, suffix):
    torch.manual_seed(3)
    source = resnet18()
    state = source.state_dict()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    backbone = ResNetBackbone(depth=18, weights=path)
    loaded = backbone.body.state_dict()
    for key in (
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer4.1.bn2.running_var",
        "layer3.0.downsample.1.bias",
    ):
        torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0)
    # Same features as the torchvision model it came from (eval-mode BN == frozen BN).
    source.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source.layer2(source.layer1(source.maxpool(source.relu(source.bn1(source.conv1(x))))))
        torch.testing.assert_close(backbone.eval()(x)[0], expected, rtol=1e-4, atol=1e-5)


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ResNetBackbone(depth=18, weights=tmp_path / "missing.pth")
    wrong = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), wrong)
    with pytest.raises(ValueError, match=r"r18\.pth do not fit a ResNet-50"):
        ResNetBackbone(depth=50, weights=wrong)
    # Arbitrary pickled objects are refused (weights_only loading).
    pickled = tmp_path / "object.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": nn.ReLU()}, pickled)
    with pytest.raises(ValueError, match="object.pth"):
        ResNetBackbone(depth=18, weights=pickled)


def test_imagenet_weights_only_when_asked(monkeypatch):
    from unihema.model import backbone as backbone_module

    requested = []

    def fake_builder(weights=None, norm_layer=None):
        requested.append(weights)
        return resnet18(weights=None, norm_layer=norm_layer)

    for depth, (_, enum, channels) in list(backbone_module._RESNETS.items()):
        monkeypatch.setitem(backbone_module._RESNETS, depth, (fake_builder, enum, channels))
    ResNetBackbone(depth=18)
    ResNetBackbone(depth=50, weights="imagenet")
    assert requested == [None, backbone_module.models.ResNet50_Weights.IMAGENET1K_V1]


def test_nested_state_dict_is_accepted(tmp_path):
    state = resnet18().state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state}, path)
    backbone = ResNetBackbone(depth=18, weights=path)
    torch.testing.assert_close(backbone.body.conv1.weight, state["conv1.weight"])


def test_groupnorm_groups():
    assert groupnorm_groups(256) == 32
    assert groupnorm_groups(48) == 24
    assert groupnorm_groups(20) == 10
    assert groupnorm_groups(34) == 17


def test_input_projection_levels_and_masks():
    proj = InputProjection([16, 24, 40], d_model=48, num_levels=5)
    feats = [torch.randn(2, 16, 16, 12), torch.randn(2, 24, 8, 6), torch.randn(2, 40, 4, 3)]
    image_mask = torch.zeros(2, 128, 96, dtype=torch.bool)
    image_mask[1, 64:] = True
    image_mask[1, :, 48:] = True
    out, masks = proj(feats, image_mask)
    assert [tuple(o.shape) for o in out] == [
        (2, 48, 16, 12),
        (2, 48, 8, 6),
        (2, 48, 4, 3),
        (2, 48, 2, 2),
        (2, 48, 1, 1),
    ]
    assert [tuple(m.shape) for m in masks] == [(2, 16, 12), (2, 8, 6), (2, 4, 3), (2, 2, 2), (2, 1, 1)]
    assert not masks[0][0].any()
    # Image 1 is valid on its top-left quarter at every stride.
    assert masks[0][1, :8, :6].logical_not().all() and masks[0][1, 8:].all() and masks[0][1, :, 6:].all()
    assert proj.levels[0][1].num_groups == 24
    assert proj.levels[3][0].in_channels == 40 and proj.levels[4][0].in_channels == 48
    assert proj.levels[3][0].stride == (2, 2)


def test_input_projection_validation():
    with pytest.raises(ValueError, match="num_levels"):
        InputProjection([8, 16], d_model=32, num_levels=1)
    proj = InputProjection([8], d_model=32, num_levels=1)
    with pytest.raises(ValueError, match="expects 1 feature levels"):
        proj([torch.randn(1, 8, 4, 4)] * 2, torch.zeros(1, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        proj([torch.randn(1, 8, 4, 4)], torch.zeros(1, 32, 32))


def test_paper_input_projection_matches_authors_shapes():
    proj = InputProjection([512, 1024, 2048], d_model=256, num_levels=4)
    shapes = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    assert shapes["levels.0.0.weight"] == (256, 512, 1, 1)
    assert shapes["levels.2.0.weight"] == (256, 2048, 1, 1)
    assert shapes["levels.3.0.weight"] == (256, 2048, 3, 3)
    assert shapes["levels.3.1.weight"] == (256,)
    assert sum(p.numel() for p in proj.parameters()) == 5_639_168


def test_sine_position_encoding_values_and_padding_invariance():
    enc = SinePositionEncoding(num_pos_feats=8, temperature=20)
    unpadded = enc(torch.zeros(1, 3, 5, dtype=torch.bool))
    assert unpadded.shape == (1, 16, 3, 5)
    # Channel 0 is sin of the normalised y coordinate of the cell centre; channel 8 the same for x.
    y = (2 - 0.5) / 3 * 2 * math.pi
    x = (5 - 0.5) / 5 * 2 * math.pi
    assert unpadded[0, 0, 1, 3].item() == pytest.approx(math.sin(y), abs=1e-5)
    assert unpadded[0, 1, 1, 3].item() == pytest.approx(math.cos(y), abs=1e-5)
    assert unpadded[0, 8, 1, 4].item() == pytest.approx(math.sin(x), abs=1e-5)
    assert unpadded[0, 3, 1, 3].item() == pytest.approx(math.cos(y / 20 ** (2 / 8)), abs=1e-5)
    padded_mask = torch.ones(1, 6, 7, dtype=torch.bool)
    padded_mask[:, :3, :5] = False
    padded = enc(padded_mask)
    torch.testing.assert_close(padded[..., :3, :5], unpadded)


def test_input_projection_trains_on_one_image_whose_coarsest_level_is_one_pixel():
    projection = InputProjection([64, 128, 256], d_model=32, num_levels=4).train()
    features = [torch.randn(1, 64, 8, 8), torch.randn(1, 128, 4, 4), torch.randn(1, 256, 2, 2)]
    maps, masks = projection(features, torch.zeros(1, 64, 64, dtype=torch.bool))
    assert maps[-1].shape == (1, 32, 1, 1) and torch.isfinite(maps[-1]).all()
