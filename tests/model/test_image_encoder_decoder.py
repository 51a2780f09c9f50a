"""Image encoder E_I, image decoder D_I (two-stage selection, box refinement) and denoising."""

from __future__ import annotations

import pytest
import torch

from unihema.model.backbone import InputProjection, ResNetBackbone, SinePositionEncoding
from unihema.model.denoising import build_denoising_queries, inverse_sigmoid
from unihema.model.image_decoder import DecoderOutput, ImageDecoder
from unihema.model.image_encoder import EncoderOutput, ImageEncoder

D = 32
LEVELS = 4
HEADS = 4
POINTS = 2
QUERIES = 24
CLASSES = 5


class TinyVision(torch.nn.Module):
    """B -> projection -> E_I -> D_I at test size."""

    def __init__(self, dn_number: int = 12, learned_content_queries: bool = True) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(depth=18)
        self.proj = InputProjection(self.backbone.out_channels, D, LEVELS)
        self.pos = SinePositionEncoding(D // 2, temperature=20)
        self.encoder = ImageEncoder(
            D, num_layers=1, num_heads=HEADS, num_levels=LEVELS, num_points=POINTS, ffn_dim=64
        )
        self.decoder = ImageDecoder(
            D,
            num_layers=2,
            num_heads=HEADS,
            num_levels=LEVELS,
            num_points=POINTS,
            ffn_dim=64,
            num_queries=QUERIES,
            num_classes=CLASSES,
            dn_number=dn_number,
            learned_content_queries=learned_content_queries,
        )

    def encode(self, images, image_mask) -> EncoderOutput:
        feats, masks = self.proj(self.backbone(images), image_mask)
        return self.encoder(feats, masks, [self.pos(m) for m in masks])

    def forward(self, images, image_mask, targets=None, query_refiner=None) -> DecoderOutput:
        return self.decoder(self.encode(images, image_mask), query_refiner=query_refiner, targets=targets)


def _batch():
    """Two images padded to 96x128: the second is valid on its top-left 64x96."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 96, 128, generator=gen)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 64:] = True
    mask[1, :, 96:] = True
    images[mask[:, None].expand_as(images)] = 0.0
    targets = [
        {
            "labels": torch.tensor([0, 3, 4]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.1], [0.5, 0.7, 0.1, 0.2]]),
        },
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.3]])},
    ]
    return images, mask, targets


@pytest.fixture(scope="module")
def model() -> TinyVision:
    torch.manual_seed(0)
    return TinyVision()


def test_encoder_output_shapes_and_valid_ratios(model):
    images, mask, _ = _batch()
    with torch.no_grad():
        out = model.eval().encode(images, mask)
    shapes = [(12, 16), (6, 8), (3, 4), (2, 2)]
    tokens = sum(h * w for h, w in shapes)
    assert out.memory.shape == (2, tokens, D) and out.pos.shape == (2, tokens, D)
    assert out.padding_mask.shape == (2, tokens) and out.padding_mask.dtype == torch.bool
    assert out.spatial_shapes.tolist() == [list(s) for s in shapes]
    assert out.level_start_index.tolist() == [0, 192, 240, 252]
    assert not out.padding_mask[0].any() and out.padding_mask[1].any()
    torch.testing.assert_close(out.valid_ratios[0], torch.ones(LEVELS, 2))
    torch.testing.assert_close(out.valid_ratios[1, 0], torch.tensor([12 / 16, 8 / 12]))
    assert out.level_map(1).shape == (2, D, 6, 8)
    torch.testing.assert_close(out.level_map(0)[:, :, 0, 1], out.memory[:, 1])


def test_encoder_is_exact_under_padding():
    """Valid tokens of a padded image equal those of the same maps unpadded."""
    torch.manual_seed(1)
    encoder = ImageEncoder(
        D, num_layers=2, num_heads=HEADS, num_levels=3, num_points=POINTS, ffn_dim=64
    ).eval()
    for layer in encoder.layers:  # spread the samples so they reach the padding
        torch.nn.init.normal_(layer.self_attn.sampling_offsets.weight, 0, 0.5)
    pos_enc = SinePositionEncoding(D // 2, temperature=20)
    small = [(6, 5), (3, 3), (2, 2)]
    big = [(8, 7), (4, 5), (3, 3)]
    feats = [torch.randn(1, D, h, w) for h, w in small]
    masks_small = [torch.zeros(1, h, w, dtype=torch.bool) for h, w in small]
    feats_big, masks_big = [], []
    for f, (h, w), (hb, wb) in zip(feats, small, big):
        canvas = torch.randn(1, D, hb, wb) * 10  # garbage in the padding must not matter
        canvas[..., :h, :w] = f
        feats_big.append(canvas)
        m = torch.ones(1, hb, wb, dtype=torch.bool)
        m[:, :h, :w] = False
        masks_big.append(m)
    with torch.no_grad():
        ref = encoder(feats, masks_small, [pos_enc(m) for m in masks_small])
        out = encoder(feats_big, masks_big, [pos_enc(m) for m in masks_big])
    for level, (h, w) in enumerate(small):
        torch.testing.assert_close(
            out.level_map(level)[..., :h, :w], ref.level_map(level), atol=1e-5, rtol=1e-5
        )


def _encoder_inputs(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, D, h, w, generator=gen) for h, w in shapes]
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in shapes]
    pos_enc = SinePositionEncoding(D // 2, temperature=20)
    return feats, masks, [pos_enc(m) for m in masks]


def test_encoder_skip_levels_keeps_fine_tokens_but_still_samples_them():
    """With ``skip_levels=1`` the stride-8 tokens leave the encoder as they came in, the coarser tokens
    change, and the coarser tokens still depend on the finest level (it is sampled as values)."""
    torch.manual_seed(0)
    encoder = ImageEncoder(
        D, num_layers=2, num_heads=HEADS, num_levels=3, num_points=POINTS, ffn_dim=64, skip_levels=1
    ).eval()
    shapes = [(8, 8), (4, 4), (2, 2)]
    feats, masks, pos = _encoder_inputs(shapes)
    feats[0].requires_grad_(True)
    out = encoder(feats, masks, pos)
    torch.testing.assert_close(out.level_map(0), feats[0], atol=0, rtol=0)
    assert not torch.allclose(out.level_map(1), feats[1], atol=1e-3)
    (grad,) = torch.autograd.grad(out.level_map(1).square().sum(), feats[0])
    assert grad.abs().sum() > 0


def test_encoder_skip_levels_zero_updates_every_level():
    """The default (the paper's encoder) updates every level; skipping the finest one changes what the
    coarser tokens see, so with the same weights their outputs differ from the full encoder's."""
    torch.manual_seed(0)
    full = ImageEncoder(D, num_layers=2, num_heads=HEADS, num_levels=3, num_points=POINTS, ffn_dim=64).eval()
    skip = ImageEncoder(
        D, num_layers=2, num_heads=HEADS, num_levels=3, num_points=POINTS, ffn_dim=64, skip_levels=1
    ).eval()
    skip.load_state_dict(full.state_dict())
    feats, masks, pos = _encoder_inputs([(8, 8), (4, 4), (2, 2)], seed=1)
    with torch.no_grad():
        out_full, out_skip = full(feats, masks, pos), skip(feats, masks, pos)
    for level in range(3):
        assert not torch.allclose(out_full.level_map(level), feats[level], atol=1e-3)
    assert not torch.allclose(out_skip.level_map(1), out_full.level_map(1), atol=1e-4)
    with pytest.raises(ValueError, match="skip_levels must be in"):
        ImageEncoder(D, num_layers=1, num_heads=HEADS, num_levels=3, num_points=1, ffn_dim=8, skip_levels=3)


def test_encoder_validates_levels():
    encoder = ImageEncoder(D, num_layers=1, num_heads=HEADS, num_levels=2, num_points=1, ffn_dim=8)
    f = torch.randn(1, D, 4, 4)
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="expects 2 levels"):
        encoder([f], [m], [f])
    with pytest.raises(ValueError, match="level 1"):
        encoder([f, f], [m, m[:, :2]], [f, f])


def test_decoder_eval_shapes_without_denoising(model):
    images, mask, targets = _batch()
    with torch.no_grad():
        out = model.eval()(images, mask, targets=targets)
    assert out.hidden_states.shape == (2, 2, QUERIES, D)
    assert out.pred_logits.shape == (2, 2, QUERIES, CLASSES)
    assert out.pred_boxes.shape == (2, 2, QUERIES, 4)
    assert out.enc_logits.shape == (2, QUERIES, CLASSES) and out.enc_boxes.shape == (2, QUERIES, 4)
    assert out.reference_points.shape == (3, 2, QUERIES, 4)
    assert (
        out.dn_logits is None
        and out.dn_boxes is None
        and out.dn_hidden_states is None
        and out.dn_meta is None
    )
    assert ((out.pred_boxes > 0) & (out.pred_boxes < 1)).all()
    # The final hidden states are LayerNorm'ed.
    torch.testing.assert_close(out.hidden_states.mean(-1), torch.zeros(2, 2, QUERIES), atol=1e-4, rtol=0)


def test_fresh_decoder_predicts_its_anchors(model):
    """Box deltas start at zero: the first layer's boxes are the selected proposals."""
    images, mask, _ = _batch()
    with torch.no_grad():
        out = model.eval()(images, mask)
    torch.testing.assert_close(out.pred_boxes[0], out.reference_points[0])
    torch.testing.assert_close(out.reference_points[0], out.enc_boxes)
    # Prior-probability bias of the shared class head.
    torch.testing.assert_close(
        model.decoder.class_embed.bias, torch.full((CLASSES,), -4.59512), atol=1e-4, rtol=0
    )


def test_denoising_runs_in_training_only(model):
    images, mask, targets = _batch()
    model.train()
    out = model(images, mask, targets=targets)
    meta = out.dn_meta
    assert meta.max_targets == 3 and meta.num_groups == 12 // 3
    assert meta.pad_size == 2 * 3 * 4
    assert out.dn_logits.shape == (2, 2, 24, CLASSES)
    assert out.dn_boxes.shape == (2, 2, 24, 4) and out.dn_hidden_states.shape == (2, 2, 24, D)
    assert out.pred_logits.shape == (2, 2, QUERIES, CLASSES)
    queries, target_ids = meta.positive_matches[0]
    assert queries.tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14, 18, 19, 20]
    assert target_ids.tolist() == [0, 1, 2] * 4
    assert meta.positive_matches[1][0].tolist() == [0, 6, 12, 18]
    assert meta.negative_indices[1].tolist() == [3, 9, 15, 21]
    # Denoising losses reach the label embedding: the DN branch is live.
    model.zero_grad()
    (out.dn_boxes.sum() + out.dn_logits.sum()).backward()
    assert model.decoder.label_enc.weight.grad.abs().sum() > 0
    # No targets, no denoising; eval, no denoising.
    assert model(images, mask).dn_meta is None
    with torch.no_grad():
        assert model.eval()(images, mask, targets=targets).dn_meta is None


