"""Multi-scale deformable attention (Deformable-DETR's MSDeformAttn) in pure PyTorch.

Two implementations of the sampling core give the same result (``tests/model/test_deformable.py`` pins
both to an explicit bilinear loop):

- :func:`ms_deform_attn_gather`, for inference: the four neighbouring cells of every sample are looked
  up in a zero-bordered value table and summed with their bilinear weights times the attention weight
  in one ``torch.nn.functional.embedding_bag`` call, so no (B*M, D, Q, L*P) intermediate is written;
- :func:`ms_deform_attn_grid_sample`, for training: ``torch.nn.functional.grid_sample`` per level (zero
  padding, ``align_corners=False``), then the weighted sum; its backward is the faster one. ONNX export
  traces it too (``GridSample`` is an ONNX op; ``embedding_bag`` has no compact translation).

:func:`ms_deform_attn` picks between them.

Neither needs a compiled kernel. The parameterisation is the same as Deformable-DETR/DINO, so the
authors' weights map key by key (``<a>`` = ``self_attn`` in encoder layers, ``cross_attn`` in decoder
layers):

- ``transformer.{encoder,decoder}.layers.{i}.<a>.{sampling_offsets,attention_weights,value_proj,output_proj}.*``
  -> ``<a>.<same>.*``

Shapes: B batch, Q queries, S = sum_l h_l * w_l value tokens, M heads, D = d_model / M channels per
head, L levels, P points per level and head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Low-precision inputs are sampled in float32: bf16 sampling coordinates are off by up to ~0.4 % of
# the map extent, a visible fraction of a cell on a 100-cell level.
_SAMPLING_DTYPE = torch.float32
# The gather path's zero border around each level: one cell before, two after, on both axes. Sample
# coordinates are clamped to [-1, size] cells, so every corner then reads a real cell or a zero.
_BORDER_BEFORE, _BORDER_AFTER = 1, 2
_INT32_MAX = 2**31 - 1


def _level_sizes(spatial_shapes: Tensor) -> list[tuple[int, int]]:
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def _check_core_inputs(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> list[tuple[int, int]]:
    """Validate the shapes of the core's arguments; returns the (h, w) of each level."""
    if value.dim() != 4:
        raise ValueError(f"value must be (B, S, M, D), got {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations must be (B, Q, M, L, P, 2), got {tuple(sampling_locations.shape)}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights {tuple(attention_weights.shape)} must match sampling_locations "
            f"{tuple(sampling_locations.shape[:-1])}"
        )
    sizes = _level_sizes(spatial_shapes)  # one host sync per call
    num_tokens = sum(h * w for h, w in sizes)
    if num_tokens != value.shape[1]:
        raise ValueError(f"spatial_shapes cover {num_tokens} tokens but value has {value.shape[1]}")
    if spatial_shapes.shape[0] != sampling_locations.shape[3]:
        raise ValueError(
            f"spatial_shapes has {spatial_shapes.shape[0]} levels, sampling_locations {sampling_locations.shape[3]}"
        )
    return sizes


def _compute_dtype(value: Tensor, sampling_locations: Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), _SAMPLING_DTYPE)


