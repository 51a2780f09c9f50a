"""Image encoder **E_I**: a stack of deformable self-attention layers over the flattened multi-scale
feature pyramid (DINO's encoder: post-norm, ReLU feed-forward).

Correspondence with the authors' checkpoint (``<e>`` = the attribute holding :class:`ImageEncoder`):

- ``transformer.level_embed`` (L, d) -> ``<e>.level_embed``
- ``transformer.encoder.layers.{i}.{self_attn,norm1,linear1,linear2,norm2}.*`` -> ``<e>.layers.{i}.<same>.*``

Not carried over: ``transformer.encoder.cls_token``/``cls_pos`` (a learned constant that never
attends to anything upstream) and the unused ``cls_fusion`` layer; the SCFE-related projections
belong to the Hema-Former.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unihema.model.deformable import MultiScaleDeformableAttention

# Offset of a cell centre inside its cell, in cells (reference points sit on cell centres).
_CELL_CENTER = 0.5


@dataclass
class EncoderOutput:
    """Output of :class:`ImageEncoder` (S = sum over levels of h_l * w_l).

    Attributes:
        memory: (B, S, d) contextualised tokens E_E^I, levels concatenated coarse-last.
        padding_mask: (B, S) bool, True on tokens of padded image area.
        spatial_shapes: (L, 2) long, (h_l, w_l) of each level.
        level_start_index: (L,) long, offset of each level in S.
        valid_ratios: (B, L, 2) fraction (x, y) of each level that is not padding.
        pos: (B, S, d) sine position encoding plus the learned level embedding.
    """

    memory: Tensor
    padding_mask: Tensor
    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_ratios: Tensor
    pos: Tensor

    def level_map(self, level: int, tokens: Tensor | None = None) -> Tensor:
        """Level ``level`` of ``tokens`` (B, S, C; default ``memory``) as a map (B, C, h_l, w_l)."""
        tokens = self.memory if tokens is None else tokens
        h, w = (int(v) for v in self.spatial_shapes[level].tolist())
        start = int(self.level_start_index[level])
        return tokens[:, start : start + h * w].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def flatten_levels(
    features: Sequence[Tensor], masks: Sequence[Tensor], pos: Sequence[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Flatten per-level maps to tokens.

    Returns:
        tokens (B, S, d), padding mask (B, S), pos (B, S, d), spatial_shapes (L, 2), level_start_index (L,).
    """
    device = features[0].device
    shapes = torch.tensor([f.shape[-2:] for f in features], dtype=torch.long, device=device)
    sizes = shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1)
    padding = torch.cat([m.flatten(1) for m in masks], dim=1)
    pos_tokens = torch.cat([p.flatten(2).transpose(1, 2) for p in pos], dim=1)
    return tokens, padding, pos_tokens, shapes, level_start_index


def valid_ratios_from_masks(masks: Sequence[Tensor]) -> Tensor:
    """(B, L, 2) valid fraction (x, y) per level, from padding masks (B, h_l, w_l) (padding is bottom/right)."""
    ratios = []
    for mask in masks:
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float()
        valid_w = (~mask[:, 0, :]).sum(1).float()
        ratios.append(torch.stack((valid_w / w, valid_h / h), dim=-1))
    return torch.stack(ratios, dim=1)


