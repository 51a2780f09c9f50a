"""Task heads. The box and class heads are shared by the decoder layers and live in
:class:`unihema.model.image_decoder.ImageDecoder`; this module adds the rest:

- :class:`AttributeHead`: generic morphology-attribute head for any attribute schema
  (:data:`unihema.data.vocab.FOV_ATTRIBUTES` per box, :data:`unihema.data.vocab.CELL_ATTRIBUTES` per cell).
  Every attribute with ``k`` values gets ``k`` logits (binary attributes get 2), trained with a softmax
  cross-entropy per attribute and decoded with an argmax over the same ``k`` logits, so training and
  inference agree (the authors trained a sigmoid loss and decoded with a softmax);
- :class:`CellClassHead`: single-cell class MLP on the SCFE vector;
- :class:`BinaryMaskHead`: the learnable upsampler of the QGMF that turns the stride-8 query mask and
  the pixel embedding into a full-resolution binary-mask logit map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unihema.model.backbone import groupnorm_groups

AttributeSchema = Sequence[tuple[str, Sequence[str]]]
# Negative slope of the cell-class MLP activations (as the authors' image classifier).
LEAKY_SLOPE = 0.01
# Each upsampler stage doubles the resolution.
UPSAMPLE_FACTOR = 2


def attribute_slices(schema: AttributeSchema) -> dict[str, slice]:
    """Slice of each attribute's logits in the flat logit vector of an :class:`AttributeHead`."""
    slices: dict[str, slice] = {}
    start = 0
    for name, values in schema:
        if len(values) < 2:
            raise ValueError(f"attribute {name!r} needs at least 2 values, got {len(values)}")
        if name in slices:
            raise ValueError(f"attribute {name!r} appears twice in the schema")
        slices[name] = slice(start, start + len(values))
        start += len(values)
    return slices


class AttributeHead(nn.Module):
    """Logits for every attribute of ``schema`` from features of width ``d_model``.

    Args:
        d_model: input width.
        schema: ``((attribute name, (value names...)), ...)``.
        hidden_dim: width of one hidden ReLU layer, or 0 for a single linear layer.

    Attributes:
        slices: attribute name -> slice of the flat logits (``len(values)`` logits each).
        num_logits: total number of logits.
    """

    def __init__(self, d_model: int, schema: AttributeSchema, hidden_dim: int = 0) -> None:
        super().__init__()
        self.schema = tuple((name, tuple(values)) for name, values in schema)
        self.slices = attribute_slices(self.schema)
        self.num_logits = sum(len(values) for _, values in self.schema)
        if hidden_dim > 0:
            self.mlp = nn.Sequential(
                nn.Linear(d_model, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, self.num_logits)
            )
        else:
            self.mlp = nn.Sequential(nn.Linear(d_model, self.num_logits))

    def forward(self, features: Tensor) -> Tensor:
        """``(..., d_model)`` -> flat logits ``(..., num_logits)``."""
        return self.mlp(features)

    def split(self, logits: Tensor) -> dict[str, Tensor]:
        """Flat logits ``(..., num_logits)`` -> ``{attribute: (..., len(values))}``."""
        return {name: logits[..., s] for name, s in self.slices.items()}


class CellClassHead(nn.Module):
    """MLP ``d_model -> hidden_dims... -> num_classes`` with LeakyReLU and dropout between layers."""

    def __init__(
        self, d_model: int, num_classes: int, hidden_dims: Sequence[int] = (256, 128), dropout: float = 0.1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = d_model
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(LEAKY_SLOPE), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, d_model)`` -> class logits ``(B, num_classes)``."""
        return self.mlp(features)


class BinaryMaskHead(nn.Module):
    """Learnable upsampler from a stride-``2**len(channels)`` map to a binary-mask logit map.

    The input is the pixel embedding concatenated with the low-resolution query mask logits. Each stage
    doubles the resolution (bilinear) and applies conv 3x3 + GroupNorm + ReLU; a 1x1 conv gives one
    channel, which is resized to the requested output size and added to the bilinearly resized query
    mask. The residual keeps the output tied to the query mask (the upsampler refines edges instead of
    segmenting on its own from the pixel features).

    Args:
        in_channels: channels of the pixel embedding (the query mask adds one more).
        channels: output channels of each x2 stage.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (128, 64, 32)) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        width = in_channels + 1
        for out in channels:
            stages.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=UPSAMPLE_FACTOR, mode="bilinear", align_corners=False),
                    nn.Conv2d(width, out, kernel_size=3, padding=1),
                    nn.GroupNorm(groupnorm_groups(out), out),
                    nn.ReLU(inplace=True),
                )
            )
            width = out
        self.stages = nn.Sequential(*stages)
        self.out = nn.Conv2d(width, 1, kernel_size=1)
        # Start as the plain interpolation of the query mask; the refinement is learned.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, pixel_embedding: Tensor, query_mask: Tensor, size: tuple[int, int]) -> Tensor:
        """``pixel_embedding`` (B, C, h, w), ``query_mask`` (B, 1, h, w) logits -> (B, 1, *size) logits."""
        # Autocast may hand the two inputs in different dtypes.
        x = self.stages(torch.cat((pixel_embedding, query_mask.to(pixel_embedding.dtype)), dim=1))
        refined = F.interpolate(self.out(x), size=size, mode="bilinear", align_corners=False)
        return refined + F.interpolate(query_mask, size=size, mode="bilinear", align_corners=False)