def ms_deform_attn(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Weighted sum of bilinearly sampled values at multi-scale locations.

    Args:
        value: (B, S, M, D) per-head values, levels concatenated in ``spatial_shapes`` order.
        spatial_shapes: (L, 2) long, (h, w) of each level.
        sampling_locations: (B, Q, M, L, P, 2) (x, y) in [0, 1] of each level's extent
            (0 and 1 are the outer edges of the border cells; outside samples read zeros).
        attention_weights: (B, Q, M, L, P), usually softmax-normalised over (L, P).

    Returns:
        (B, Q, M * D) in the dtype of ``value``. Runs :func:`ms_deform_attn_gather` when no gradient is
        recorded (inference), else :func:`ms_deform_attn_grid_sample`, whose backward is about 1.8x
        faster than ``embedding_bag``'s (``docs/benchmarks.md``); also while an ONNX export traces the model.
    """
    args = (value, spatial_shapes, sampling_locations, attention_weights)
    records_gradient = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    if records_gradient or torch.onnx.is_in_onnx_export():
        return ms_deform_attn_grid_sample(*args)
    return ms_deform_attn_gather(*args)


def ms_deform_attn_gather(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """:func:`ms_deform_attn` as one weighted gather (``embedding_bag``) over a zero-bordered value table.

    Each sample's four neighbouring cells and their weights (bilinear weight times attention weight) are
    computed on the (B, Q, M, L, P) grid, then ``embedding_bag`` sums the L*P*4 weighted rows of every
    (query, head) into its output row. Differentiable in all three tensor arguments.
    """
    sizes = _check_core_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    out_dtype = value.dtype
    dtype = _compute_dtype(value, sampling_locations)
    device = value.device
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    pad = _BORDER_BEFORE + _BORDER_AFTER
    border = (0, 0, _BORDER_BEFORE, _BORDER_AFTER, _BORDER_BEFORE, _BORDER_AFTER)
    value_levels = value.to(dtype).split([h * w for h, w in sizes], dim=1)
    table = torch.cat(
        [
            F.pad(level.reshape(batch, h, w, heads * dim), border).view(batch, -1, heads, dim)
            for level, (h, w) in zip(value_levels, sizes, strict=True)
        ],
        dim=1,
    )  # (B, S', M, D): the flattened table's row of (b, s, m) is (b * S' + s) * M + m
    rows_per_image = table.shape[1] * heads
    index_dtype = torch.int32 if batch * rows_per_image <= _INT32_MAX else torch.int64

    extent = torch.tensor(sizes, dtype=dtype, device=device)
    height, width = extent[:, 0, None], extent[:, 1, None]  # (L, 1): broadcast over P
    # Pixel coordinates (cell centres at half-integers), clamped so that far-outside samples land in the
    # border; `where` also sends NaN there, which then reads zeros as grid_sample does.
    locations = sampling_locations.to(dtype)
    x = locations[..., 0] * width - 0.5
    y = locations[..., 1] * height - 0.5
    x = torch.where(x > -1, x, -1.0).minimum(width)
    y = torch.where(y > -1, y, -1.0).minimum(height)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    weight_y = torch.stack((1 - fy, fy), dim=-1) * attention_weights.to(dtype)[..., None]
    weight_x = torch.stack((1 - fx, fx), dim=-1)
    weights = weight_y[..., :, None] * weight_x[..., None, :]  # (B, Q, M, L, P, 2, 2) as (dy, dx)

    padded_widths = [w + pad for _, w in sizes]
    starts = [0]
    for h, w in sizes[:-1]:
        starts.append(starts[-1] + (h + pad) * (w + pad))
    level_width = torch.tensor(padded_widths, dtype=index_dtype, device=device)[:, None]
    level_start = torch.tensor(starts, dtype=index_dtype, device=device)[:, None]
    token = (
        level_start
        + (y0.to(index_dtype) + _BORDER_BEFORE) * level_width
        + x0.to(index_dtype)
        + _BORDER_BEFORE
    )
    image_row = torch.arange(batch, dtype=index_dtype, device=device).view(batch, 1, 1, 1, 1) * rows_per_image
    head_row = torch.arange(heads, dtype=index_dtype, device=device).view(1, 1, heads, 1, 1)
    top_left = token * heads + (image_row + head_row)
    # Table-row offsets of the four corners (dy, dx) on each level: (L, 2, 2).
    corners = torch.tensor(
        [[[0, heads], [w * heads, (w + 1) * heads]] for w in padded_widths], dtype=index_dtype, device=device
    )
    index = top_left[..., None, None] + corners[:, None]
    samples = levels * points * 4
    output = F.embedding_bag(
        index.view(-1, samples), table.view(-1, dim), per_sample_weights=weights.view(-1, samples), mode="sum"
    )
    return output.view(batch, queries, heads * dim).to(out_dtype)


def ms_deform_attn_grid_sample(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """:func:`ms_deform_attn` with ``grid_sample`` per level (the path ONNX export traces)."""
    sizes = _check_core_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    out_dtype = value.dtype
    compute_dtype = _compute_dtype(value, sampling_locations)
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value_levels = value.to(compute_dtype).split([h * w for h, w in sizes], dim=1)
    # grid_sample expects coordinates in [-1, 1] for the outer edges (align_corners=False).
    grids = (2 * sampling_locations.to(compute_dtype) - 1).transpose(1, 2).flatten(0, 1)
    weights = (
        attention_weights.to(compute_dtype).transpose(1, 2).reshape(batch * heads, 1, queries, levels, points)
    )
    # Each level's samples are weighted and summed as they come: stacking the levels first would copy
    # the largest intermediate (B*M, D, Q, L*P) once more, a third of the forward time on the encoder.
    output = None
    for level, (h, w) in enumerate(sizes):
        # (B, S_l, M, D) -> (B*M, D, h, w)
        value_map = value_levels[level].permute(0, 2, 3, 1).reshape(batch * heads, dim, h, w)
        # (B*M, Q, P, 2) -> (B*M, D, Q, P)
        sampled = F.grid_sample(
            value_map, grids[:, :, level], mode="bilinear", padding_mode="zeros", align_corners=False
        )
        term = (sampled * weights[..., level, :]).sum(-1)
        output = term if output is None else output + term
    output = output.view(batch, heads * dim, queries)
    return output.transpose(1, 2).contiguous().to(out_dtype)


def ms_deform_attn_reference(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Slow loop version of :func:`ms_deform_attn` for testing (same arguments and result).

    Each sample is interpolated explicitly from its four neighbouring cells: pixel coordinates are
    ``x * w - 0.5`` (cell centres at half-integers, ``align_corners=False``) and cells outside the
    map contribute zero. Differentiable with respect to ``value`` and ``attention_weights`` only.
    """
    sizes = _check_core_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    locations = sampling_locations.detach().cpu().double()
    starts = [0]
    for h, w in sizes[:-1]:
        starts.append(starts[-1] + h * w)
    output = value.new_zeros(batch, queries, heads, dim)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                for lvl, (h, w) in enumerate(sizes):
                    for p in range(points):
                        x = float(locations[b, q, m, lvl, p, 0]) * w - 0.5
                        y = float(locations[b, q, m, lvl, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = value.new_zeros(dim)
                        for yi, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                            for xi, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                                if 0 <= yi < h and 0 <= xi < w:
                                    sample = sample + wy * wx * value[b, starts[lvl] + yi * w + xi, m]
                        output[b, q, m] += attention_weights[b, q, m, lvl, p] * sample
    return output.flatten(2)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over a multi-scale feature pyramid.

    Each query predicts, per head, ``num_points`` sampling offsets on each of ``num_levels`` levels
    around its reference point, plus softmax attention weights over those L*P samples.

    Args:
        d_model: channels of queries and values; divisible by ``num_heads``.
        num_heads: attention heads M.
        num_levels: feature levels L.
        num_points: sampling points P per head and level.
    """

    def __init__(self, d_model: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if d_model <= 0 or num_heads <= 0 or num_levels <= 0 or num_points <= 0:
            raise ValueError(
                "MultiScaleDeformableAttention sizes must be positive, got "
                f"d_model={d_model}, num_heads={num_heads}, num_levels={num_levels}, num_points={num_points}"
            )
        if d_model % num_heads:
            raise ValueError(
                f"MultiScaleDeformableAttention d_model {d_model} not divisible by num_heads {num_heads}"
            )
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR initialisation: offsets start on rays around the reference point, one
        direction per head, point k at distance k+1 (in cells); uniform attention weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        grid = directions[:, None, None, :].repeat(1, self.num_levels, self.num_points, 1)
        grid *= torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        value_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``query`` (B, Q, d) to ``value`` (B, S, d).

        Args:
            reference_points: (B, Q, L, 2) normalised (x, y) per level, or (B, Q, L, 4) boxes
                (cx, cy, w, h): offsets are then scaled by half the box size / num_points.
            spatial_shapes: (L, 2) long (h, w) per level; ``level_start_index`` (L,) their offsets in S
                (kept for API parity with the compiled kernel; the levels are split from ``spatial_shapes``).
            value_padding_mask: (B, S) bool, True on padded tokens (their values are zeroed).

        Returns:
            (B, Q, d).
        """
        batch, queries, _ = query.shape
        _, tokens, _ = value.shape
        if spatial_shapes.shape != (self.num_levels, 2):
            raise ValueError(
                f"spatial_shapes must be ({self.num_levels}, 2), got {tuple(spatial_shapes.shape)}"
            )
        if reference_points.shape[:3] != (batch, queries, self.num_levels) or reference_points.shape[
            -1
        ] not in (2, 4):
            raise ValueError(
                f"reference_points must be ({batch}, {queries}, {self.num_levels}, 2 or 4), "
                f"got {tuple(reference_points.shape)}"
            )
        heads, levels, points = self.num_heads, self.num_levels, self.num_points

        value = self.value_proj(value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(batch, tokens, heads, self.d_model // heads)

        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, queries, heads, levels, points)

        if reference_points.shape[-1] == 2:
            # Offsets are in cells of each level: normalise by (w, h).
            normalizer = spatial_shapes.flip(-1).to(offsets.dtype)
            locations = (
                reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
            )
        else:
            centers = reference_points[:, :, None, :, None, :2]
            half_sizes = reference_points[:, :, None, :, None, 2:] * 0.5
            locations = centers + offsets / points * half_sizes
        output = ms_deform_attn(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
