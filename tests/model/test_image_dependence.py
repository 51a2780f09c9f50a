"""Why image features barely reach the SCFE cell feature and the CMF text memory when the model learns from
scratch, and the options that fix it (docs/training.md)."""

from __future__ import annotations

import pytest
import torch

from support.testers import small_test_config
from unihema.data.schema import Task
from unihema.model.backbone import InputProjection, groupnorm_groups
from unihema.model.hemaformer import SingleCellFeatureExtractor
from unihema.model.unihema import UniHema


def test_input_projection_groupnorm_erases_each_images_channel_means() -> None:
    # The mechanism: after GroupNorm, the spatial mean of every channel group is the same for every image
    # (the mean of that group's bias), so mean-pooled tokens cannot tell two images apart linearly.
    torch.manual_seed(0)
    projection = InputProjection([16], d_model=32, num_levels=1)
    with torch.no_grad():
        projection.levels[0][1].bias.normal_()
    dark, bright = torch.randn(1, 16, 8, 8) - 3.0, 5.0 * torch.randn(1, 16, 8, 8) + 3.0
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    groups = groupnorm_groups(32)
    means = []
    for features in (dark, bright):
        tokens = projection([features], mask)[0][0][0]  # (32, 8, 8)
        means.append(tokens.reshape(groups, -1).mean(-1))
    assert torch.allclose(means[0], means[1], atol=1e-4)


def _cell_feature_spread(seed: int, **hemaformer: str) -> float:
    """Between-crop std of the cell feature E_Z relative to its overall std, untrained tiny preset."""
    from unihema.data.loader import build_loader
    from unihema.data.synthetic import SyntheticConfig, SyntheticCorpus
    from unihema.data.transforms import TransformConfig

    corpus = SyntheticCorpus(
        SyntheticConfig(n_images=10, image_size=128, rbc_radius=7.0, crop_size=16, crop_scale=1.6)
    )
    crops = corpus.samples(Task.CLASSIFICATION, "train")[:16]
    batch = next(
        iter(
            build_loader(
                crops, Task.CLASSIFICATION, 16, train=False, transform_config=TransformConfig(cls_size=64)
            )
        )
    )
    torch.manual_seed(seed)
    model = UniHema.from_preset("tiny", hemaformer=hemaformer).eval()
    with torch.no_grad():
        features = model(batch["images"], Task.CLASSIFICATION).features
    return float(features.std(0).mean() / features.std())


@pytest.mark.parametrize("seed", [0, 1])
def test_backbone_c5_summary_makes_cell_features_differ_between_crops(seed: int) -> None:
    # Measured: about 0.085 for the paper's SCFE against 0.16-0.18 with the raw C5 summary.
    paper = _cell_feature_spread(seed)
    with_c5 = _cell_feature_spread(seed, scfe_inputs="encoder_mean+backbone_c5")
    assert paper < 0.12 and with_c5 > 1.5 * paper, (paper, with_c5)


def test_attention_pooling_reads_tokens_and_ignores_padding() -> None:
    torch.manual_seed(0)
    scfe = SingleCellFeatureExtractor(16, pooling="attention", num_heads=2)
    memory = torch.randn(2, 10, 16)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[:, 6:] = True
    changed = memory.clone()
    changed[:, 6:] = 100.0  # only padded tokens change
    assert torch.allclose(scfe(memory, padding), scfe(changed, padding), atol=1e-5)
    # Unlike the mean, attention weights depend on the query: a larger query makes them non-uniform.
    with torch.no_grad():
        scfe.query.mul_(0).add_(torch.randn(16) * 5)
    pooled_attention = scfe.attention(scfe.query.expand(2, 1, -1), memory, memory, need_weights=True)[1]
    assert not torch.allclose(pooled_attention, torch.full_like(pooled_attention, 0.1), atol=1e-3)


def test_scfe_options_are_validated() -> None:
    with pytest.raises(ValueError, match="pooling"):
        SingleCellFeatureExtractor(16, pooling="max")
    with pytest.raises(ValueError, match="backbone_channels"):
        SingleCellFeatureExtractor(16, inputs="encoder_mean+backbone_c5")
    with pytest.raises(ValueError, match="scfe_pooling"):
        small_test_config(hemaformer={"scfe_pooling": "sum"})


def test_cmf_cell_feature_token_carries_the_scfe_feature_into_the_text_memory() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    prompts = ["Q: Which cell type is shown?"] * 2
    for enabled in (False, True, "token", "add"):
        model = UniHema.from_config(small_test_config(hemaformer={"cmf_cell_feature": enabled})).eval()
        with torch.no_grad():
            before, _ = model._fuse_text(images, mask, prompts)
            model.scfe.proj.bias.add_(3.0)  # moves E_Z only
            after, _ = model._fuse_text(images, mask, prompts)
        assert torch.allclose(before, after) is (not enabled)


def test_cmf_cell_feature_add_moves_every_memory_position_and_trains_with_cmf() -> None:
    """``"add"``: E_Z reaches every position of E_W^T (through ``cmf.cell_proj``, a CMF parameter, so a
    stage training CMF learns it); one image token among many ("token") moves positions unevenly."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    prompts = ["Q: Which cell type is shown?"] * 2
    model = UniHema.from_config(small_test_config(hemaformer={"cmf_cell_feature": "add"})).eval()
    assert any(name.startswith("cell_proj.") for name, _ in model.module_groups()["CMF"].named_parameters())
    with torch.no_grad():
        before, _ = model._fuse_text(images, mask, prompts)
        model.scfe.proj.bias.add_(3.0)
        after, _ = model._fuse_text(images, mask, prompts)
    shift = after - before
    # The same shift at every text position of a sample: the projected change of E_Z.
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5) and shift.abs().max() > 1e-3
    fused, _ = model._fuse_text(images, mask, prompts)
    fused.sum().backward()
    assert model.cmf.cell_proj.weight.grad is not None and model.cmf.cell_proj.weight.grad.abs().sum() > 0
