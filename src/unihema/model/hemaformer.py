"""Hema-Former (paper section 3.2.2): the four modules that fuse text and image features.

- :class:`CrossModalFusion` (CMF, eqs. 1-2): learnable queries, one per text position, attend to the
  projected text states E_E^T and to the projected backbone tokens E_B^I; the result E_W^T (in the text
  width) is the memory of the text decoder D_T.
- :class:`TextGuidedVisualRefinement` (TGVR, eq. 3): the decoder's content queries attend to the
  projected text states; query and attention are concatenated and projected (or gated, as the authors'
  code does). Plugged into the image decoder as its ``query_refiner``.
- :class:`SingleCellFeatureExtractor` (SCFE): a learned query concatenated with the mean of the encoder
  tokens, projected to the image-level "cell feature" E_Z, independent of any text.
- :class:`QueryGuidedMaskFormer` (QGMF, eqs. 4-5): pixel embedding G_proj from the backbone level F_1
  (C3, stride 8) summed with the encoder's level-0 tokens, query embedding from the decoder state of one
  query, their dot product gives stride-8 mask logits, and a learnable upsampler brings them to the input
  size.

Correspondence with the authors' checkpoint keys (``upstream-state-dict.tsv``), for a converter:

==================================================  =====================================================
authors' key                                        this module
==================================================  =====================================================
``xformer.queries`` (64, 256)                       ``CrossModalFusion.queries``
``xformer.{img_proj,txt_proj,out_proj}.*``          ``CrossModalFusion.{img_proj,txt_proj,out_proj}.*``
``xformer.layers.{i}.cross_attn_{img,txt}.*``       ``CrossModalFusion.layers.{i}.cross_attn_{img,txt}.*``
``xformer.layers.{i}.norm{1,2,3}.*``                ``CrossModalFusion.layers.{i}.norm{1,2,3}.*`` (norm1
                                                    follows the first attention of the configured order)
``xformer.layers.{i}.ffn.{0,2}.*``                  ``CrossModalFusion.layers.{i}.ffn.{0,2}.*``
``transformer.text_proj.*``                         ``TextGuidedVisualRefinement.text_proj.*``
``transformer.cross_attnn.*``                       ``TextGuidedVisualRefinement.cross_attn.*``
``transformer.combined_proj.*`` (unused upstream)   ``TextGuidedVisualRefinement.combined_proj.*`` (concat)
``transformer.gate_mlp.{0,2}.*``                    ``TextGuidedVisualRefinement.gate_mlp.{0,2}.*`` (gate)
``transformer.encoder.cls_token`` (1, 1, 256)       ``SingleCellFeatureExtractor.query`` (reshape to (256,))
``transformer.encoder.fuse_proj.*``                 ``SingleCellFeatureExtractor.proj.*``
``mask_embed.layers.{0,1,2}.*``                     ``UpstreamQueryGuidedMaskFormer.query_mlp.layers.*``
``decoder_norm.*``                                  ``UpstreamQueryGuidedMaskFormer.query_norm.*``
``transformer.encoder.mask_feature_proj.0.*``       ``UpstreamQueryGuidedMaskFormer.encoder_proj.0.*``
``transformer.encoder.mask_features.*``             ``UpstreamQueryGuidedMaskFormer.backbone_proj.*``
``upsampler.{fusion_conv,upsample}.*``              ``UpstreamQueryGuidedMaskFormer.upsampler.<same>.*``
==================================================  =====================================================

The authors' mask branch (each pixel branch projected, then summed; a BatchNorm upsampler that reads both
branches) differs in structure from eqs. 4-5 as implemented by :class:`QueryGuidedMaskFormer`; it is
reproduced by :class:`UpstreamQueryGuidedMaskFormer` (``hemaformer.qgmf_style = "upstream"``) so that
their weights can be loaded (:mod:`unihema.model.convert_upstream`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unihema.model.backbone import groupnorm_groups
from unihema.model.configuration import SCFE_INPUTS, SCFE_POOLINGS
from unihema.model.heads import UPSAMPLE_FACTOR, BinaryMaskHead
from unihema.model.image_decoder import MLP

# Initial scale of learnable query embeddings.
QUERY_INIT_STD = 0.02


def masked_mean(tokens: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of ``tokens`` (B, S, d), ignoring positions where ``padding_mask`` (B, S) is True."""
    if padding_mask is None:
        return tokens.mean(dim=1)
    weights = (~padding_mask).to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _key_padding(attention_mask: Tensor | None) -> Tensor | None:
    """T5-style attention mask (1 = token) -> ``nn.MultiheadAttention`` key padding mask (True = ignore)."""
    return None if attention_mask is None else attention_mask == 0