def test_matching_queries_cannot_see_denoising_queries(model):
    images, mask, targets = _batch()
    model.train()  # dropout is 0, so training and eval compute the same function
    with torch.no_grad():
        plain = model(images, mask)
        with_dn = model(images, mask, targets=targets)
        other = [{"labels": torch.tensor([1, 1, 0, 2, 4]), "boxes": torch.rand(5, 4) * 0.5 + 0.2}] * 2
        with_other_dn = model(images, mask, targets=other)
    assert with_dn.dn_meta.pad_size != with_other_dn.dn_meta.pad_size
    for out in (with_dn, with_other_dn):
        torch.testing.assert_close(out.pred_logits, plain.pred_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.pred_boxes, plain.pred_boxes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.hidden_states, plain.hidden_states, atol=1e-5, rtol=1e-5)


def test_denoising_groups_are_isolated(model):
    images, mask, targets = _batch()
    group = 6  # 2 * max_targets

    def perturb_group1(content):
        content = content.clone()
        content[:, group : 2 * group] += 5.0
        return content

    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        base = model(images, mask, targets=targets)
        torch.manual_seed(0)
        same_noise = model(images, mask, targets=targets)
        torch.manual_seed(0)
        perturbed = model(images, mask, targets=targets, query_refiner=perturb_group1)
    torch.testing.assert_close(same_noise.dn_logits, base.dn_logits)
    keep = torch.cat((torch.arange(group), torch.arange(2 * group, 4 * group)))
    torch.testing.assert_close(
        perturbed.dn_logits[:, :, keep], base.dn_logits[:, :, keep], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(perturbed.pred_logits, base.pred_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(
        perturbed.dn_logits[:, :, group : 2 * group], base.dn_logits[:, :, group : 2 * group]
    )


def test_query_refiner_sees_all_content_queries(model):
    images, mask, targets = _batch()
    seen = []

    def refiner(content):
        seen.append(content.shape)
        return content * 0.0

    model.train()
    with torch.no_grad():
        base = model(images, mask)
        out = model(images, mask, targets=targets, query_refiner=refiner)
    assert seen == [torch.Size((2, 24 + QUERIES, D))]
    assert not torch.allclose(out.pred_logits, base.pred_logits)
    with pytest.raises(ValueError, match="query_refiner"):
        model(images, mask, query_refiner=lambda c: c[:, :1])


def test_denoising_noise_ranges():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(CLASSES + 1, 8)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.6, 0.1, 0.3]])
    targets = [{"labels": torch.tensor([1, 2]), "boxes": boxes}]
    dn = build_denoising_queries(
        targets,
        embedding,
        num_queries=3,
        num_classes=CLASSES,
        dn_number=20,
        label_noise_ratio=0.0,
        box_noise_scale=0.4,
    )
    meta = dn.meta
    assert meta.num_groups == 10 and meta.pad_size == 40
    assert (
        dn.content.shape == (1, 40, 8) and dn.anchors.shape == (1, 40, 4) and dn.attn_mask.shape == (43, 43)
    )
    from torchvision.ops import box_convert

    corners = box_convert(dn.anchors[0].sigmoid(), "cxcywh", "xyxy")
    true = box_convert(boxes, "cxcywh", "xyxy")
    half = boxes[:, 2:].repeat(1, 2) / 2
    q, t = meta.positive_matches[0]
    pos_shift = (corners[q] - true[t]).abs() / half[t]
    assert (pos_shift <= 0.4 + 1e-3).all()
    neg = meta.negative_indices[0]
    neg_t = torch.arange(2).repeat(10)
    neg_shift = (corners[neg] - true[neg_t]).abs() / half[neg_t]
    assert (neg_shift >= 0.4 - 1e-3).all() and (neg_shift <= 0.8 + 1e-3).all()
    # Without label noise the content is the embedding of the true label.
    torch.testing.assert_close(dn.content[0, q], embedding(targets[0]["labels"][t]))
    # Mask: matching rows blind to DN columns; group 0 blind to group 1, sees itself and matching.
    assert dn.attn_mask[40:, :40].all() and not dn.attn_mask[40:, 40:].any()
    assert dn.attn_mask[0, 4:8].all() and not dn.attn_mask[0, :4].any() and not dn.attn_mask[0, 40:].any()


