"""UniHema: composition of backbone B, image encoder E_I, image decoder D_I, text encoder/decoder E_T/D_T,
the Hema-Former modules (CMF, TGVR, SCFE, QGMF) and the task heads. Each task runs only what it needs."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from unihema.data.schema import Task
from unihema.inference.preprocessor import PreprocessorConfig
from unihema.model.backbone import InputProjection, ResNetBackbone, SinePositionEncoding
from unihema.model.configuration import TEXT_MEMORIES, UniHemaConfig
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
from unihema.model.outputs import (
    BoxOutput,
    CellInputs,
    CellOutput,
    DenoisingOutput,
    DetectionOutput,
    ImageMemory,
    ModelOutput,
    SegmentationOutput,
    TextOutput,
    VisionOutput,
)
from unihema.model.text import MAX_NEW_TOKENS, TextModel

VISION_TASKS = (Task.DETECTION, Task.FOV_MORPHOLOGY, Task.SEGMENTATION)
"""Tasks on fields of view that :meth:`UniHema.forward_fields` serves in one shared pass."""


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
        text_memory: str = "fused",
        image_memory: ImageMemory | None = None,
        cell_inputs: CellInputs | None = None,
    ) -> ModelOutput:
        """Run one task-homogeneous batch (the caller groups mixed tasks; see ``docs/architecture.md``).

        Args:
            images: (B, 3, H, W) ImageNet-normalised, zero-padded.
            task: a :class:`~unihema.data.schema.Task` (or its value) shared by the whole batch.
            prompts: B prompt strings; required by detection, fov_morphology, segmentation, vqa and mlm,
                ignored by classification and cell_morphology (their features are text-independent).
            targets: per-sample target dicts (training only): detection boxes/labels build the denoising
                queries (in training mode); vqa/mlm ``text`` answers are used for teacher forcing.
            image_mask: (B, H, W) bool, True on padding; ``None`` = no padding.
            text_memory: vqa / mlm only, one of :data:`TEXT_MEMORIES`; ``"text"`` skips the image path.
            image_memory: vqa / mlm with the fused memory only: :meth:`image_memory` of these ``images``,
                computed earlier (a stage whose image path is frozen caches it); the image path is then
                not run again.
            cell_inputs: classification / cell_morphology only: :meth:`cell_inputs` of these ``images``,
                computed earlier (a stage that freezes ``B`` and ``E_I`` caches it); only SCFE and the cell
                heads then run.

        Returns (fields and shapes in :mod:`unihema.model.outputs`):
            detection / fov_morphology: :class:`DetectionOutput` (FoV morphology fills ``attributes``;
            ``denoising`` in training with targets); segmentation: :class:`SegmentationOutput`;
            classification / cell_morphology: :class:`CellOutput`; vqa / mlm: :class:`TextOutput`
            (``logits`` and ``labels`` with targets).
        """
        task = Task(task)
        _check_text_memory(text_memory, task)
        if image_memory is not None:
            _check_image_memory(image_memory, task, text_memory, images.shape[0])
        if cell_inputs is not None:
            _check_cell_inputs(cell_inputs, task, images.shape[0])
        image_mask = self._image_mask(images, image_mask)
        if task.is_single_cell:
            return self._forward_cell(images, image_mask, cell_inputs)
        prompts = self._check_prompts(task, prompts, images.shape[0])
        if task.is_text:
            return self._forward_text(images, image_mask, prompts, targets, text_memory, image_memory)
        vision = self._forward_vision(images, image_mask, prompts, {task}, targets)
        return vision.segmentation if task == Task.SEGMENTATION else vision.detection

    def forward_fields(
        self,
        images: Tensor,
        prompts: list[str],
        tasks: Iterable[Task | str] = (Task.DETECTION, Task.FOV_MORPHOLOGY, Task.SEGMENTATION),
        image_mask: Tensor | None = None,
    ) -> VisionOutput:
        """Every requested vision task of fields of view in one shared pass: the backbone, input projection,
        E_I, E_T and the decoder run once, then the FoV attribute head and QGMF read the same decoder
        states. ``tasks``: any of detection, fov_morphology, segmentation. Inference only (no denoising)."""
        tasks = {Task(t) for t in tasks}
        unknown = tasks - set(VISION_TASKS)
        if unknown or not tasks:
            raise ValueError(
                f"forward_fields runs {[t.value for t in VISION_TASKS]}, got {sorted(t.value for t in tasks)}"
            )
        prompts = self._check_prompts(Task.DETECTION, prompts, images.shape[0])
        return self._forward_vision(images, self._image_mask(images, image_mask), prompts, tasks, None)

    @staticmethod
    def _image_mask(images: Tensor, image_mask: Tensor | None) -> Tensor:
        if image_mask is not None:
            return image_mask
        return torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)

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

    def _scfe_inputs(
        self, backbone: list[Tensor], projected: list[Tensor], masks: list[Tensor]
    ) -> CellInputs:
        """E_I on the projected levels and the second token set SCFE reads (:class:`CellInputs`)."""
        encoded = self._encode(projected, masks)
        if self.scfe.inputs == "encoder_mean+backbone_c5":
            top = len(backbone) - 1
            tokens, padding = backbone[top].flatten(2).transpose(1, 2), masks[top].flatten(1)
        else:
            tokens, padding = projected[0].flatten(2).transpose(1, 2), masks[0].flatten(1)
        return CellInputs(encoded.memory, encoded.padding_mask, tokens, padding)

    def _cell_feature(self, backbone: list[Tensor], projected: list[Tensor], masks: list[Tensor]) -> Tensor:
        """E_I on the projected levels, then SCFE -> the cell feature E_Z (B, M)."""
        return self._pool_cell(self._scfe_inputs(backbone, projected, masks))

    def _pool_cell(self, inputs: CellInputs) -> Tensor:
        return self.scfe(inputs.memory, inputs.memory_padding, inputs.tokens, inputs.token_padding)

    def cell_inputs(self, images: Tensor, image_mask: Tensor | None = None) -> CellInputs:
        """What SCFE reads of single-cell crops (backbone and E_I), before it pools the cell feature; see
        :class:`CellInputs`."""
        return self._scfe_inputs(*self._features(images, self._image_mask(images, image_mask)))

    def _forward_cell(
        self, images: Tensor, image_mask: Tensor, inputs: CellInputs | None = None
    ) -> CellOutput:
        if inputs is None:
            inputs = self._scfe_inputs(*self._features(images, image_mask))
        features = self._pool_cell(inputs)
        return CellOutput(
            features=features,
            class_logits=self.cell_class_head(features),
            attribute_logits=self.cell_attribute_head(features),
        )

    def _forward_vision(
        self,
        images: Tensor,
        image_mask: Tensor,
        prompts: list[str],
        tasks: set[Task],
        targets: list[dict] | None,
    ) -> VisionOutput:
        features, projected, masks = self._features(images, image_mask)
        text_states, text_mask = self._encode_text(prompts, images.device)
        encoded = self._encode(projected, masks)
        refiner = self.tgvr.refiner(
            text_states, text_mask if self.config.hemaformer.text_padding_masks else None
        )
        boxed = tasks & {Task.DETECTION, Task.FOV_MORPHOLOGY}
        dn_targets = targets if (self.training and boxed) else None
        decoded = self.image_decoder(encoded, refiner, dn_targets)
        result = VisionOutput()
        if Task.SEGMENTATION in tasks:
            size = self.config.hemaformer.qgmf_mask_size
            size = tuple(images.shape[-2:]) if size == "input" else (size, size)
            # The paper-style QGMF reads the raw backbone C3, the authors' style its input projection.
            c3 = features[0] if self.config.hemaformer.qgmf_style == "paper" else projected[0]
            masks_full, masks_low = self.qgmf(
                c3, encoded.level_map(0), decoded.hidden_states[-1], decoded.pred_logits[-1], size
            )
            result.segmentation = SegmentationOutput(masks=masks_full, masks_lowres=masks_low)
        if boxed:
            head = self.box_attribute_head if Task.FOV_MORPHOLOGY in tasks else None
            final, aux = _layer_outputs(decoded.pred_logits, decoded.pred_boxes, decoded.hidden_states, head)
            denoising = None
            if decoded.dn_meta is not None:
                dn_final, dn_aux = _layer_outputs(
                    decoded.dn_logits, decoded.dn_boxes, decoded.dn_hidden_states, head
                )
                denoising = DenoisingOutput(
                    dn_final.logits, dn_final.boxes, dn_final.attributes, aux=dn_aux, meta=decoded.dn_meta
                )
            result.detection = DetectionOutput(
                final.logits, final.boxes, final.attributes, aux=aux,
                encoder=BoxOutput(decoded.enc_logits, decoded.enc_boxes), denoising=denoising,
                hidden_states=decoded.hidden_states[-1],
            )  # fmt: skip
        return result

    def image_memory(self, images: Tensor, image_mask: Tensor | None = None) -> ImageMemory:
        """What CMF reads of ``images`` (B -> input projection, and the SCFE cell feature E_Z when
        ``cell_feature_fusion`` is set), before it meets the text; see :class:`ImageMemory`."""
        image_mask = self._image_mask(images, image_mask)
        backbone, projected, masks = self._features(images, image_mask)
        tokens = torch.cat([p.flatten(2).transpose(1, 2) for p in projected], dim=1)
        padding = torch.cat([m.flatten(1) for m in masks], dim=1)
        fusion = self.config.hemaformer.cell_feature_fusion
        cell = None
        if fusion is not None:
            # The SCFE cell feature E_Z, which classification and cell morphology train to separate cell
            # classes and attributes, the very things the questions ask about.
            cell = self._cell_feature(backbone, projected, masks).to(tokens.dtype)
        if fusion == "token":
            tokens = torch.cat((tokens, cell[:, None]), dim=1)
            padding = torch.cat((padding, padding.new_zeros(padding.shape[0], 1)), dim=1)
        return ImageMemory(tokens, padding, cell)

    def _fuse_text(
        self, images: Tensor, image_mask: Tensor, prompts: list[str], image_memory: ImageMemory | None = None
    ) -> tuple[Tensor, Tensor]:
        """image memory (:meth:`image_memory`); E_T(prompts); CMF -> (E_W^T (B, Lp, N), text mask (B, Lp))."""
        memory = image_memory if image_memory is not None else self.image_memory(images, image_mask)
        text_states, text_mask = self._encode_text(prompts, images.device)
        use_masks = self.config.hemaformer.text_padding_masks
        add_cell = self.config.hemaformer.cell_feature_fusion == "add"
        fused = self.cmf(
            text_states, text_mask if use_masks else None, memory.tokens, memory.padding if use_masks else None,
            cell_feature=memory.cell if add_cell else None,
        )  # fmt: skip
        return fused, text_mask

    def _text_memory(
        self,
        images: Tensor,
        image_mask: Tensor,
        prompts: list[str],
        text_memory: str,
        image_memory: ImageMemory | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The decoder's memory and its mask: E_W^T from CMF, or E_E^T alone (see :data:`TEXT_MEMORIES`)."""
        if text_memory == "text":
            return self._encode_text(prompts, images.device)
        return self._fuse_text(images, image_mask, prompts, image_memory)

    def _forward_text(
        self,
        images: Tensor,
        image_mask: Tensor,
        prompts: list[str],
        targets: list[dict] | None,
        text_memory: str = "fused",
        image_memory: ImageMemory | None = None,
    ) -> TextOutput:
        fused, text_mask = self._text_memory(images, image_mask, prompts, text_memory, image_memory)
        out = TextOutput(memory=fused, memory_mask=text_mask)
        if targets is not None:
            if len(targets) != len(prompts) or not all(isinstance(t.get("text"), str) for t in targets):
                raise ValueError("vqa/mlm targets must be one dict per image with a 'text' string")
            out.labels = self.text.tokenize_targets([t["text"] for t in targets], images.device)
            out.logits = self.text.teacher_forced(fused, text_mask, out.labels)
        return out

    @torch.no_grad()
    def generate_text(
        self,
        images: Tensor,
        prompts: list[str],
        image_mask: Tensor | None = None,
        num_beams: int = 1,
        max_new_tokens: int = MAX_NEW_TOKENS,
        text_memory: str = "fused",
    ) -> list[str]:
        """Answer ``prompts`` about ``images`` by greedy (``num_beams=1``) or beam search. The T5 decoder
        reads the fused image-and-text CMF states, so the image changes the answer (``text_memory="text"``:
        the T5 encoder's states alone, the image unread; see :data:`TEXT_MEMORIES`)."""
        _check_text_memory(text_memory, Task.VQA)
        prompts = self._check_prompts(Task.VQA, prompts, images.shape[0])
        fused, text_mask = self._text_memory(
            images, self._image_mask(images, image_mask), prompts, text_memory
        )
        return self.text.decode(self.text.generate(fused, text_mask, num_beams, max_new_tokens))

    def predict(
        self,
        images: Any,
        tasks: Iterable[Task | str] | Task | str | None = None,
        question: str | None = None,
        disease: str | None = None,
        score_threshold: float = 0.3,
        device: torch.device | str | None = None,
        **options: Any,
    ) -> Any:
        """Analyse user images: a path, PIL image or numpy array gives one
        :class:`~unihema.inference.results.Prediction`; a list or generator of them gives a list.

        ``tasks`` default to detection, FoV morphology and segmentation in one shared pass; further
        options (``sentence``, ``max_detections``, ``mask_threshold``, ``tiling`` ...) are those of
        :meth:`unihema.inference.predictor.Predictor.predict_iter`.
        """
        from unihema.inference.predictor import Predictor, is_single_image

        predictor = Predictor(self, device=device)
        results = predictor.predict(
            images,
            tasks=tasks,
            question=question,
            disease=disease,
            score_threshold=score_threshold,
            **options,
        )
        return results[0] if is_single_image(images) else results

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