class _CMFBlock(nn.Module):
    """Two residual cross-attentions (text and image, in ``order``) with post-norms, optional FFN."""

    def __init__(
        self, d_model: int, num_heads: int, order: str, ffn: bool, ffn_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.order = order
        self.cross_attn_txt = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn_img = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = (
            nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model))
            if ffn
            else None
        )
        self.norm3 = nn.LayerNorm(d_model) if ffn else None

    def forward(
        self,
        queries: Tensor,
        text: Tensor,
        text_padding: Tensor | None,
        image: Tensor,
        image_padding: Tensor | None,
    ) -> Tensor:
        steps = [(self.cross_attn_txt, text, text_padding), (self.cross_attn_img, image, image_padding)]
        if self.order == "image_first":
            steps.reverse()
        for (attention, keys, padding), norm in zip(steps, (self.norm1, self.norm2)):
            attended = attention(queries, keys, keys, key_padding_mask=padding, need_weights=False)[0]
            queries = norm(queries + attended)
        if self.ffn is not None and self.norm3 is not None:
            queries = self.norm3(queries + self.ffn(queries))
        return queries


class CrossModalFusion(nn.Module):
    """CMF: fused text-decoder memory E_W^T from text states and projected backbone tokens.

    Eq. (1): ``J = Norm(Q + CrossAttn(Q, P(E_E^T), P(E_E^T)))``; eq. (2):
    ``E_W^T = Norm(J + CrossAttn(J, P(E_B^I), P(E_B^I)))``; the result is projected from the image width M
    to the text width N. The learnable queries Q have one row per text position (``max_text_length`` rows;
    the first L are used for a text of L tokens) so that E_W^T lines up with the text attention mask.

    Args:
        d_model: image width M (attention width).
        text_dim: text width N.
        max_text_length: number of learnable queries (the longest text).
        num_heads: attention heads.
        num_layers: stacked blocks (paper 1).
        order: ``"text_first"`` (paper) or ``"image_first"`` (authors' code).
        ffn: feed-forward sub-layer per block (authors' code).
        ffn_dim: its width.
        residual: add E_E^T to the projected output (authors' code).
        dropout: attention dropout.
        cell_feature_dim: width of a cell feature added to every output position (``0``: none; see
            ``hemaformer.cmf_cell_feature = "add"``).
    """

    def __init__(
        self,
        d_model: int,
        text_dim: int,
        max_text_length: int,
        num_heads: int,
        num_layers: int = 1,
        order: str = "text_first",
        ffn: bool = False,
        ffn_dim: int = 1024,
        residual: bool = False,
        dropout: float = 0.0,
        cell_feature_dim: int = 0,
    ) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(max_text_length, d_model) * QUERY_INIT_STD)
        self.cell_proj = nn.Linear(cell_feature_dim, text_dim) if cell_feature_dim else None
        self.img_proj = nn.Linear(d_model, d_model)
        self.txt_proj = nn.Linear(text_dim, d_model)
        self.layers = nn.ModuleList(
            _CMFBlock(d_model, num_heads, order, ffn, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.out_proj = nn.Linear(d_model, text_dim)
        self.residual = residual

    def forward(
        self,
        text_states: Tensor,
        text_mask: Tensor | None,
        image_tokens: Tensor,
        image_padding: Tensor | None,
        cell_feature: Tensor | None = None,
    ) -> Tensor:
        """Fuse.

        Args:
            text_states: E_E^T (B, L, N).
            text_mask: (B, L), 1 on tokens, 0 on padding; ``None`` attends to every position.
            image_tokens: E_B^I (B, S, M) flattened projected backbone levels.
            image_padding: (B, S) True on padded image area; ``None`` attends everywhere.
            cell_feature: (B, cell_feature_dim), added to every output position through ``cell_proj``
                (required when the module was built with ``cell_feature_dim``).

        Returns:
            E_W^T (B, L, N).
        """
        length = text_states.shape[1]
        if length > self.queries.shape[0]:
            raise ValueError(f"CMF has {self.queries.shape[0]} queries but the text has {length} tokens")
        queries = self.queries[:length].unsqueeze(0).expand(text_states.shape[0], -1, -1)
        text = self.txt_proj(text_states)
        image = self.img_proj(image_tokens)
        text_padding = _key_padding(text_mask)
        for layer in self.layers:
            queries = layer(queries, text, text_padding, image, image_padding)
        fused = self.out_proj(queries)
        if self.cell_proj is not None:
            if cell_feature is None:
                raise ValueError("this CMF adds a cell feature to its output: pass cell_feature")
            fused = fused + self.cell_proj(cell_feature.to(fused.dtype))[:, None]
        return fused + text_states.to(fused.dtype) if self.residual else fused


class TextGuidedVisualRefinement(nn.Module):
    """TGVR: refine the decoder's content queries k with the prompt.

    ``"concat"`` (eq. 3): ``E_X^I = P([k || CrossAttn(k, P(E_E^T), P(E_E^T))])``.
    ``"gate"`` (authors' code): ``a = CrossAttn(...)``, ``g = sigmoid(MLP([k || a]))``, ``(1 - g) * k + g * a``.

    Args:
        d_model: query width M.
        text_dim: text width N.
        num_heads: attention heads.
        mode: ``"concat"`` or ``"gate"``.
    """

    def __init__(self, d_model: int, text_dim: int, num_heads: int, mode: str = "concat") -> None:
        super().__init__()
        self.mode = mode
        self.text_proj = nn.Linear(text_dim, d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        if mode == "concat":
            self.combined_proj = nn.Linear(2 * d_model, d_model)
        elif mode == "gate":
            self.gate_mlp = nn.Sequential(
                nn.Linear(2 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model)
            )
        else:
            raise ValueError(f"TGVR mode must be 'concat' or 'gate', got {mode!r}")

    def forward(self, queries: Tensor, text_states: Tensor, text_mask: Tensor | None) -> Tensor:
        """``queries`` (B, Q, M), ``text_states`` (B, L, N), ``text_mask`` (B, L) 1 = token -> (B, Q, M)."""
        text = self.text_proj(text_states)
        attended = self.cross_attn(
            queries, text, text, key_padding_mask=_key_padding(text_mask), need_weights=False
        )[0]
        joint = torch.cat((queries, attended.to(queries.dtype)), dim=-1)
        if self.mode == "concat":
            return self.combined_proj(joint)
        gate = torch.sigmoid(self.gate_mlp(joint))
        return (1 - gate) * queries + gate * attended

    def refiner(self, text_states: Tensor, text_mask: Tensor | None) -> Callable[[Tensor], Tensor]:
        """A ``query_refiner`` for :class:`~unihema.model.image_decoder.ImageDecoder` bound to one prompt batch."""

        def refine(queries: Tensor) -> Tensor:
            return self(queries, text_states, text_mask)

        return refine


class SingleCellFeatureExtractor(nn.Module):
    """SCFE: E_Z = P([q || pool(E_E^I)] (+ extra backbone summary)).

    ``pooling="mean"`` (the paper) averages the encoder tokens, ignoring padding; the learned query q then
    acts as a learned bias of the projection (the authors' "cls token" never attends to anything either).
    ``pooling="attention"`` lets q attend to the encoder tokens (multi-head attention, padding masked), so
    it reads what the tokens hold instead of their average. Why this matters: the input projection ends
    in GroupNorm, which removes each image's per-channel spatial mean, so the mean of the tokens carries
    almost nothing that tells one cell from another (``docs/training.md``).

    ``inputs``: ``"encoder_mean"`` (the paper), ``"encoder_mean+backbone"`` (also the mean of the projected
    level-0 backbone tokens) or ``"encoder_mean+backbone_c5"`` (also the mean of the raw, un-normalised
    last backbone level: the ablation's "backbone + SCFE features" without the GroupNorm in between).

    Args:
        d_model: width M.
        inputs: one of :data:`SCFE_INPUTS`.
        pooling: one of :data:`SCFE_POOLINGS`.
        num_heads: heads of the attention pooling.
        backbone_channels: channels of the last backbone level (``"encoder_mean+backbone_c5"`` only).
    """

    def __init__(
        self,
        d_model: int,
        inputs: str = "encoder_mean",
        pooling: str = "mean",
        num_heads: int = 8,
        backbone_channels: int | None = None,
    ) -> None:
        super().__init__()
        if inputs not in SCFE_INPUTS:
            raise ValueError(f"SCFE inputs must be one of {SCFE_INPUTS}, got {inputs!r}")
        if pooling not in SCFE_POOLINGS:
            raise ValueError(f"SCFE pooling must be one of {SCFE_POOLINGS}, got {pooling!r}")
        if inputs == "encoder_mean+backbone_c5" and not backbone_channels:
            raise ValueError("SCFE inputs 'encoder_mean+backbone_c5' needs backbone_channels")
        self.inputs = inputs
        self.pooling = pooling
        self.query = nn.Parameter(torch.randn(d_model) * QUERY_INIT_STD)
        self.attention = (
            nn.MultiheadAttention(d_model, num_heads, batch_first=True) if pooling == "attention" else None
        )
        self.backbone_proj = (
            nn.Linear(backbone_channels, d_model) if inputs == "encoder_mean+backbone_c5" else None
        )
        parts = 2 if inputs == "encoder_mean" else 3
        self.proj = nn.Linear(parts * d_model, d_model)

    def forward(
        self,
        memory: Tensor,
        padding_mask: Tensor | None,
        backbone_tokens: Tensor | None = None,
        backbone_padding: Tensor | None = None,
    ) -> Tensor:
        """``memory`` (B, S, M) encoder tokens -> (B, M).

        ``backbone_tokens``: level-0 projected tokens (B, S0, M) for ``"encoder_mean+backbone"``, raw last
        backbone level tokens (B, S5, C5) for ``"encoder_mean+backbone_c5"``; ``backbone_padding`` their
        padding mask.
        """
        query = self.query.to(memory.dtype)
        if self.attention is None:
            pooled = masked_mean(memory, padding_mask)
        else:
            q = query.expand(memory.shape[0], 1, -1)
            pooled = self.attention(q, memory, memory, key_padding_mask=padding_mask, need_weights=False)[0]
            pooled = pooled[:, 0]
        parts = [query.expand_as(pooled), pooled]
        if self.inputs != "encoder_mean":
            if backbone_tokens is None:
                raise ValueError(f"SCFE with inputs={self.inputs!r} needs backbone_tokens")
            summary = masked_mean(backbone_tokens, backbone_padding).to(pooled.dtype)
            parts.append(summary if self.backbone_proj is None else self.backbone_proj(summary))
        return self.proj(torch.cat(parts, dim=-1))


class QueryGuidedMaskFormer(nn.Module):
    """QGMF: a binary mask from one decoder query and the stride-8 pixel features (eqs. 4-5).

    - Pixel embedding: ``G_proj = proj(lateral(F_1) + E_E^I[level 0])`` with F_1 the backbone's C3 map
      (stride 8), ``lateral`` a 1x1 conv to width M and ``proj`` conv 3x3 + GroupNorm + ReLU + conv 1x1.
    - Query embedding (eq. 4): ``P(MLP(E_D^I[q]))`` of the final decoder layer.
    - Mask logits (eq. 5): the per-pixel dot product (einsum over channels), stride 8.
    - :class:`~unihema.model.heads.BinaryMaskHead` upsamples to ``output size`` (the input size, or a fixed
      size when configured).

    Which query: ``"first"`` follows the paper ("the mask associated with the first embedding"). The
    decoder's queries are its top-K encoder proposals in descending score order, so the first query is the
    most object-like proposal; its state is conditioned on the prompt through TGVR and gathers context
    from the whole image through decoder self-attention. ``"top_scoring"`` instead picks the query with
    the highest final-layer class score.

    Args:
        d_model: width M.
        c3_channels: channels of the backbone's C3 map.
        mlp_layers: layers of the eq.-4 MLP.
        upsampler_channels: stage widths of the upsampler.
        query: ``"first"`` or ``"top_scoring"``.
    """

    def __init__(
        self,
        d_model: int,
        c3_channels: int,
        mlp_layers: int = 3,
        upsampler_channels: tuple[int, ...] = (128, 64, 32),
        query: str = "first",
    ) -> None:
        super().__init__()
        if query not in ("first", "top_scoring"):
            raise ValueError(f"QGMF query must be 'first' or 'top_scoring', got {query!r}")
        self.query = query
        self.lateral = nn.Conv2d(c3_channels, d_model, kernel_size=1)
        self.pixel_proj = nn.Sequential(
            nn.Conv2d(d_model, d_model, kernel_size=3, padding=1),
            nn.GroupNorm(groupnorm_groups(d_model), d_model),
            nn.ReLU(inplace=True),
            nn.Conv2d(d_model, d_model, kernel_size=1),
        )
        self.query_mlp = MLP(d_model, d_model, d_model, mlp_layers)
        self.query_proj = nn.Linear(d_model, d_model)
        self.upsampler = BinaryMaskHead(d_model, upsampler_channels)

    def select(self, hidden_states: Tensor, logits: Tensor | None) -> Tensor:
        """The mask query's state (B, M) from final-layer states (B, Q, M) (and logits (B, Q, C))."""
        if self.query == "first":
            return hidden_states[:, 0]
        if logits is None:
            raise ValueError("QGMF query='top_scoring' needs the decoder's class logits")
        index = logits.max(dim=-1).values.argmax(dim=1)
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), index]

    def forward(
        self,
        c3: Tensor,
        encoder_level0: Tensor,
        hidden_states: Tensor,
        logits: Tensor | None,
        output_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """Masks.

        Args:
            c3: backbone C3 (B, C3, h, w).
            encoder_level0: encoder tokens of level 0 as a map (B, M, h, w).
            hidden_states: final decoder states E_D^I (B, Q, M).
            logits: final decoder class logits (B, Q, C), used by ``"top_scoring"``.
            output_size: (H, W) of the returned mask.

        Returns:
            ``(masks (B, 1, H, W), low-resolution masks (B, 1, h, w))``, logits.
        """
        pixels = self.pixel_proj(self.lateral(c3) + encoder_level0.to(c3.dtype))
        query = self.query_proj(self.query_mlp(self.select(hidden_states, logits)))
        low = torch.einsum("bc,bchw->bhw", query.to(pixels.dtype), pixels).unsqueeze(1)
        return self.upsampler(pixels, low, output_size), low


class UpstreamMaskUpsampler(nn.Module):
    """The authors' learnable upsampler (key layout ``fusion_conv.*`` / ``upsample.*`` as theirs).

    ``fusion_conv``: the two pixel branches (2M channels) -> two conv 3x3 + BatchNorm + ReLU blocks (M).
    ``upsample``: the query-mask logits are appended as one more channel, then each entry of ``channels``
    is one stage (x2 bilinear, conv 3x3 + BatchNorm + ReLU) and a final conv 3x3 gives one channel, which
    is resized to the output size. No residual to the query mask.

    Args:
        d_model: width M of each pixel branch.
        channels: output channels of each x2 stage (the authors': 128, 64).
    """

    def __init__(self, d_model: int, channels: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        if not channels:
            raise ValueError("UpstreamMaskUpsampler needs at least one x2 stage")
        self.fusion_conv = nn.Sequential(
            nn.Conv2d(2 * d_model, d_model, kernel_size=3, padding=1),
            nn.BatchNorm2d(d_model),
            nn.ReLU(inplace=True),
            nn.Conv2d(d_model, d_model, kernel_size=3, padding=1),
            nn.BatchNorm2d(d_model),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        width = d_model + 1
        for out in channels:
            stages += [
                nn.Upsample(scale_factor=UPSAMPLE_FACTOR, mode="bilinear", align_corners=False),
                nn.Conv2d(width, out, kernel_size=3, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            width = out
        stages.append(nn.Conv2d(width, 1, kernel_size=3, padding=1))
        self.upsample = nn.Sequential(*stages)

    def forward(
        self, encoder_pixels: Tensor, backbone_pixels: Tensor, query_mask: Tensor, size: tuple[int, int]
    ) -> Tensor:
        """Pixel branches (B, M, h, w) each, ``query_mask`` (B, 1, h, w) logits -> (B, 1, *size) logits."""
        fused = self.fusion_conv(torch.cat((encoder_pixels, backbone_pixels), dim=1))
        x = self.upsample(torch.cat((fused, query_mask.to(fused.dtype)), dim=1))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UpstreamQueryGuidedMaskFormer(nn.Module):
    """QGMF as in the authors' code (``hemaformer.qgmf_style = "upstream"``), for their weights.

    - Encoder pixel branch: ``ReLU(Linear(E_E^I))`` on the level-0 encoder tokens (stride 8).
    - Backbone pixel branch: a 1x1 conv on the input-projected C3 map (the first level of E_B^I), not on
      the raw backbone C3 as :class:`QueryGuidedMaskFormer`.
    - Pixel embedding: the sum of both branches; query embedding: ``MLP(LayerNorm(E_D^I[q]))``; the mask
      logits are their per-pixel dot product (stride 8).
    - :class:`UpstreamMaskUpsampler` reads both branches (concatenated) and the query mask.

    Args:
        d_model: width M.
        mlp_layers: layers of the query-embedding MLP.
        upsampler_channels: stage widths of the upsampler.
        query: ``"first"`` or ``"top_scoring"`` (see :class:`QueryGuidedMaskFormer`).
    """

    def __init__(
        self,
        d_model: int,
        mlp_layers: int = 3,
        upsampler_channels: tuple[int, ...] = (128, 64),
        query: str = "first",
    ) -> None:
        super().__init__()
        if query not in ("first", "top_scoring"):
            raise ValueError(f"QGMF query must be 'first' or 'top_scoring', got {query!r}")
        self.query = query
        self.encoder_proj = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(inplace=True))
        self.backbone_proj = nn.Conv2d(d_model, d_model, kernel_size=1)
        self.query_norm = nn.LayerNorm(d_model)
        self.query_mlp = MLP(d_model, d_model, d_model, mlp_layers)
        self.upsampler = UpstreamMaskUpsampler(d_model, tuple(upsampler_channels))

    select = QueryGuidedMaskFormer.select

    def forward(
        self,
        projected_c3: Tensor,
        encoder_level0: Tensor,
        hidden_states: Tensor,
        logits: Tensor | None,
        output_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """Masks.

        Args:
            projected_c3: level 0 of the input projection (B, M, h, w).
            encoder_level0: encoder tokens of level 0 as a map (B, M, h, w).
            hidden_states: final decoder states E_D^I (B, Q, M).
            logits: final decoder class logits (B, Q, C), used by ``"top_scoring"``.
            output_size: (H, W) of the returned mask.

        Returns:
            ``(masks (B, 1, H, W), low-resolution masks (B, 1, h, w))``, logits.
        """
        encoder_pixels = self.encoder_proj(encoder_level0.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        backbone_pixels = self.backbone_proj(projected_c3.to(encoder_pixels.dtype))
        pixels = encoder_pixels + backbone_pixels
        query = self.query_mlp(self.query_norm(self.select(hidden_states, logits)))
        low = torch.einsum("bc,bchw->bhw", query.to(pixels.dtype), pixels).unsqueeze(1)
        return self.upsampler(encoder_pixels, backbone_pixels, low, output_size), low
