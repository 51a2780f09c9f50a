"""Image backbone **B**: a torchvision ResNet, the input projection to the transformer width and the
sine position encoding of feature maps.

Correspondence with the authors' checkpoint (``upstream-state-dict.tsv``), for the ``paper`` preset
(ResNet-50, d = 256, 4 levels); ``<b>``/``<p>`` are the attribute names under which the composition
holds a :class:`ResNetBackbone` / :class:`InputProjection`:

- ``backbone.0.body.<torchvision resnet key>`` -> ``<b>.body.<same key>`` (no ``fc.*``)
- ``input_proj.{l}.0.{weight,bias}`` (conv) -> ``<p>.levels.{l}.0.{weight,bias}``
- ``input_proj.{l}.1.{weight,bias}`` (GroupNorm) -> ``<p>.levels.{l}.1.{weight,bias}``

:class:`SinePositionEncoding` has no parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models
from torchvision.ops import FrozenBatchNorm2d

from unihema.model.config_sections import PRETRAINED_TRAINABLE_LAYERS

# ResNet variant -> (constructor, ImageNet weights enum, channels of C3/C4/C5).
_RESNETS = {
    18: (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, [128, 256, 512]),
    34: (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, [128, 256, 512]),
    50: (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1, [512, 1024, 2048]),
}
SUPPORTED_DEPTHS = tuple(sorted(_RESNETS))
# Output strides of C3, C4, C5 (layer2, layer3, layer4).
RESNET_STRIDES = [8, 16, 32]
IMAGENET_WEIGHTS = "imagenet"
# Trainable stages counted from the top: trainable_layers = k trains the first k of these.
_STAGES_TOP_DOWN = ("layer4", "layer3", "layer2", "layer1", "stem")
_STEM_MODULES = ("conv1", "bn1")
# Keys of a torchvision ResNet state dict that the backbone does not use (classification head).
_CLASSIFIER_PREFIX = "fc."
# Wrapper keys under which training scripts commonly nest a state dict.
_NESTED_STATE_KEYS = ("state_dict", "model")
MAX_GROUPNORM_GROUPS = 32


def _load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """Read a tensor state dict from ``.safetensors`` or a ``torch.save`` file without unpickling code."""
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors carry no file name
            raise ValueError(
                f"cannot read backbone weights {path}: expected a tensor state dict saved with torch.save "
                f"or safetensors ({exc})"
            ) from exc
    if isinstance(state, dict):
        for key in _NESTED_STATE_KEYS:
            if set(state) == {key} and isinstance(state[key], dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"backbone weights {path}: expected a mapping of parameter names to tensors")
    return {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIX)}


class _ResNetBody(nn.Module):
    """The convolutional part of a torchvision ResNet (no pooling/classifier), keeping its key names."""

    def __init__(self, resnet: models.ResNet) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


CHANNELS_LAST_MIN_PIXELS = 256 * 256
"""Inputs with more pixels than this run the backbone channels-last: on a CPU it is slower on small inputs
(the demo's 128 px fields and 64 px crops), level at 256x256 and faster above ("Backbone memory layout" in
``docs/benchmarks.md``, from ``benchmarks/bench_backbone_layout.py``)."""


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groupnorm_groups(channels), channels)


_NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "frozen_bn": FrozenBatchNorm2d,
    "bn": nn.BatchNorm2d,
    "gn": _group_norm,
}
BACKBONE_NORMS: tuple[str, ...] = tuple(_NORM_LAYERS)


class ResNetBackbone(nn.Module):
    """ResNet feature extractor returning C3, C4, C5 (strides 8, 16, 32).

    Args:
        depth: ResNet depth, one of 18, 34, 50 (C3/C4/C5 channels 128/256/512 or 512/1024/2048).
        weights: ``None`` for random initialisation (nothing is downloaded); a path to a torchvision
            ResNet state dict (``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, or
            ``.safetensors``; ``fc.*`` keys are ignored); or ``"imagenet"`` for torchvision's
            ``ResNet{depth}_Weights.IMAGENET1K_V1`` (may download, only when asked for explicitly).
        trainable_layers: how many stages are trained, counted from the top: 0 freezes everything,
            3 (default, as DINO) trains layer2-4 and freezes the stem and layer1, 5 trains all.
        norm: normalisation layers of the ResNet (:data:`BACKBONE_NORMS`): ``"frozen_bn"``
            (``torchvision.ops.FrozenBatchNorm2d``: statistics and affine are buffers; for pretrained
            weights), ``"bn"`` (ordinary BatchNorm; the norms of frozen stages are kept in eval mode) or
            ``"gn"`` (GroupNorm, independent of the batch: the choice for training from scratch with
            small or distributed batches).

    Attributes:
        out_channels: channels of C3, C4, C5.
        strides: output strides of C3, C4, C5.
    """

    def __init__(
        self,
        depth: int = 50,
        weights: str | Path | None = None,
        trainable_layers: int = PRETRAINED_TRAINABLE_LAYERS,
        norm: str = "frozen_bn",
    ) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNetBackbone depth must be one of {SUPPORTED_DEPTHS}, got {depth!r}")
        if not 0 <= trainable_layers <= len(_STAGES_TOP_DOWN):
            raise ValueError(
                f"ResNetBackbone trainable_layers must be in [0, {len(_STAGES_TOP_DOWN)}], got {trainable_layers}"
            )
        builder, imagenet_weights, channels = _RESNETS[depth]
        if norm not in BACKBONE_NORMS:
            raise ValueError(f"ResNetBackbone norm must be one of {BACKBONE_NORMS}, got {norm!r}")
        norm_layer = _NORM_LAYERS[norm]
        if isinstance(weights, str) and weights == IMAGENET_WEIGHTS:
            resnet = builder(weights=imagenet_weights, norm_layer=norm_layer)
        else:
            resnet = builder(weights=None, norm_layer=norm_layer)
            if weights is not None:
                path = Path(weights)
                state = _load_state_dict_file(path)
                try:
                    missing, unexpected = resnet.load_state_dict(state, strict=False)
                except RuntimeError as exc:  # shape mismatches
                    raise ValueError(f"backbone weights {path} do not fit a ResNet-{depth}: {exc}") from exc
                missing = [k for k in missing if not k.startswith(_CLASSIFIER_PREFIX)]
                if missing or unexpected:
                    raise ValueError(
                        f"backbone weights {path} do not fit a ResNet-{depth}: "
                        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                        f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
                    )
        self.body = _ResNetBody(resnet)
        self.depth = depth
        self.out_channels: list[int] = list(channels)
        self.strides: list[int] = list(RESNET_STRIDES)
        self.trainable_layers = trainable_layers

        trainable = set(_STAGES_TOP_DOWN[:trainable_layers])
        self._frozen_modules: list[nn.Module] = []
        for stage in _STAGES_TOP_DOWN:
            names = _STEM_MODULES if stage == "stem" else (stage,)
            for name in names:
                module = getattr(self.body, name)
                if stage not in trainable:
                    module.requires_grad_(False)
                    self._frozen_modules.append(module)

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        # A frozen stage must not drift through BatchNorm running statistics either.
        for module in self._frozen_modules:
            for sub in module.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    sub.eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images`` (B, 3, H, W), ImageNet-normalised -> [C3, C4, C5], each (B, C_l, H/s_l, W/s_l)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"ResNetBackbone expects images of shape (B, 3, H, W), got {tuple(images.shape)}"
            )
        if images.shape[-2] * images.shape[-1] > CHANNELS_LAST_MIN_PIXELS:
            # oneDNN convolves channels-last activations without reordering them at every layer. The
            # weights keep their layout, so state dicts are unchanged.
            images = images.contiguous(memory_format=torch.channels_last)
        return self.body(images)


def groupnorm_groups(channels: int, max_groups: int = MAX_GROUPNORM_GROUPS) -> int:
    """Largest group count <= ``max_groups`` that divides ``channels`` and leaves at least two channels per
    group (a one-channel group has a single value on a 1x1 level, which GroupNorm cannot normalise)."""
    for groups in range(min(max_groups, channels // 2), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def downsample_mask(mask: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of a bool padding mask (B, H, W) to ``size`` = (h, w)."""
    return F.interpolate(mask[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(torch.bool)


class InputProjection(nn.Module):
    """Projects backbone levels to ``d_model`` channels and adds coarser levels.

    Level ``l < len(in_channels)``: 1x1 conv + GroupNorm. Each extra level: 3x3 stride-2 conv +
    GroupNorm, the first from the last backbone level (C5 -> stride 64), the next ones from the
    previous extra level. GroupNorm uses 32 groups, or the largest count below that divides d_model.

    Args:
        in_channels: channels of the backbone levels (e.g. ``ResNetBackbone.out_channels``).
        d_model: output channels (transformer width).
        num_levels: number of output levels, >= ``len(in_channels)``.
    """

    def __init__(self, in_channels: Sequence[int], d_model: int, num_levels: int) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels:
            raise ValueError("InputProjection in_channels must list at least one backbone level")
        if num_levels < len(in_channels):
            raise ValueError(
                f"InputProjection num_levels ({num_levels}) must be >= the number of backbone levels "
                f"({len(in_channels)})"
            )
        if d_model <= 0:
            raise ValueError(f"InputProjection d_model must be positive, got {d_model}")
        groups = groupnorm_groups(d_model)
        levels = [
            nn.Sequential(nn.Conv2d(c, d_model, kernel_size=1), nn.GroupNorm(groups, d_model))
            for c in in_channels
        ]
        previous = in_channels[-1]
        for _ in range(num_levels - len(in_channels)):
            levels.append(
                nn.Sequential(
                    nn.Conv2d(previous, d_model, kernel_size=3, stride=2, padding=1),
                    nn.GroupNorm(groups, d_model),
                )
            )
            previous = d_model
        self.levels = nn.ModuleList(levels)
        self.num_backbone_levels = len(in_channels)
        self.num_levels = num_levels
        self.d_model = d_model
        for level in self.levels:
            nn.init.xavier_uniform_(level[0].weight)
            nn.init.zeros_(level[0].bias)

    def forward(self, features: Sequence[Tensor], image_mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Project ``features`` and downsample ``image_mask`` (B, H, W), True on padding.

        Returns:
            (projected, masks): ``num_levels`` tensors (B, d_model, h_l, w_l) and bool masks (B, h_l, w_l).
        """
        if len(features) != self.num_backbone_levels:
            raise ValueError(
                f"InputProjection expects {self.num_backbone_levels} feature levels, got {len(features)}"
            )
        if image_mask.dim() != 3 or image_mask.dtype != torch.bool:
            raise ValueError(
                f"image_mask must be a bool tensor (B, H, W), got {image_mask.dtype} {tuple(image_mask.shape)}"
            )
        projected: list[Tensor] = []
        for level, feature in zip(self.levels, features):
            projected.append(level(feature))
        source = features[-1]
        for level in self.levels[self.num_backbone_levels :]:
            source = level(source)
            projected.append(source)
        masks = [downsample_mask(image_mask, p.shape[-2:]) for p in projected]
        return projected, masks


def sine_embed(coords: Tensor, num_pos_feats: int, temperature: float) -> Tensor:
    """Sine/cosine embedding of scalar coordinates: (...,) -> (..., num_pos_feats).

    Channel ``2i`` holds ``sin(c / T^(2i/n))`` and ``2i+1`` holds ``cos(c / T^(2i/n))`` (the
    DETR/DINO layout, so weights that consume these embeddings transfer).
    """
    if num_pos_feats % 2:
        raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    phase = coords.float()[..., None] / dim_t
    return torch.stack((phase[..., 0::2].sin(), phase[..., 1::2].cos()), dim=-1).flatten(-2)


class SinePositionEncoding(nn.Module):
    """2-D sine position encoding of a padded feature map (DETR style).

    Coordinates are cumulative counts of valid (non-padded) cells, optionally normalised to
    ``(0, 2*pi]`` by the valid extent of each row/column, so padding does not shift the encoding.

    Args:
        num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels (y then x).
        temperature: frequency base (DINO uses 20 for both axes; DETR 10000).
        normalize: normalise coordinates by the valid extent (recommended with padding).
        scale: range of normalised coordinates.
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        if num_pos_feats <= 0 or num_pos_feats % 2:
            raise ValueError(
                f"SinePositionEncoding num_pos_feats must be a positive even number, got {num_pos_feats}"
            )
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask: Tensor) -> Tensor:
        """``mask`` (B, h, w) bool, True on padding -> (B, 2 * num_pos_feats, h, w) float32."""
        if mask.dim() != 3:
            raise ValueError(f"SinePositionEncoding expects a mask (B, h, w), got {tuple(mask.shape)}")
        valid = (~mask).float()
        y = valid.cumsum(1)
        x = valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            # Cell centres (-0.5) over the valid extent, as Deformable-DETR/DINO.
            y = (y - 0.5) / (y[:, -1:, :] + eps) * self.scale
            x = (x - 0.5) / (x[:, :, -1:] + eps) * self.scale
        pos = torch.cat(
            (
                sine_embed(y, self.num_pos_feats, self.temperature),
                sine_embed(x, self.num_pos_feats, self.temperature),
            ),
            dim=-1,
        )
        return pos.permute(0, 3, 1, 2).contiguous()