def _check_image_memory(memory: ImageMemory, task: Task, text_memory: str, batch: int) -> None:
    if not task.is_text or text_memory != "fused":
        raise ValueError(
            f"image_memory feeds CMF: it applies to vqa and mlm with text_memory='fused', not "
            f"{task.value!r} with text_memory={text_memory!r}"
        )
    if len(memory) != batch:
        raise ValueError(f"image_memory holds {len(memory)} images, the batch {batch}")


def _check_cell_inputs(inputs: CellInputs, task: Task, batch: int) -> None:
    if not task.is_single_cell:
        raise ValueError(
            f"cell_inputs feed SCFE: they apply to classification and cell_morphology, not {task.value!r}"
        )
    if len(inputs) != batch:
        raise ValueError(f"cell_inputs hold {len(inputs)} crops, the batch {batch}")


def _check_text_memory(text_memory: str, task: Task) -> None:
    if text_memory not in TEXT_MEMORIES:
        raise ValueError(f"text_memory must be one of {TEXT_MEMORIES}, got {text_memory!r}")
    if text_memory != "fused" and not task.is_text:
        raise ValueError(f"text_memory={text_memory!r} applies to vqa and mlm only, not {task.value!r}")


def _layer_outputs(
    logits: Tensor, boxes: Tensor, hidden: Tensor, attribute_head: AttributeHead | None
) -> tuple[BoxOutput, list[BoxOutput]]:
    """Per-layer decoder outputs (L, B, Q, ...) -> the final layer and the L-1 earlier ones."""
    attributes = attribute_head(hidden) if attribute_head is not None else None
    layers = [
        BoxOutput(logits[i], boxes[i], None if attributes is None else attributes[i])
        for i in range(logits.shape[0])
    ]
    return layers[-1], layers[:-1]
