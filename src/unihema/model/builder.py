"""Builds every module of :class:`~unihema.model.unihema.UniHema` from a :class:`UniHemaConfig`.

Kept apart from the composition so that ``unihema.py`` reads as the data flow only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from unihema.data.vocab import CELL_ATTRIBUTES, FOV_ATTRIBUTES
from unihema.model.backbone import InputProjection, ResNetBackbone, SinePositionEncoding
from unihema.model.configuration import UniHemaConfig
from unihema.model.heads import AttributeHead, CellClassHead
from unihema.model.hemaformer import (
    CrossModalFusion,
    QueryGuidedMaskFormer,
    SingleCellFeatureExtractor,
    TextGuidedVisualRefinement,
    UpstreamQueryGuidedMaskFormer,
)
from unihema.model.image_decoder import ImageDecoder
from unihema.model.image_encoder import ImageEncoder
from unihema.model.text import TextModel


def build_components(
    config: UniHemaConfig, tokenizer: Any = None
) -> tuple[UniHemaConfig, dict[str, nn.Module]]:
    """The modules of a model (random weights unless the config points at pretrained ones), keyed by the
    constructor arguments of ``UniHema``, and the config with its automatic fields resolved (text sizes of
    a pretrained T5, backbone norm and trainable stages) so that a saved config rebuilds the same model.
    ``tokenizer`` replaces the domain tokenizer (used when loading a saved model)."""
    v, h, heads, dn = config.vision, config.hemaformer, config.heads, config.denoising
    text, text_config = TextModel.from_config(config.text, tokenizer=tokenizer)
    vision = dataclasses.replace(
        v,
        trainable_backbone_layers=v.resolved_trainable_backbone_layers(),
        backbone_norm=v.resolved_backbone_norm(),
    )
    config = dataclasses.replace(config, text=text_config, vision=vision)
    d, n = v.d_model, text.d_model
    backbone = ResNetBackbone(
        v.backbone_depth, v.backbone_weights, vision.trainable_backbone_layers, vision.backbone_norm
    )
    attention = dict(
        num_heads=v.num_heads, num_levels=v.num_levels, num_points=v.num_points, ffn_dim=v.ffn_dim
    )
    if h.qgmf_style == "paper":
        qgmf: nn.Module = QueryGuidedMaskFormer(
            d, backbone.out_channels[0], h.qgmf_mlp_layers, h.qgmf_upsampler_channels, h.qgmf_query
        )
    else:
        qgmf = UpstreamQueryGuidedMaskFormer(d, h.qgmf_mlp_layers, h.qgmf_upsampler_channels, h.qgmf_query)
    components: dict[str, nn.Module] = {
        "backbone": backbone,
        "input_proj": InputProjection(backbone.out_channels, d, v.num_levels),
        "position": SinePositionEncoding(d // 2, v.position_temperature, normalize=True),
        "image_encoder": ImageEncoder(
            d, v.encoder_layers, dropout=v.dropout, skip_levels=v.encoder_skip_levels, **attention
        ),
        "image_decoder": ImageDecoder(
            d,
            v.decoder_layers,
            num_queries=v.num_queries,
            num_classes=heads.num_detection_classes,
            dropout=v.dropout,
            dn_number=dn.number if dn.enabled else 0,
            dn_label_noise_ratio=dn.label_noise_ratio,
            dn_box_noise_scale=dn.box_noise_scale,
            **attention,
        ),
        "text": text,
        "cmf": CrossModalFusion(
            d,
            n,
            text_config.max_length,
            h.cmf_num_heads,
            num_layers=h.cmf_num_layers,
            order=h.cmf_order,
            ffn=h.cmf_ffn,
            ffn_dim=h.cmf_ffn_dim,
            residual=h.cmf_residual,
            cell_feature_dim=d if h.cell_feature_fusion == "add" else 0,
        ),
        "tgvr": TextGuidedVisualRefinement(d, n, h.tgvr_num_heads, h.tgvr_mode),
        "scfe": SingleCellFeatureExtractor(
            d, h.scfe_inputs, h.scfe_pooling, v.num_heads, backbone.out_channels[-1]
        ),
        "qgmf": qgmf,
        "box_attribute_head": AttributeHead(d, FOV_ATTRIBUTES, heads.box_attribute_hidden_dim),
        "cell_class_head": CellClassHead(
            d, heads.num_cell_classes, heads.cell_head_hidden_dims, heads.cell_head_dropout
        ),
        "cell_attribute_head": AttributeHead(d, CELL_ATTRIBUTES, heads.cell_attribute_hidden_dim),
    }
    return config, components