def test_denoising_edge_cases():
    embedding = torch.nn.Embedding(CLASSES + 1, 8)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    assert build_denoising_queries(empty, embedding, 3, CLASSES, 10, 0.5, 0.4) is None
    many = [{"labels": torch.zeros(30, dtype=torch.long), "boxes": torch.rand(30, 4)}]
    assert build_denoising_queries(many, embedding, 3, CLASSES, 10, 0.5, 0.4).meta.num_groups == 1
    with pytest.raises(ValueError, match=r"targets\[0\].*labels must lie"):
        build_denoising_queries(
            [{"labels": torch.tensor([CLASSES]), "boxes": torch.rand(1, 4)}],
            embedding,
            3,
            CLASSES,
            10,
            0.5,
            0.4,
        )
    with pytest.raises(ValueError, match="needs 'labels' and 'boxes'"):
        build_denoising_queries([{"labels": torch.tensor([0])}], embedding, 3, CLASSES, 10, 0.5, 0.4)
    assert inverse_sigmoid(torch.tensor([0.5])).item() == 0.0


def test_gradient_reaches_backbone_through_detection(model):
    images, mask, targets = _batch()
    model.train()
    model.zero_grad()
    out = model(images, mask, targets=targets)
    loss = (
        out.pred_logits.sigmoid().mean() + out.pred_boxes.mean() + out.enc_boxes.mean() + out.dn_boxes.mean()
    )
    loss.backward()
    assert model.backbone.body.layer4[-1].conv2.weight.grad.abs().sum() > 0
    assert model.backbone.body.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert model.backbone.body.layer1[0].conv1.weight.grad is None
    assert model.encoder.layers[0].linear1.weight.grad.abs().sum() > 0
    assert model.decoder.tgt_embed.weight.grad.abs().sum() > 0
    assert model.decoder.enc_out_bbox_embed.layers[-1].weight.grad.abs().sum() > 0


