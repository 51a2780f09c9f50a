from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from unihema.data.vocab import CELL_ATTRIBUTES, FOV_ATTRIBUTES
from unihema.model.heads import AttributeHead, BinaryMaskHead, CellClassHead, attribute_slices
from unihema.model.hemaformer import (
    CrossModalFusion,
    QueryGuidedMaskFormer,
    SingleCellFeatureExtractor,
    TextGuidedVisualRefinement,
    masked_mean,
)

M, N = 16, 24


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _text(batch: int = 2, length: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    states = torch.randn(batch, length, N)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 4:] = 0
    return states, mask


def test_cmf_shapes_and_padding_masks() -> None:
    cmf = CrossModalFusion(M, N, max_text_length=8, num_heads=2).eval()
    text, mask = _text()
    image = torch.randn(2, 30, M)
    image_padding = torch.zeros(2, 30, dtype=torch.bool)
    image_padding[0, 20:] = True
    out = cmf(text, mask, image, image_padding)
    assert out.shape == (2, 6, N)
    # Padded text tokens and padded image tokens have no influence.
    text2, image2 = text.clone(), image.clone()
    text2[1, 4:] += 5.0
    image2[0, 20:] += 5.0
    torch.testing.assert_close(cmf(text2, mask, image2, image_padding), out)
    # Without masks they do.
    assert not torch.allclose(cmf(text2, None, image2, None), cmf(text, None, image, None))
    # The image changes the fused states.
    assert not torch.allclose(cmf(text, mask, image + 1.0, image_padding), out)
    with pytest.raises(ValueError, match="8 queries"):
        cmf(torch.randn(1, 9, N), None, image[:1], None)


def test_cmf_variants() -> None:
    text, mask = _text()
    image = torch.randn(2, 10, M)
    paper = CrossModalFusion(M, N, 8, 2, order="text_first").eval()
    swapped = copy.deepcopy(paper)
    for layer in swapped.layers:
        layer.order = "image_first"
    assert not torch.allclose(paper(text, mask, image, None), swapped(text, mask, image, None))
    residual = copy.deepcopy(paper)
    residual.residual = True
    torch.testing.assert_close(residual(text, mask, image, None), paper(text, mask, image, None) + text)
    upstream = CrossModalFusion(
        M, N, 8, 2, num_layers=2, order="image_first", ffn=True, ffn_dim=32, residual=True
    )
    assert upstream(text, mask, image, None).shape == (2, 6, N)
    assert upstream.layers[0].ffn is not None and paper.layers[0].ffn is None


def test_tgvr_concat_is_eq3() -> None:
    tgvr = TextGuidedVisualRefinement(M, N, num_heads=2, mode="concat").eval()
    queries = torch.randn(2, 5, M)
    text, mask = _text()
    out = tgvr(queries, text, mask)
    projected = tgvr.text_proj(text)
    attended = tgvr.cross_attn(queries, projected, projected, key_padding_mask=mask == 0)[0]
    torch.testing.assert_close(out, tgvr.combined_proj(torch.cat((queries, attended), dim=-1)))
    text2 = text.clone()
    text2[1, 4:] = 100.0
    torch.testing.assert_close(tgvr(queries, text2, mask), out)
    assert tgvr.refiner(text, mask)(queries).shape == queries.shape


def test_tgvr_gate_closed_returns_queries() -> None:
    tgvr = TextGuidedVisualRefinement(M, N, num_heads=2, mode="gate").eval()
    with torch.no_grad():
        tgvr.gate_mlp[2].weight.zero_()
        tgvr.gate_mlp[2].bias.fill_(-50.0)
    queries = torch.randn(2, 5, M)
    text, mask = _text()
    torch.testing.assert_close(tgvr(queries, text, mask), queries)
    with pytest.raises(ValueError, match="mode"):
        TextGuidedVisualRefinement(M, N, 2, mode="add")