def encoder_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor) -> Tensor:
    """Cell-centre reference points of every token on every level: (B, S, L, 2).

    Centres are normalised by each image's valid extent of their own level, then re-expressed in the
    padded extent of every level, so a token samples the same image location on all levels.
    """
    points = []
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=valid_ratios.device) + _CELL_CENTER,
            torch.arange(w, dtype=torch.float32, device=valid_ratios.device) + _CELL_CENTER,
            indexing="ij",
        )
        ys = ys.reshape(1, -1) / (valid_ratios[:, None, level, 1] * h)
        xs = xs.reshape(1, -1) / (valid_ratios[:, None, level, 0] * w)
        points.append(torch.stack((xs, ys), dim=-1))
    reference = torch.cat(points, dim=1)
    return reference[:, :, None] * valid_ratios[:, None]


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention + ReLU FFN, each followed by residual add and LayerNorm (post-norm).

    Args:
        d_model: token width.
        num_heads, num_levels, num_points: deformable attention sizes.
        ffn_dim: hidden width of the feed-forward block.
        dropout: dropout after attention, inside and after the FFN.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        ffn_dim: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.activation = nn.ReLU()
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None,
        value: Tensor | None = None,
    ) -> Tensor:
        """``src``/``pos`` (B, Q, d), ``reference_points`` (B, Q, L, 2) -> (B, Q, d).

        ``value`` (B, S, d) is the token sequence sampled from; ``None`` means ``src`` itself (Q = S)."""
        value = src if value is None else value
        attended = self.self_attn(
            src + pos, reference_points, value, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class ImageEncoder(nn.Module):
    """Deformable transformer encoder over ``num_levels`` projected feature maps.

    Args:
        d_model: token width (channels of the input maps).
        num_layers: encoder layers (6 in the paper).
        num_heads, num_levels, num_points: deformable attention sizes (8, 4, 4 in the paper).
        ffn_dim: feed-forward hidden width (2048 in the paper).
        dropout: dropout probability (0.0 in the paper).
        skip_levels: how many of the finest levels are not updated; 0 = none (the paper). Their tokens
            pass through unchanged but are still sampled by every layer (Lite-DETR's high-level-first
            update): the stride-8 level holds about 3/4 of the tokens, so skipping it cuts the encoder's
            cost about fourfold.
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        ffn_dim: int,
        dropout: float = 0.0,
        skip_levels: int = 0,
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"ImageEncoder num_layers must be >= 0, got {num_layers}")
        if not 0 <= skip_levels < num_levels:
            raise ValueError(f"ImageEncoder skip_levels must be in [0, {num_levels - 1}], got {skip_levels}")
        self.d_model = d_model
        self.num_levels = num_levels
        self.skip_levels = skip_levels
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, num_heads, num_levels, num_points, ffn_dim, dropout)
            for _ in range(num_layers)
        )
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        nn.init.normal_(self.level_embed)

    def forward(
        self, features: Sequence[Tensor], masks: Sequence[Tensor], pos: Sequence[Tensor]
    ) -> EncoderOutput:
        """Encode projected maps ``features`` (B, d, h_l, w_l) with padding ``masks`` (B, h_l, w_l)
        (True on padding) and position encodings ``pos`` (B, d, h_l, w_l)."""
        if not (len(features) == len(masks) == len(pos) == self.num_levels):
            raise ValueError(
                f"ImageEncoder expects {self.num_levels} levels of features/masks/pos, "
                f"got {len(features)}/{len(masks)}/{len(pos)}"
            )
        for level, (f, m, p) in enumerate(zip(features, masks, pos)):
            if f.shape[1] != self.d_model or p.shape != f.shape or m.shape != (f.shape[0], *f.shape[-2:]):
                raise ValueError(
                    f"ImageEncoder level {level}: features {tuple(f.shape)}, pos {tuple(p.shape)} and mask "
                    f"{tuple(m.shape)} disagree (d_model={self.d_model})"
                )
        tokens, padding, pos_tokens, spatial_shapes, level_start_index = flatten_levels(features, masks, pos)
        level_ids = torch.repeat_interleave(
            torch.arange(self.num_levels, device=tokens.device), spatial_shapes.prod(1)
        )
        pos_tokens = pos_tokens.to(self.level_embed.dtype) + self.level_embed[level_ids][None]
        valid_ratios = valid_ratios_from_masks(masks)
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        memory = tokens
        first = int(level_start_index[self.skip_levels])  # first updated token
        for layer in self.layers:
            updated = layer(
                memory[:, first:], pos_tokens[:, first:], reference_points[:, first:],
                spatial_shapes, level_start_index, padding, value=memory,
            )  # fmt: skip
            memory = updated if first == 0 else torch.cat((memory[:, :first], updated), dim=1)
        return EncoderOutput(
            memory=memory,
            padding_mask=padding,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            pos=pos_tokens,
        )
