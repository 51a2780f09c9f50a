"""Typed outputs of :class:`unihema.model.unihema.UniHema`: one dataclass per task family.

Shapes use B images, Q matching queries, L decoder layers, K = Q encoder proposals, Qdn denoising queries,
C = ``heads.num_detection_classes``, A = the FoV attribute logits (``model.box_attribute_head.slices``),
A' = the cell-attribute logits (``model.cell_attribute_head.slices``), M the SCFE width, T target tokens,
V the text vocabulary, N the text width and Lp prompt tokens. Boxes are sigmoid ``cxcywh`` normalised to
each image's unpadded extent (the convention of the targets).

Losses (:mod:`unihema.train.losses`), evaluation and inference read these by attribute; nothing indexes
model outputs by string.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class BoxOutput:
    """Predictions of one set of queries: a decoder layer, the encoder proposals or the denoising queries.

    Attributes:
        logits: (B, N, C) sigmoid-focal class logits (no background class).
        boxes: (B, N, 4) sigmoid ``cxcywh``, normalised to the unpadded image.
        attributes: (B, N, A) FoV attribute logits, or ``None`` when the task has no attribute head.
    """

    logits: Tensor
    boxes: Tensor
    attributes: Tensor | None = None


@dataclass
class DenoisingMeta:
    """Layout of the denoising queries (built by :func:`unihema.model.denoising.build_denoising_queries`).

    Attributes:
        pad_size: number of denoising query slots (``num_groups`` groups of equal size).
        num_groups: denoising groups; a group holds a positive and a negative copy of each target.
        max_targets: most targets of one image in the batch (half a group).
        positive_matches: per image, (DN query indices, target indices) of the positive queries, or ``None``
            for the plain DINO layout (positive ``g * group_size + j`` reconstructs target ``j``).
        negative_indices: per image, DN query indices that must predict no object, or ``None``.
    """

    pad_size: int
    num_groups: int
    max_targets: int = 0
    positive_matches: list[tuple[Tensor, Tensor]] | None = None
    negative_indices: list[Tensor] | None = None


@dataclass
class DenoisingOutput(BoxOutput):
    """Final-layer predictions of the Qdn denoising queries (``logits`` (B, Qdn, C), ...), with ``aux``
    (the L-1 earlier layers) and ``meta`` (their layout)."""

    aux: list[BoxOutput] = field(default_factory=list)
    meta: DenoisingMeta | None = None


@dataclass
class DetectionOutput(BoxOutput):
    """Detection and FoV morphology: final decoder layer ``logits`` (B, Q, C), ``boxes`` (B, Q, 4) and, for
    FoV morphology, ``attributes`` (B, Q, A).

    Attributes:
        aux: the L-1 earlier decoder layers, same fields.
        encoder: the K selected encoder proposals (``logits`` (B, K, C), ``boxes`` (B, K, 4)).
        denoising: the denoising queries, present in training with targets when denoising is on.
        hidden_states: (B, Q, d) final-layer query states E_D^I (read by QGMF and the shared pass).
    """

    aux: list[BoxOutput] = field(default_factory=list)
    encoder: BoxOutput | None = None
    denoising: DenoisingOutput | None = None
    hidden_states: Tensor | None = None

    def layers(self) -> list[BoxOutput]:
        """Every decoder layer's predictions, earliest first, the final layer last."""
        return [*self.aux, BoxOutput(self.logits, self.boxes, self.attributes)]


@dataclass
class SegmentationOutput:
    """Binary segmentation.

    Attributes:
        masks: (B, 1, H, W) mask logits at the input size (or ``hemaformer.qgmf_mask_size``).
        masks_lowres: (B, 1, H/8, W/8) the query mask before upsampling.
    """

    masks: Tensor
    masks_lowres: Tensor


@dataclass
class CellOutput:
    """Single-cell classification and cell morphology (both heads always run: they share E_Z).

    Attributes:
        features: (B, M) the SCFE cell feature E_Z.
        class_logits: (B, len(CELL_CLASSES)) cell-class logits (softmax).
        attribute_logits: (B, A') cell-attribute logits, one softmax per attribute group.
    """

    features: Tensor
    class_logits: Tensor
    attribute_logits: Tensor


@dataclass
class ImageMemory:
    """What CMF reads of a batch's images, before it meets the text (:meth:`UniHema.image_memory`).

    It depends on the images and the frozen-or-not image path only, so a training stage that freezes that
    path can compute it once per input and reuse it (:class:`unihema.train.image_cache.ImageMemoryCache`).

    Attributes:
        tokens: (B, S, C) the projected backbone levels flattened and concatenated (C the image width;
            with ``cell_feature_fusion: token`` the cell feature is the last token).
        padding: (B, S) bool, True on padded positions.
        cell: (B, M) the SCFE cell feature E_Z when ``cell_feature_fusion`` is set, else ``None``.
    """

    tokens: Tensor
    padding: Tensor
    cell: Tensor | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, rows: slice) -> ImageMemory:
        """The memory of a slice of the batch's images (micro-batches slice batches this way)."""
        cell = None if self.cell is None else self.cell[rows]
        return ImageMemory(self.tokens[rows], self.padding[rows], cell)


@dataclass
class CellInputs:
    """What SCFE reads of a batch of single-cell crops (:meth:`UniHema.cell_inputs`): the output of the
    backbone and E_I, before the cell feature is pooled.

    Like :class:`ImageMemory` it depends on the crops and the image path only, so a stage that freezes
    ``B`` and ``E_I`` but trains SCFE and the cell heads can compute it once per crop
    (:class:`unihema.train.image_cache.ImageMemoryCache`).

    Attributes:
        memory: (B, S, M) the E_I memory over all levels.
        memory_padding: (B, S) bool, True on padded positions.
        tokens: (B, T, C) the second token set SCFE reads (the last backbone level, or the first projected
            level; ``hemaformer.scfe_inputs``).
        token_padding: (B, T) bool, True on padded positions.
    """

    memory: Tensor
    memory_padding: Tensor
    tokens: Tensor
    token_padding: Tensor

    def __len__(self) -> int:
        return int(self.memory.shape[0])

    def __getitem__(self, rows: slice) -> CellInputs:
        """The inputs of a slice of the batch's crops (micro-batches slice batches this way)."""
        return CellInputs(
            self.memory[rows], self.memory_padding[rows], self.tokens[rows], self.token_padding[rows]
        )


@dataclass
class TextOutput:
    """VQA and masked sentences.

    Attributes:
        memory: (B, Lp, N) the fused CMF states E_W^T the T5 decoder reads.
        memory_mask: (B, Lp) 1 on prompt tokens, 0 on padding.
        logits: (B, T, V) teacher-forced token logits, with targets only.
        labels: (B, T) target token ids (-100 on padding), with targets only.
    """

    memory: Tensor
    memory_mask: Tensor
    logits: Tensor | None = None
    labels: Tensor | None = None


@dataclass
class VisionOutput:
    """The shared pass over fields of view (:meth:`UniHema.forward_fields`): one backbone, encoder and
    decoder run serving every requested vision task.

    Attributes:
        detection: boxes and classes (with ``attributes`` when FoV morphology was requested), or ``None``.
        segmentation: the binary mask, or ``None`` when not requested.
    """

    detection: DetectionOutput | None = None
    segmentation: SegmentationOutput | None = None


ModelOutput = DetectionOutput | SegmentationOutput | CellOutput | TextOutput
"""What :meth:`UniHema.forward` returns for one task-homogeneous batch."""