def test_bfloat16_autocast_cpu(model):
    images, mask, targets = _batch()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, mask, targets=targets)
    for tensor in (out.pred_logits, out.pred_boxes, out.enc_boxes, out.dn_boxes, out.hidden_states):
        assert torch.isfinite(tensor.float()).all()
    assert out.pred_boxes.shape == (2, 2, QUERIES, 4)


def test_encoder_features_as_content_queries():
    torch.manual_seed(0)
    vision = TinyVision(dn_number=0, learned_content_queries=False).eval()
    assert vision.decoder.tgt_embed is None
    images, mask, targets = _batch()
    with torch.no_grad():
        out = vision.train()(images, mask, targets=targets)
    assert out.dn_meta is None and out.pred_boxes.shape == (2, 2, QUERIES, 4)


def test_decoder_rejects_too_many_queries():
    decoder = ImageDecoder(D, 1, HEADS, 1, 1, 16, num_queries=50, num_classes=2)
    encoder = ImageEncoder(D, 1, HEADS, 1, 1, 16)
    enc = encoder(
        [torch.randn(1, D, 4, 4)], [torch.zeros(1, 4, 4, dtype=torch.bool)], [torch.zeros(1, D, 4, 4)]
    )
    with pytest.raises(ValueError, match="only 16 tokens"):
        decoder(enc)


