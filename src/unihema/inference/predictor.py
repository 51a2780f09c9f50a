"""The predictor: a model and images in, one :class:`~unihema.inference.results.Prediction` per image out.

Vision tasks on a field (detection, FoV morphology, segmentation) share one pass
(:meth:`UniHema.forward_fields`): the backbone, the encoders and the decoder run once per image (per tile
of a large image) for all of them, at the detection input size the model was trained with; segmentation
alone runs at its own trained size. Single-cell classification and cell morphology read the whole image
as one cell crop; VQA answers ``question`` about it and the masked-sentence task completes ``sentence``.

Fields larger than ``tiling.tile_size`` in either side are analysed in overlapping tiles
(:mod:`unihema.inference.tiling`) when ``tiling.mode`` is ``"auto"`` (the default) or ``"always"``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unihema.data.prompts import DEFAULT_DISEASE, VISION_PROMPT
from unihema.data.schema import Task
from unihema.data.text import MLM_PREFIX, VQA_PREFIX
from unihema.data.vocab import CELL_ATTRIBUTES, CELL_CLASSES, FOV_ATTRIBUTES
from unihema.inference import postprocess, tiling
from unihema.inference.image_processor import ImageInput, ImageProcessor, LoadedImage, load_image
from unihema.inference.results import Cell, Prediction
from unihema.model.text import MAX_NEW_TOKENS
from unihema.validation import is_int, require

DEFAULT_TASKS: tuple[Task, ...] = (Task.DETECTION, Task.FOV_MORPHOLOGY, Task.SEGMENTATION)
FIELD_TASKS = frozenset(DEFAULT_TASKS)
DEFAULT_MAX_DETECTIONS = 3000
"""Cap on cells per image: dense red-cell fields hold well over 1,000 cells."""
TILING_MODES = ("auto", "always", "never")


@dataclass
class TilingConfig:
    """How large fields are cut into tiles.

    Attributes:
        mode: ``"auto"`` tiles fields with a side longer than ``tile_size`` (default ``"auto"``);
            ``"always"`` tiles every field; ``"never"`` resizes every field whole.
        tile_size: tile side in original pixels; ``None`` (default) uses the model's longest detection
            input side (``det_max_size``), so tiles are analysed at the scale of a whole field.
        overlap: pixels shared by neighbouring tiles, at least the largest cell's diameter; ``None``
            (default) uses a quarter of the tile side.
        batch_size: tiles per forward pass (default 4).
        iou_threshold: class-wise NMS threshold that removes duplicates across seams (default 0.5).
    """

    mode: str = "auto"
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int = 4
    iou_threshold: float = 0.5

    def __post_init__(self) -> None:
        require(self.mode in TILING_MODES, "TilingConfig.mode", f"must be one of {TILING_MODES}", self.mode)
        size, overlap = self.tile_size, self.overlap
        require(
            size is None or (is_int(size) and size >= 32), "TilingConfig.tile_size", "must be >= 32 px", size
        )
        require(
            overlap is None or (is_int(overlap) and overlap >= 0),
            "TilingConfig.overlap",
            "must be >= 0",
            overlap,
        )
        require(is_int(self.batch_size) and self.batch_size >= 1, "TilingConfig.batch_size", "must be >= 1",
                self.batch_size)  # fmt: skip
        require(
            0.0 < self.iou_threshold <= 1.0,
            "TilingConfig.iou_threshold",
            "must be in (0, 1]",
            self.iou_threshold,
        )


@dataclass
class PredictOptions:
    """What to run and how to decode it (see :meth:`Predictor.predict`)."""

    tasks: tuple[Task, ...] = DEFAULT_TASKS
    question: str | None = None
    sentence: str | None = None
    disease: str | None = None
    score_threshold: float = 0.3
    max_detections: int = DEFAULT_MAX_DETECTIONS
    mask_threshold: float = 0.5
    num_beams: int = 1
    max_new_tokens: int = MAX_NEW_TOKENS
    tiling: TilingConfig = field(default_factory=TilingConfig)


def _tasks(tasks: Iterable[Task | str] | Task | str | None) -> tuple[Task, ...]:
    if tasks is None:
        return DEFAULT_TASKS
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    try:
        resolved = tuple(dict.fromkeys(Task(t) for t in tasks))
    except ValueError:
        raise ValueError(f"unknown task in {list(tasks)}; known: {[t.value for t in Task]}") from None
    if not resolved:
        raise ValueError("predict needs at least one task")
    return resolved


def is_single_image(images: Any) -> bool:
    """Whether ``images`` is one image (a file path, a PIL image or an array), not a folder or a collection."""
    if isinstance(images, (str, os.PathLike)):
        return not Path(images).is_dir()
    return isinstance(images, (np.ndarray, LoadedImage)) or hasattr(images, "getpixel")


def _images(images: Any) -> Iterator[ImageInput]:
    """One image, a folder (its image files, recursively, sorted), or an iterable (a generator) of them."""
    if is_single_image(images):
        yield images
        return
    if isinstance(images, (str, os.PathLike)):
        from unihema.inference.batch import collect_images

        yield from (job.path for job in collect_images([images]))
        return
    for item in images:
        yield from _images(item)


class Predictor:
    """Runs a :class:`~unihema.model.unihema.UniHema` on user images.

    Args:
        model: the model (its ``preprocessor`` gives the input sizes; library defaults when ``None``).
        device: where to run (default: the model's device).

    Example::

        predictor = Predictor(UniHema.from_pretrained("runs/demo/model"))
        for result in predictor.predict(["field1.png", "field2.png"], tasks=["detection", "segmentation"]):
            print(result.counts(), result.summary().differential)
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device).eval()
        self.processor = ImageProcessor(getattr(model, "preprocessor", None))
        self.untrained = getattr(model, "preprocessor", None) is None
        if self.untrained:
            warnings.warn(
                "the model records no training pre-processing (preprocessor_config.json): it is probably "
                "untrained, so its predictions are not meaningful",
                stacklevel=2,
            )

    # --------------------------------------------------------------------------------- public
    def predict(self, images: Any, **options: Any) -> list[Prediction]:
        """Analyse ``images`` (a path, PIL image, array, a folder, or a list / generator of them); see
        :meth:`predict_iter` for the options. Returns one :class:`Prediction` per image."""
        return list(self.predict_iter(images, **options))

    def predict_iter(
        self,
        images: Any,
        tasks: Iterable[Task | str] | Task | str | None = None,
        question: str | None = None,
        sentence: str | None = None,
        disease: str | None = None,
        score_threshold: float = 0.3,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        mask_threshold: float = 0.5,
        num_beams: int = 1,
        max_new_tokens: int = MAX_NEW_TOKENS,
        tiling: TilingConfig | dict | None = None,
    ) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per image, lazily (a generator of images stays lazy).

        Args:
            tasks: any of detection, fov_morphology, segmentation (fields), classification,
                cell_morphology (the image as one cell crop), vqa (needs ``question``), mlm (needs
                ``sentence`` with ``<extra_id_0>`` where the missing words go); default: the three field tasks.
            disease: the disease context of the vision prompt ("malaria", "leukemia", ...; default "blood").
            score_threshold: cells below this detection score are dropped (default 0.3).
            max_detections: most cells kept per image (default 3000).
            mask_threshold: foreground probability threshold (default 0.5).
            tiling: a :class:`TilingConfig` (or its fields as a dict) for large fields.
        """
        opts = PredictOptions(
            tasks=_tasks(tasks), question=question, sentence=sentence, disease=disease,
            score_threshold=float(score_threshold), max_detections=int(max_detections),
            mask_threshold=float(mask_threshold), num_beams=num_beams, max_new_tokens=max_new_tokens,
            tiling=tiling if isinstance(tiling, TilingConfig) else TilingConfig(**(tiling or {})),
        )  # fmt: skip
        if Task.VQA in opts.tasks and not (question and question.strip()):
            raise ValueError("the vqa task needs a question")
        if Task.MLM in opts.tasks and not (sentence and sentence.strip()):
            raise ValueError("the mlm task needs a sentence with <extra_id_0> where words are missing")
        if not 0.0 <= opts.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {opts.score_threshold}")
        if opts.max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {opts.max_detections}")
        for image in _images(images):
            yield self.predict_one(image, opts)

    @torch.inference_mode()
    def predict_one(self, image: ImageInput | LoadedImage, options: PredictOptions) -> Prediction:
        """Analyse one image with fully resolved ``options``."""
        start = time.perf_counter()
        loaded = image if isinstance(image, LoadedImage) else load_image(image)
        result = Prediction(
            source=loaded.source, image_size=loaded.size, tasks=tuple(t.value for t in options.tasks),
            question=options.question if Task.VQA in options.tasks else None, disease=options.disease,
            image=loaded.pixels,
        )  # fmt: skip
        if self.untrained:
            result.warnings.append("model without recorded training pre-processing (probably untrained)")
        timings = {"model": 0.0}
        field_tasks = [t for t in options.tasks if t in FIELD_TASKS]
        if field_tasks:
            self._analyse_field(loaded, field_tasks, options, result, timings)
        if any(task.is_single_cell for task in options.tasks):
            self._analyse_cell(loaded, options, result, timings)
        if Task.VQA in options.tasks:
            result.answer = self._generate(loaded, Task.VQA, VQA_PREFIX, options.question, options, timings)
        if Task.MLM in options.tasks:
            completion = self._generate(loaded, Task.MLM, MLM_PREFIX, options.sentence, options, timings)
            result.answer = completion if result.answer is None else result.answer
            if Task.VQA in options.tasks:
                result.warnings.append(f"masked-sentence completion: {completion}")
        timings["total"] = (time.perf_counter() - start) * 1000
        result.timings = {k: round(v, 3) for k, v in timings.items()}
        return result

    # -------------------------------------------------------------------------------- fields
    def _field_pipeline(self, tasks: Sequence[Task]) -> Task:
        # One shared pass runs at the detection input size; segmentation alone at its own.
        return Task.SEGMENTATION if list(tasks) == [Task.SEGMENTATION] else Task.DETECTION

    def _windows(self, size: tuple[int, int], config: TilingConfig) -> list[tiling.Window]:
        height, width = size
        tile = config.tile_size or self.processor.config.transforms.det_max_size
        if config.mode == "never" or (config.mode == "auto" and max(height, width) <= tile):
            return [tiling.Window(0, 0, height, width, 0, 0, height, width)]
        overlap = config.overlap if config.overlap is not None else tile // 4
        return tiling.make_windows(height, width, tile, min(overlap, tile - 1))

    def _analyse_field(
        self,
        loaded: LoadedImage,
        tasks: Sequence[Task],
        options: PredictOptions,
        result: Prediction,
        timings: dict[str, float],
    ) -> None:
        started = time.perf_counter()
        pipeline = self._field_pipeline(tasks)
        windows = self._windows(loaded.size, options.tiling)
        tiled = len(windows) > 1
        if tiled:
            result.warnings.append(f"analysed in {len(windows)} overlapping tiles")
        prompt = VISION_PROMPT.format(disease=options.disease or DEFAULT_DISEASE)
        wants_boxes = bool({Task.DETECTION, Task.FOV_MORPHOLOGY} & set(tasks))
        wants_attributes = Task.FOV_MORPHOLOGY in tasks
        mask = np.zeros(loaded.size, dtype=bool) if Task.SEGMENTATION in tasks else None
        boxes, scores, labels, attributes, attribute_scores = [], [], [], [], []
        model_ms = 0.0
        for group in tiling.batches(windows, options.tiling.batch_size):
            crops = [LoadedImage(loaded.pixels[w.y0 : w.y1, w.x0 : w.x1], loaded.source) for w in group]
            batch = self.processor(crops, pipeline).to(self.device)
            tick = time.perf_counter()
            outputs = self.model.forward_fields(
                batch.pixel_values, [prompt] * len(group), tasks=tasks, image_mask=batch.image_mask
            )
            model_ms += (time.perf_counter() - tick) * 1000
            if wants_boxes:
                decoded = postprocess.decode_detections(
                    outputs.detection, [w.size for w in group], options.max_detections,
                    score_threshold=options.score_threshold, one_per_query=True,
                    attribute_schema=FOV_ATTRIBUTES if wants_attributes else None,
                )  # fmt: skip
                for window, found in zip(group, decoded):
                    field_boxes = found.boxes.cpu() + torch.tensor([window.x0, window.y0] * 2)
                    keep = tiling.in_core(field_boxes, window) if tiled else slice(None)
                    boxes.append(field_boxes[keep])
                    scores.append(found.scores.cpu()[keep])
                    labels.append(found.labels.cpu()[keep])
                    if found.attributes is not None:
                        attributes.append(found.attributes.cpu()[keep])
                        attribute_scores.append(found.attribute_scores.cpu()[keep])
            if mask is not None:
                probabilities = postprocess.mask_probabilities(
                    outputs.segmentation.masks, batch.pixel_values.shape[-2:], batch.input_sizes,
                    [w.size for w in group],
                )  # fmt: skip
                for window, probability in zip(group, probabilities):
                    core = probability[
                        window.core_y0 - window.y0 : window.core_y1 - window.y0,
                        window.core_x0 - window.x0 : window.core_x1 - window.x0,
                    ]
                    mask[window.core_y0 : window.core_y1, window.core_x0 : window.core_x1] = (
                        (core > options.mask_threshold).cpu().numpy()
                    )
        if wants_boxes:
            result.cells = self._cells(
                boxes, scores, labels, attributes, attribute_scores, loaded.size, options, tiled
            )
        result.mask = mask
        timings["model"] += model_ms
        timings["field"] = (time.perf_counter() - started) * 1000

    def _cells(self, boxes, scores, labels, attributes, attribute_scores, size, options, tiled) -> list[Cell]:
        all_boxes, all_scores, all_labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        all_boxes[:, 0::2] = all_boxes[:, 0::2].clamp(0, size[1])
        all_boxes[:, 1::2] = all_boxes[:, 1::2].clamp(0, size[0])
        if tiled:
            order = tiling.merge_detections(
                all_boxes, all_scores, all_labels, options.tiling.iou_threshold, options.max_detections
            )
        else:
            order = all_scores.argsort(descending=True, stable=True)[: options.max_detections]
        values = torch.cat(attributes)[order] if attributes else None
        probabilities = torch.cat(attribute_scores)[order] if attribute_scores else None
        cells = []
        for rank, index in enumerate(order.tolist()):
            cell = Cell(
                box=tuple(float(v) for v in all_boxes[index]),
                label=int(all_labels[index]),
                score=float(all_scores[index]),
            )
            if values is not None:
                for a, (name, names) in enumerate(FOV_ATTRIBUTES):
                    cell.attributes[name] = names[int(values[rank, a])]
                    cell.attribute_scores[name] = float(probabilities[rank, a])
            cells.append(cell)
        return cells

    # ---------------------------------------------------------------------------- single cell
    def _analyse_cell(
        self, loaded: LoadedImage, options: PredictOptions, result: Prediction, timings: dict[str, float]
    ) -> None:
        batch = self.processor([loaded], Task.CLASSIFICATION).to(self.device)
        tick = time.perf_counter()
        output = self.model(batch.pixel_values, Task.CLASSIFICATION, image_mask=batch.image_mask)
        timings["model"] += (time.perf_counter() - tick) * 1000
        if Task.CLASSIFICATION in options.tasks:
            probabilities = postprocess.cell_class_probabilities(output.class_logits)[0].cpu().tolist()
            result.cell_class_probabilities = dict(zip(CELL_CLASSES, probabilities))
        if Task.CELL_MORPHOLOGY in options.tasks:
            values, probabilities = postprocess.decode_attributes(output.attribute_logits, CELL_ATTRIBUTES)
            result.cell_attributes = {
                name: (names[int(values[0, a])], float(probabilities[0, a]))
                for a, (name, names) in enumerate(CELL_ATTRIBUTES)
            }

    # ----------------------------------------------------------------------------------- text
    def _generate(
        self,
        loaded: LoadedImage,
        task: Task,
        prefix: str,
        text: str | None,
        options: PredictOptions,
        timings: dict[str, float],
    ) -> str:
        text = (text or "").strip()
        prompt = text if text.startswith(prefix.strip()) else prefix + text
        batch = self.processor([loaded], task).to(self.device)
        tick = time.perf_counter()
        (answer,) = self.model.generate_text(
            batch.pixel_values, [prompt], image_mask=batch.image_mask, num_beams=options.num_beams,
            max_new_tokens=options.max_new_tokens,
        )  # fmt: skip
        timings["model"] += (time.perf_counter() - tick) * 1000
        return answer.strip()
