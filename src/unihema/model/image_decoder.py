"""Image decoder **D_I**: DINO's two-stage query selection and deformable decoder with iterative box
refinement and contrastive denoising.

Flow of :meth:`ImageDecoder.forward`:

1. Encoder proposals: every valid memory token proposes a box (its cell, size 0.05 * 2^level),
   ``enc_output`` + LayerNorm transform the tokens, a separate class Linear and box MLP score and
   refine them; the top-K tokens by their best class logit become the anchors (detached).
2. Content queries: a learned ``tgt_embed`` (DINO's mixed query selection) or, with
   ``learned_content_queries=False``, the selected (detached) encoder features.
3. Training with targets: contrastive denoising queries (:mod:`unihema.model.denoising`) are
   prepended, with an attention mask keeping them invisible to the matching queries.
4. ``query_refiner`` (e.g. the Hema-Former's TGVR) maps the content queries to new ones.
5. Decoder layers: self-attention -> deformable cross-attention on memory -> FFN, post-norm; the
   query position is MLP(sine(anchor box)); a shared box MLP refines the anchors after every layer
   and a shared class Linear classifies the LayerNorm'ed hidden states.

Correspondence with the authors' checkpoint (``<d>`` = the attribute holding :class:`ImageDecoder`;
upstream shares one box MLP / class Linear across layers and lists it once per layer and again at
the top level, e.g. ``bbox_embed.{0..5}`` and ``transformer.decoder.bbox_embed.{0..5}``: any copy
maps to the single module here):

- ``transformer.decoder.layers.{i}.{self_attn,norm2,cross_attn,norm1,linear1,linear2,norm3}.*``
  -> ``<d>.layers.{i}.<same>.*``
- ``transformer.decoder.norm.*`` -> ``<d>.norm.*``
- ``transformer.decoder.ref_point_head.layers.{0,1}.*`` -> ``<d>.ref_point_head.layers.{0,1}.*``
- ``transformer.decoder.bbox_embed.{i}.layers.{0,1,2}.*`` (also top-level ``bbox_embed.{i}``)
  -> ``<d>.bbox_embed.layers.{0,1,2}.*``
- ``transformer.decoder.class_embed.{i}.*`` (also top-level ``class_embed.{i}``) -> ``<d>.class_embed.*``
- ``transformer.tgt_embed.weight`` (900, 256) -> ``<d>.tgt_embed.weight``
- ``transformer.enc_output.*`` / ``transformer.enc_output_norm.*`` -> ``<d>.enc_output.*`` / ``<d>.enc_output_norm.*``
- ``transformer.enc_out_class_embed.*`` -> ``<d>.enc_out_class_embed.*``
- ``transformer.enc_out_bbox_embed.layers.{0,1,2}.*`` -> ``<d>.enc_out_bbox_embed.layers.{0,1,2}.*``

Not carried over (unused upstream): ``transformer.{class_embed,label_enc,mask_embed,decoder_norm}`` and
the denoising ``label_enc.weight`` (their denoising never ran, so it was never trained).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unihema.model.backbone import sine_embed
from unihema.model.deformable import MultiScaleDeformableAttention
from unihema.model.denoising import DenoisingQueries, build_denoising_queries, inverse_sigmoid
from unihema.model.image_encoder import EncoderOutput
from unihema.model.outputs import DenoisingMeta

# Initial class probability of every query (focal-loss prior, RetinaNet/DINO).
PRIOR_PROB = 0.01
# Encoder proposals: box side 0.05 * 2^level of the image; tokens whose proposal centre or size
# falls outside (0.01, 0.99) are not proposals (DINO).
PROPOSAL_BASE_SIZE = 0.05
PROPOSAL_VALID_MIN = 0.01
PROPOSAL_VALID_MAX = 0.99
# Frequency base of the sine embedding of anchor boxes (DINO).
ANCHOR_SINE_TEMPERATURE = 10000.0
BOX_MLP_LAYERS = 3
REF_POINT_HEAD_LAYERS = 2


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU in between (none after the last); keys ``layers.{i}``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def sine_embed_boxes(
    boxes: Tensor, num_pos_feats: int, temperature: float = ANCHOR_SINE_TEMPERATURE
) -> Tensor:
    """Sine embedding of normalised (cx, cy, w, h) boxes: (..., 4) -> (..., 4 * num_pos_feats).

    Channel blocks are ordered (cy, cx, w, h) with coordinates scaled by 2*pi, as DINO, so the
    weights of a query-position MLP trained upstream transfer.
    """
    scaled = boxes * (2 * math.pi)
    order = (1, 0, 2, 3)
    return torch.cat([sine_embed(scaled[..., i], num_pos_feats, temperature) for i in order], dim=-1)


def generate_proposals(
    memory: Tensor, padding_mask: Tensor, spatial_shapes: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One proposal box per memory token.

    Returns:
        proposals (B, S, 4) inverse-sigmoid cxcywh (``inf`` for invalid tokens), masked memory
        (B, S, d) (zeros at invalid tokens) and the valid-token mask (B, S).
    """
    batch = memory.shape[0]
    proposals = []
    start = 0
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        mask = padding_mask[:, start : start + h * w].view(batch, h, w)
        valid_h = (~mask[:, :, 0]).sum(1).float()
        valid_w = (~mask[:, 0, :]).sum(1).float()
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=memory.device),
            torch.arange(w, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        centers = torch.stack((xs, ys), dim=-1)[None] + 0.5
        scale = torch.stack((valid_w, valid_h), dim=-1)[:, None, None]
        centers = centers / scale
        sizes = torch.full_like(centers, PROPOSAL_BASE_SIZE * (2.0**level))
        proposals.append(torch.cat((centers, sizes), dim=-1).view(batch, -1, 4))
        start += h * w
    boxes = torch.cat(proposals, dim=1)
    valid = ((boxes > PROPOSAL_VALID_MIN) & (boxes < PROPOSAL_VALID_MAX)).all(-1) & ~padding_mask
    logits = torch.log(boxes / (1 - boxes)).masked_fill(~valid[..., None], float("inf"))
    masked_memory = memory.masked_fill(~valid[..., None], 0.0)
    return logits, masked_memory, valid


@dataclass
class DecoderOutput:
    """Output of :class:`ImageDecoder` (L decoder layers, Q matching queries, K = Q encoder
    proposals, C classes, Qdn denoising queries).

    Attributes:
        hidden_states: (L, B, Q, d) LayerNorm'ed hidden states of the matching queries (E_D^I).
        pred_logits: (L, B, Q, C) class logits (sigmoid/focal; no background class).
        pred_boxes: (L, B, Q, 4) boxes, sigmoid cxcywh normalised to each image's unpadded extent
            (the convention of the targets; the decoder converts to the padded extent internally via
            ``valid_ratios`` when it samples the memory).
        enc_logits: (B, K, C) class logits of the selected encoder proposals.
        enc_boxes: (B, K, 4) refined boxes of the selected proposals (not detached).
        reference_points: (L + 1, B, Q, 4) sigmoid anchors (same normalisation as ``pred_boxes``) of
            the matching queries before each layer (index 0 = selected proposals) and after the last.
        dn_logits, dn_boxes, dn_hidden_states: (L, B, Qdn, C / 4 / d) outputs of the denoising
            queries, or ``None`` when denoising is off.
        dn_meta: layout of the denoising queries; ``None`` when off.
    """

    hidden_states: Tensor
    pred_logits: Tensor
    pred_boxes: Tensor
    enc_logits: Tensor
    enc_boxes: Tensor
    reference_points: Tensor
    dn_logits: Tensor | None = None
    dn_boxes: Tensor | None = None
    dn_hidden_states: Tensor | None = None
    dn_meta: DenoisingMeta | None = None


class DeformableDecoderLayer(nn.Module):
    """Self-attention -> deformable cross-attention -> ReLU FFN, each post-norm (DINO order).

    Norm names follow DINO (``norm2`` after self-attention, ``norm1`` after cross-attention,
    ``norm3`` after the FFN) so checkpoints map key by key.
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
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.activation = nn.ReLU()
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        memory_padding_mask: Tensor | None,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``tgt``/``query_pos`` (B, Q, d), ``reference_points`` (B, Q, L, 4), ``memory`` (B, S, d)."""
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        attended = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index, memory_padding_mask
        )
        tgt = self.norm1(tgt + self.dropout1(attended))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class ImageDecoder(nn.Module):
    """DINO decoder with two-stage top-K query selection and contrastive denoising.

    Args:
        d_model: query width.
        num_layers: decoder layers (6 in the paper).
        num_heads: heads of self- and cross-attention.
        num_levels, num_points: deformable cross-attention sizes.
        ffn_dim: feed-forward hidden width.
        num_queries: matching queries K = number of selected encoder proposals (900 in the paper).
        num_classes: detection classes C.
        dropout: dropout probability.
        dn_number: denoising budget (pairs of positive/negative queries over all groups); 0 disables.
        dn_label_noise_ratio: label flip probability x 2 for denoising queries.
        dn_box_noise_scale: box corner noise in half box sizes for denoising queries.
        learned_content_queries: content queries are a learned embedding (DINO's mixed query
            selection, default) instead of the selected encoder features.
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        ffn_dim: int,
        num_queries: int,
        num_classes: int,
        dropout: float = 0.0,
        dn_number: int = 100,
        dn_label_noise_ratio: float = 0.5,
        dn_box_noise_scale: float = 0.4,
        learned_content_queries: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"ImageDecoder num_layers must be >= 1, got {num_layers}")
        if num_queries < 1 or num_classes < 1:
            raise ValueError(
                f"ImageDecoder needs num_queries >= 1 and num_classes >= 1, got {num_queries}, {num_classes}"
            )
        if d_model % 2:
            raise ValueError(f"ImageDecoder d_model must be even (anchor sine embedding), got {d_model}")
        if dn_number < 0 or not 0.0 <= dn_label_noise_ratio <= 1.0 or dn_box_noise_scale < 0:
            raise ValueError(
                "ImageDecoder denoising settings out of range: dn_number >= 0, dn_label_noise_ratio in [0, 1], "
                f"dn_box_noise_scale >= 0; got {dn_number}, {dn_label_noise_ratio}, {dn_box_noise_scale}"
            )
        self.d_model = d_model
        self.num_layers = num_layers
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.dn_number = dn_number
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_box_noise_scale = dn_box_noise_scale
        self.learned_content_queries = learned_content_queries

        self.layers = nn.ModuleList(
            DeformableDecoderLayer(d_model, num_heads, num_levels, num_points, ffn_dim, dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, REF_POINT_HEAD_LAYERS)
        self.bbox_embed = MLP(d_model, d_model, 4, BOX_MLP_LAYERS)
        self.class_embed = nn.Linear(d_model, num_classes)
        self.tgt_embed = nn.Embedding(num_queries, d_model) if learned_content_queries else None
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.label_enc = nn.Embedding(num_classes + 1, d_model)
        self._reset_heads()
        # Separate (not shared) heads for the encoder proposals, initialised like the decoder's.
        self.enc_out_class_embed = copy.deepcopy(self.class_embed)
        self.enc_out_bbox_embed = copy.deepcopy(self.bbox_embed)

    def _reset_heads(self) -> None:
        nn.init.constant_(self.class_embed.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        # Zero box deltas at start: the first predictions are the anchors themselves.
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        if self.tgt_embed is not None:
            nn.init.normal_(self.tgt_embed.weight)

    def _select_queries(self, encoder_output: EncoderOutput) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Top-K encoder proposals -> (anchors (B,K,4) inverse-sigmoid detached, content (B,K,d),
        enc_logits (B,K,C), enc_boxes (B,K,4) sigmoid)."""
        memory = encoder_output.memory
        proposals, masked_memory, valid = generate_proposals(
            memory, encoder_output.padding_mask, encoder_output.spatial_shapes
        )
        output_memory = self.enc_output_norm(self.enc_output(masked_memory))
        logits = self.enc_out_class_embed(output_memory)
        coords = self.enc_out_bbox_embed(output_memory) + proposals
        scores = logits.max(-1).values.masked_fill(~valid, float("-inf"))
        topk = scores.topk(self.num_queries, dim=1).indices
        index4 = topk[..., None].expand(-1, -1, 4)
        coords_topk = coords.gather(1, index4)
        enc_logits = logits.gather(1, topk[..., None].expand(-1, -1, logits.shape[-1]))
        features = output_memory.gather(1, topk[..., None].expand(-1, -1, output_memory.shape[-1]))
        if self.tgt_embed is not None:
            content = self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)
        else:
            content = features.detach()
        return coords_topk.detach(), content, enc_logits, coords_topk.sigmoid()

    def forward(
        self,
        encoder_output: EncoderOutput,
        query_refiner: Callable[[Tensor], Tensor] | None = None,
        targets: list[dict] | None = None,
    ) -> DecoderOutput:
        """Decode ``encoder_output``.

        Args:
            query_refiner: maps content queries (B, Qdn + Q, d) to refined ones of the same shape
                (applied after selection and denoising concatenation, before the layers).
            targets: per-image dicts with ``labels`` (N,) and ``boxes`` (N, 4) cxcywh normalised;
                used for denoising only when ``self.training and dn_number > 0``.
        """
        memory = encoder_output.memory
        if memory.shape[1] < self.num_queries:
            raise ValueError(
                f"ImageDecoder selects {self.num_queries} queries but the image has only {memory.shape[1]} tokens; "
                "use larger images or fewer queries"
            )
        batch = memory.shape[0]
        anchors, content, enc_logits, enc_boxes = self._select_queries(encoder_output)

        denoising: DenoisingQueries | None = None
        if self.training and self.dn_number > 0 and targets is not None:
            if len(targets) != batch:
                raise ValueError(f"ImageDecoder got {len(targets)} target dicts for a batch of {batch}")
            denoising = build_denoising_queries(
                targets,
                self.label_enc,
                num_queries=self.num_queries,
                num_classes=self.num_classes,
                dn_number=self.dn_number,
                label_noise_ratio=self.dn_label_noise_ratio,
                box_noise_scale=self.dn_box_noise_scale,
            )
        attn_mask = None
        pad_size = 0
        if denoising is not None:
            pad_size = denoising.meta.pad_size
            content = torch.cat((denoising.content.to(content.dtype), content), dim=1)
            anchors = torch.cat((denoising.anchors.to(anchors.dtype), anchors), dim=1)
            attn_mask = denoising.attn_mask
        if query_refiner is not None:
            refined = query_refiner(content)
            if refined.shape != content.shape:
                raise ValueError(
                    f"query_refiner must keep the query shape {tuple(content.shape)}, returned {tuple(refined.shape)}"
                )
            content = refined

        hidden, references = self._run_layers(content, anchors, encoder_output, attn_mask)
        hidden_states = torch.stack(hidden)
        logits = self.class_embed(hidden_states)
        # DINO's "look forward twice": the box of layer i refines the (undetached) anchor produced by
        # layer i-1, so layer i's box loss also trains layer i-1.
        boxes = torch.stack(
            [(self.bbox_embed(h) + inverse_sigmoid(ref)).sigmoid() for h, ref in zip(hidden, references[:-1])]
        )
        reference_points = torch.stack(references)

        output = DecoderOutput(
            hidden_states=hidden_states[:, :, pad_size:],
            pred_logits=logits[:, :, pad_size:],
            pred_boxes=boxes[:, :, pad_size:],
            enc_logits=enc_logits,
            enc_boxes=enc_boxes,
            reference_points=reference_points[:, :, pad_size:],
        )
        if denoising is not None:
            output.dn_hidden_states = hidden_states[:, :, :pad_size]
            output.dn_logits = logits[:, :, :pad_size]
            output.dn_boxes = boxes[:, :, :pad_size]
            output.dn_meta = denoising.meta
        return output

    def _run_layers(
        self, content: Tensor, anchors: Tensor, encoder_output: EncoderOutput, attn_mask: Tensor | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Run the layers; returns normed hidden states per layer and L + 1 sigmoid references."""
        valid_ratios = encoder_output.valid_ratios
        box_ratios = torch.cat((valid_ratios, valid_ratios), dim=-1)[:, None]  # (B, 1, L, 4)
        reference = anchors.sigmoid()
        references = [reference]
        hidden = []
        output = content
        for layer in self.layers:
            reference_input = reference[:, :, None] * box_ratios.to(reference.dtype)
            query_pos = self.ref_point_head(sine_embed_boxes(reference_input[:, :, 0], self.d_model // 2))
            output = layer(
                output,
                query_pos,
                reference_input,
                encoder_output.memory,
                encoder_output.spatial_shapes,
                encoder_output.level_start_index,
                encoder_output.padding_mask,
                self_attn_mask=attn_mask,
            )
            new_reference = (self.bbox_embed(output) + inverse_sigmoid(reference)).sigmoid()
            references.append(new_reference)
            reference = new_reference.detach()
            hidden.append(self.norm(output))
        return hidden, references