def test_paper_sizes_match_authors_parameter_counts():
    """d=256, 8 heads, 4 levels, 4 points, FFN 2048, 900 queries, 30 classes (one layer each)."""
    encoder = ImageEncoder(256, 1, 8, 4, 4, 2048)
    decoder = ImageDecoder(256, 1, 8, 4, 4, 2048, num_queries=900, num_classes=30)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(encoder.layers[0]) == 1_282_176
    assert count(decoder.layers[0]) == 1_545_856
    assert count(decoder.ref_point_head) == 197_120
    assert decoder.tgt_embed.weight.shape == (900, 256) and decoder.label_enc.weight.shape == (31, 256)
    assert encoder.level_embed.shape == (4, 256)
    two_stage = [
        decoder.enc_output,
        decoder.enc_output_norm,
        decoder.enc_out_class_embed,
        decoder.enc_out_bbox_embed,
    ]
    assert sum(count(m) for m in two_stage) == 206_626
    heads = [decoder.ref_point_head, decoder.norm, decoder.bbox_embed, decoder.class_embed]
    assert sum(count(m) for m in heads) == 337_954
    shapes = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert shapes["layers.0.self_attn.in_proj_weight"] == (768, 256)
    assert shapes["layers.0.cross_attn.attention_weights.weight"] == (128, 256)
    assert shapes["bbox_embed.layers.2.weight"] == (4, 256) and shapes["class_embed.weight"] == (30, 256)


def test_proposals_are_cells_of_the_unpadded_image(model):
    """Fresh box heads predict the raw proposals: valid cell centres, normalised to the unpadded extent."""
    images, mask, _ = _batch()
    with torch.no_grad():
        encoded = model.eval().encode(images, mask)
        out = model.decoder(encoded)
    boxes = out.enc_boxes[1]
    levels = torch.log2(boxes[:, 2] / 0.05).round().long()
    torch.testing.assert_close(boxes[:, 2], 0.05 * 2.0 ** levels.float())
    valid_cells = (encoded.valid_ratios[1] * encoded.spatial_shapes.flip(-1)).round()[levels]  # (K, 2) x, y
    cells = boxes[:, :2] * valid_cells - 0.5
    torch.testing.assert_close(cells, cells.round(), atol=1e-4, rtol=0)
    assert (cells >= 0).all() and (cells < valid_cells).all()
