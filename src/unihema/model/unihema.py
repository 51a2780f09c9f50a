"""UniHema: composition of backbone B, image encoder E_I, image decoder D_I, text encoder/decoder E_T/D_T,
the Hema-Former modules (CMF, TGVR, SCFE, QGMF) and the task heads. Each task runs only what it needs."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from unihema.data.schema import Task
from unihema.inference.preprocessor import PreprocessorConfig
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


class UniHema(nn.Module):
    """The Uni-Hema model. Build with :meth:`from_config`, :meth:`from_preset` or :meth:`from_pretrained`."""

    def __init__(
        self,
        config: UniHemaConfig,
        backbone: ResNetBackbone,
        input_proj: InputProjection,
        position: SinePositionEncoding,
        image_encoder: ImageEncoder,
        image_decoder: ImageDecoder,
        text: TextModel,
        cmf: CrossModalFusion,
        tgvr: TextGuidedVisualRefinement,
        scfe: SingleCellFeatureExtractor,
        qgmf: QueryGuidedMaskFormer | UpstreamQueryGuidedMaskFormer,
        box_attribute_head: AttributeHead,
        cell_class_head: CellClassHead,
        cell_attribute_head: AttributeHead,
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.input_proj, self.position = backbone, input_proj, position
        self.image_encoder, self.image_decoder, self.text = image_encoder, image_decoder, text
        self.cmf, self.tgvr, self.scfe, self.qgmf = cmf, tgvr, scfe, qgmf
        self.box_attribute_head = box_attribute_head
        self.cell_class_head = cell_class_head
        self.cell_attribute_head = cell_attribute_head
        # The pre-processing the model was trained with (saved as preprocessor_config.json), or None.
        self.preprocessor: PreprocessorConfig | None = None

    @classmethod
    def from_config(cls, config: UniHemaConfig, tokenizer: Any = None) -> UniHema:
        """Build every module from ``config`` (see :func:`unihema.model.builder.build_components`)."""
        from unihema.model.builder import build_components

        config, components = build_components(config, tokenizer)
        return cls(config=config, **components)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> UniHema:
        """``from_config(UniHemaConfig.from_preset(name, **overrides))``, e.g. ``from_preset("tiny")``."""
        return cls.from_config(UniHemaConfig.from_preset(name, **overrides))

    @property
    def tokenizer(self) -> Any:
        return self.text.tokenizer

    def module_groups(self) -> dict[str, nn.Module]:
        """The paper's modules by name (keys of :data:`MODULE_GROUPS`), for freezing and reporting. The
        shared T5 token embedding belongs to ``E_T``; each parameter is in exactly one group."""
        heads = {
            "box_attributes": self.box_attribute_head,
            "cell_class": self.cell_class_head,
            "cell_attributes": self.cell_attribute_head,
        }
        return {
            "B": nn.ModuleDict({"backbone": self.backbone, "input_proj": self.input_proj}),
            "E_I": self.image_encoder,
            "D_I": self.image_decoder,
            "E_T": self.text.encoder_modules(),
            "D_T": self.text.decoder_modules(),
            "CMF": self.cmf,
            "TGVR": self.tgvr,
            "SCFE": self.scfe,
            "QGMF": self.qgmf,
            "heads": nn.ModuleDict(heads),
        }

    # --------------------------------------------------------------------------------------- forward
    def forward(
        self,
        images: Tensor,
        task: Task | str,
        prompts: list[str] | None = None,
        targets: list[dict] | None = None,
        image_mask: Tensor | None = None,
    ) -> dict[str, Any]:
        """Run one task-homogeneous batch (the caller groups mixed tasks; see ``docs/architecture.md``).

        Args:
            images: (B, 3, H, W) ImageNet-normalised, zero-padded.
            task: a :class:`~unihema.data.schema.Task` (or its value) shared by the whole batch.
            prompts: B prompt strings; required by detection, fov_morphology, segmentation, vqa and mlm,
                ignored by classification and cell_morphology (their features are text-independent).
            targets: per-sample target dicts (training only): detection boxes/labels build the denoising
                queries (in training mode); vqa/mlm ``text`` answers are used for teacher forcing.
            image_mask: (B, H, W) bool, True on padding; ``None`` = no padding.

        Returns (Q matching queries, L decoder layers, C = ``heads.num_detection_classes``, Qdn
        denoising queries, K = Q encoder proposals, A = 12 FoV attribute logits, A' = 31 cell-attribute
        logits, T target tokens, V text vocabulary, N text width, Lp prompt tokens):

        - detection / fov_morphology: ``pred_logits`` (B, Q, C) sigmoid-focal class logits; ``pred_boxes``
          (B, Q, 4) sigmoid cxcywh normalised to the unpadded image (as the targets); ``aux_outputs``: list of L-1 dicts with
          the same keys for the earlier layers; ``enc_outputs``: dict ``pred_logits`` (B, K, C),
          ``pred_boxes`` (B, K, 4) of the selected encoder proposals; in training with targets (and
          denoising enabled) ``dn_outputs``: dict ``pred_logits`` (B, Qdn, C), ``pred_boxes`` (B, Qdn, 4),
          ``aux_outputs`` (L-1 dicts) and ``dn_meta`` (layout of the denoising queries). fov_morphology
          adds ``pred_box_attributes`` (B, Q, A) to the final, aux and dn dicts (slices per attribute:
          ``model.box_attribute_head.slices``).
        - segmentation: ``pred_masks`` (B, 1, H, W) mask logits at the input size (or the configured fixed
          size); ``pred_masks_lowres`` (B, 1, H/8, W/8) the query mask before upsampling.
        - classification / cell_morphology: ``cell_features`` (B, M) the SCFE vector; ``pred_cell_logits``
          (B, len(CELL_CLASSES)); ``pred_cell_attributes`` (B, A') (``model.cell_attribute_head.slices``).
        - vqa / mlm: ``text_memory`` (B, Lp, N) the fused CMF states, ``text_memory_mask`` (B, Lp); with
          targets also ``text_logits`` (B, T, V), ``text_labels`` (B, T) (-100 on padding) and
          ``loss_text`` () the mean token cross-entropy.
        """
        task = Task(task)
        if image_mask is None:
            image_mask = torch.zeros(
                images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device
            )
        if task in (Task.CLASSIFICATION, Task.CELL_MORPHOLOGY):
            return self._forward_cell(images, image_mask)
        prompts = self._check_prompts(task, prompts, images.shape[0])
        if task.is_text:
            return self._forward_text(images, image_mask, prompts, targets)
        return self._forward_visual(task, images, image_mask, prompts, targets)

    def _features(
        self, images: Tensor, image_mask: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        features = self.backbone(images)
        projected, masks = self.input_proj(features, image_mask)
        return features, projected, masks

    def _encode(self, projected: list[Tensor], masks: list[Tensor]) -> Any:
        return self.image_encoder(projected, masks, [self.position(m) for m in masks])

    def _encode_text(self, prompts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        ids, mask = self.text.tokenize(prompts, device)
        return self.text.encode(ids, mask), mask

    def _cell_feature(self, backbone: list[Tensor], projected: list[Tensor], masks: list[Tensor]) -> Tensor:
        """E_I on the projected levels, then SCFE -> the cell feature E_Z (B, M)."""
        encoded = self._encode(projected, masks)
        if self.scfe.inputs == "encoder_mean+backbone_c5":
            top = len(backbone) - 1
            tokens, padding = backbone[top].flatten(2).transpose(1, 2), masks[top].flatten(1)
        else:
            tokens, padding = projected[0].flatten(2).transpose(1, 2), masks[0].flatten(1)
        return self.scfe(encoded.memory, encoded.padding_mask, tokens, padding)

    def _forward_cell(self, images: Tensor, image_mask: Tensor) -> dict[str, Any]:
        features = self._cell_feature(*self._features(images, image_mask))
        return {
            "cell_features": features,
            "pred_cell_logits": self.cell_class_head(features),
            "pred_cell_attributes": self.cell_attribute_head(features),
        }

    def _forward_visual(
        self, task: Task, images: Tensor, image_mask: Tensor, prompts: list[str], targets: list[dict] | None
    ) -> dict[str, Any]:
        features, projected, masks = self._features(images, image_mask)
        text_states, text_mask = self._encode_text(prompts, images.device)
        encoded = self._encode(projected, masks)
        refiner = self.tgvr.refiner(
            text_states, text_mask if self.config.hemaformer.text_padding_masks else None
        )
        dn_targets = targets if (self.training and task.has_boxes) else None
        decoded = self.image_decoder(encoded, refiner, dn_targets)
        if task == Task.SEGMENTATION:
            size = self.config.hemaformer.qgmf_mask_size
            size = tuple(images.shape[-2:]) if size == "input" else (size, size)
            # The paper-style QGMF reads the raw backbone C3, the authors' style its input projection.
            c3 = features[0] if self.config.hemaformer.qgmf_style == "paper" else projected[0]
            masks_full, masks_low = self.qgmf(
                c3, encoded.level_map(0), decoded.hidden_states[-1], decoded.pred_logits[-1], size
            )
            return {"pred_masks": masks_full, "pred_masks_lowres": masks_low}
        attributes = self.box_attribute_head if task == Task.FOV_MORPHOLOGY else None
        out = _layer_outputs(decoded.pred_logits, decoded.pred_boxes, decoded.hidden_states, attributes)
        out["enc_outputs"] = {"pred_logits": decoded.enc_logits, "pred_boxes": decoded.enc_boxes}
        if decoded.dn_meta is not None:
            out["dn_outputs"] = _layer_outputs(
                decoded.dn_logits, decoded.dn_boxes, decoded.dn_hidden_states, attributes
            )
            out["dn_meta"] = decoded.dn_meta
        return out

    def _fuse_text(self, images: Tensor, image_mask: Tensor, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """B -> input projection -> E_B^I; E_T(prompts); CMF -> (E_W^T (B, Lp, N), text mask (B, Lp))."""
        backbone, projected, masks = self._features(images, image_mask)
        tokens = torch.cat([p.flatten(2).transpose(1, 2) for p in projected], dim=1)
        padding = torch.cat([m.flatten(1) for m in masks], dim=1)
        if self.config.hemaformer.cmf_cell_feature:
            # One more image token: the SCFE cell feature E_Z, which step 1 trains to separate cell classes
            # and attributes, the very things the questions ask about.
            cell = self._cell_feature(backbone, projected, masks)[:, None].to(tokens.dtype)
            tokens = torch.cat((tokens, cell), dim=1)
            padding = torch.cat((padding, padding.new_zeros(padding.shape[0], 1)), dim=1)
        text_states, text_mask = self._encode_text(prompts, images.device)
        use_masks = self.config.hemaformer.text_padding_masks
        fused = self.cmf(
            text_states, text_mask if use_masks else None, tokens, padding if use_masks else None
        )
        return fused, text_mask

    def _forward_text(
        self, images: Tensor, image_mask: Tensor, prompts: list[str], targets: list[dict] | None
    ) -> dict[str, Any]:
        fused, text_mask = self._fuse_text(images, image_mask, prompts)
        out: dict[str, Any] = {"text_memory": fused, "text_memory_mask": text_mask}
        if targets is not None:
            if len(targets) != len(prompts) or not all(isinstance(t.get("text"), str) for t in targets):
                raise ValueError("vqa/mlm targets must be one dict per image with a 'text' string")
            labels = self.text.tokenize_targets([t["text"] for t in targets], images.device)
            result = self.text.teacher_forced(fused, text_mask, labels)
            out.update(text_logits=result.logits, text_labels=labels, loss_text=result.loss)
        return out

    @torch.no_grad()
    def generate_text(
        self,
        images: Tensor,
        prompts: list[str],
        image_mask: Tensor | None = None,
        num_beams: int = 1,
        max_new_tokens: int = 32,
    ) -> list[str]:
        """Answer ``prompts`` about ``images`` by greedy (``num_beams=1``) or beam search. The T5 decoder
        reads the fused image-and-text CMF states, so the image changes the answer."""
        prompts = self._check_prompts(Task.VQA, prompts, images.shape[0])
        if image_mask is None:
            image_mask = torch.zeros(
                images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device
            )
        fused, text_mask = self._fuse_text(images, image_mask, prompts)
        return self.text.decode(self.text.generate(fused, text_mask, num_beams, max_new_tokens))

    @staticmethod
    def _check_prompts(task: Task, prompts: list[str] | None, batch: int) -> list[str]:
        if prompts is None or isinstance(prompts, str) or len(prompts) != batch:
            raise ValueError(f"task {task.value!r} needs a list of {batch} prompt strings, got {prompts!r}")
        return list(prompts)

    # ------------------------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``model.safetensors``, ``config.json`` and ``tokenizer/`` into ``directory``."""
        from unihema.model.persistence import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
    ) -> UniHema:
        """Load a model written by :meth:`save_pretrained` (never unpickles)."""
        from unihema.model.persistence import load_pretrained

        return load_pretrained(cls, directory, map_location)


def _layer_outputs(
    logits: Tensor, boxes: Tensor, hidden: Tensor, attribute_head: AttributeHead | None
) -> dict[str, Any]:
    """Per-layer decoder outputs (L, B, Q, ...) -> final-layer dict with ``aux_outputs`` for the others."""
    attributes = attribute_head(hidden) if attribute_head is not None else None

    def layer(i: int) -> dict[str, Tensor]:
        out = {"pred_logits": logits[i], "pred_boxes": boxes[i]}
        if attributes is not None:
            out["pred_box_attributes"] = attributes[i]
        return out

    return {**layer(-1), "aux_outputs": [layer(i) for i in range(logits.shape[0] - 1)]}