def test_scfe_ignores_padding_and_backbone_variant() -> None:
    memory = torch.randn(2, 12, M)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[0, 8:] = True
    torch.testing.assert_close(masked_mean(memory, padding)[0], memory[0, :8].mean(0))
    scfe = SingleCellFeatureExtractor(M)
    out = scfe(memory, padding)
    assert out.shape == (2, M)
    memory2 = memory.clone()
    memory2[0, 8:] = 9.0
    torch.testing.assert_close(scfe(memory2, padding), out)
    expected = scfe.proj(torch.cat((scfe.query.expand(2, -1), masked_mean(memory, padding)), dim=-1))
    torch.testing.assert_close(out, expected)

    both = SingleCellFeatureExtractor(M, inputs="encoder_mean+backbone")
    assert both.proj.in_features == 3 * M
    backbone = torch.randn(2, 4, M)
    assert both(memory, padding, backbone, None).shape == (2, M)
    assert not torch.allclose(
        both(memory, padding, backbone, None), both(memory, padding, backbone + 1, None)
    )
    with pytest.raises(ValueError, match="backbone_tokens"):
        both(memory, padding)


def test_qgmf_output_follows_input_size() -> None:
    qgmf = QueryGuidedMaskFormer(M, c3_channels=12, upsampler_channels=(8, 4, 4))
    c3 = torch.randn(2, 12, 5, 7)
    level0 = torch.randn(2, M, 5, 7)
    hidden = torch.randn(2, 9, M)
    masks, low = qgmf(c3, level0, hidden, None, (40, 56))
    assert masks.shape == (2, 1, 40, 56) and low.shape == (2, 1, 5, 7)
    # Eq. 5: the low-resolution mask is the dot product of the first query's embedding with G_proj.
    pixels = qgmf.pixel_proj(qgmf.lateral(c3) + level0)
    query = qgmf.query_proj(qgmf.query_mlp(hidden[:, 0]))
    torch.testing.assert_close(low[:, 0], (query[:, :, None, None] * pixels).sum(1))
    # The upsampler starts as the interpolation of the query mask.
    torch.testing.assert_close(masks, F.interpolate(low, size=(40, 56), mode="bilinear", align_corners=False))
    masks_fixed, _ = qgmf(c3, level0, hidden, None, (32, 32))
    assert masks_fixed.shape == (2, 1, 32, 32)


def test_qgmf_query_selection() -> None:
    hidden = torch.randn(3, 6, M)
    logits = torch.randn(3, 6, 4)
    logits[0, 4, 2] = 50.0
    logits[1, 1, 0] = 50.0
    logits[2, 0, 3] = 50.0
    top = QueryGuidedMaskFormer(M, 8, query="top_scoring")
    torch.testing.assert_close(
        top.select(hidden, logits), torch.stack([hidden[0, 4], hidden[1, 1], hidden[2, 0]])
    )
    first = QueryGuidedMaskFormer(M, 8, query="first")
    torch.testing.assert_close(first.select(hidden, logits), hidden[:, 0])
    with pytest.raises(ValueError, match="logits"):
        top.select(hidden, None)


def test_attribute_head_slices() -> None:
    fov = AttributeHead(M, FOV_ATTRIBUTES)
    assert fov.num_logits == 12
    assert fov.slices["nuclear_chromatin"] == slice(0, 2)
    cell = AttributeHead(M, CELL_ATTRIBUTES, hidden_dim=8)
    assert cell.num_logits == sum(len(values) for _, values in CELL_ATTRIBUTES)
    logits = cell(torch.randn(4, 3, M))
    parts = cell.split(logits)
    assert list(parts) == [name for name, _ in CELL_ATTRIBUTES]
    assert parts["nucleus_shape"].shape == (4, 3, 6)
    torch.testing.assert_close(torch.cat(list(parts.values()), dim=-1), logits)
    with pytest.raises(ValueError, match="at least 2"):
        attribute_slices([("a", ("x",))])
    with pytest.raises(ValueError, match="twice"):
        attribute_slices([("a", ("x", "y")), ("a", ("x", "y"))])


def test_cell_class_head_and_mask_head() -> None:
    head = CellClassHead(M, num_classes=7, hidden_dims=(8, 4))
    assert head(torch.randn(3, M)).shape == (3, 7)
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [8, 4, 7]
    mask_head = BinaryMaskHead(M, channels=(4,))
    assert mask_head(torch.randn(1, M, 3, 3), torch.randn(1, 1, 3, 3), (11, 13)).shape == (1, 1, 11, 13)
