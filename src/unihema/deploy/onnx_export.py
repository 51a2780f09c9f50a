"""ONNX export of the vision path of UniHema: detection, segmentation and single-cell classification.

Each task is wrapped in a small adapter that returns a tuple of tensors and traced with PyTorch's
TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``; the default ``torch.export``-based
exporter needs ``onnxscript``). The layout of every file (inputs, outputs, shapes, which dimensions are
dynamic, the metadata) is described in ``docs/onnx.md``; in short:

- inputs ``pixel_values`` (B, 3, H, W) float32 and ``image_mask`` (B, H, W) bool (True on padding), plus,
  for detection and segmentation, the prompt as token ids: ``input_ids`` (B, L) int64 and
  ``attention_mask`` (B, L) int64 (1 = token), L = ``text.max_length``. The text encoder E_T is inside
  the graph (TGVR reads its states); the tokenizer is not, so the default vision prompt's ids are stored
  in the file's metadata (``unihema.prompt_ids``) for callers without one.
- only B is dynamic. H and W are fixed at export (the model's trained input size from its
  ``preprocessor_config.json``, or ``image_size``): the multi-scale deformable attention, the encoder and
  the proposal generation read the level sizes as Python integers, which tracing records as constants.
  L is fixed at ``text.max_length`` because ``nn.MultiheadAttention`` records the key length as a
  constant; prompts are padded to it, which leaves the result unchanged where padded tokens are masked
  (``hemaformer.text_padding_masks``) or the model pads to that length itself (``text.pad_to_max_length``).
- outputs: detection ``logits`` (B, Q, C), ``boxes`` (B, Q, 4) and, with ``fov_attributes``,
  ``attributes`` (B, Q, A); segmentation ``mask_logits`` (B, 1, H, W) (or ``hemaformer.qgmf_mask_size``
  square); classification ``class_logits`` (B, K) and ``attribute_logits`` (B, A'). Post-processing
  stays in Python (:mod:`unihema.inference.postprocess`).

``GroupNorm`` is translated with precise statistics (:mod:`unihema.deploy.onnx_symbolics`): the default
translation is off by up to ~1e-3 in onnxruntime at the detection size, enough to reorder the decoder's
query selection.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unihema.atomic import atomic_write_bytes
from unihema.data.prompts import DEFAULT_DISEASE, VISION_PROMPT
from unihema.data.schema import Task
from unihema.data.vocab import CELL_CLASSES, DETECTION_CLASSES
from unihema.deploy.onnx_symbolics import precise_symbolics
from unihema.inference.preprocessor import PreprocessorConfig
from unihema.validation import is_int, require

EXPORT_TASKS: tuple[str, ...] = (Task.DETECTION.value, Task.SEGMENTATION.value, Task.CLASSIFICATION.value)
DEFAULT_OPSET = 17
MIN_OPSET = 16  # GridSample, the deformable attention's bilinear sampling, entered ONNX in opset 16
MAX_OPSET = 20  # the highest opset the TorchScript-based exporter writes
EXPORT_BATCH = 2  # traced with two images so that no size-1 broadcast of the batch is recorded
TOLERANCE = 1e-4
"""Largest absolute difference accepted between onnxruntime's and PyTorch's outputs (float32 kernels
accumulate in a different order; see ``docs/onnx.md`` for the measured differences)."""

IMAGE_INPUTS = ("pixel_values", "image_mask")
PROMPT_INPUTS = ("input_ids", "attention_mask")
BATCH_AXIS = "batch"
METADATA_PREFIX = "unihema."
_ONNX_MISSING = "ONNX export needs the onnx and onnxruntime packages: pip install 'unihema[onnx]'"


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        task: ``"detection"``, ``"segmentation"`` or ``"classification"``.
        opset: the ONNX opset of the graph.
        image_size: the static (H, W) of ``pixel_values`` and ``image_mask``.
        prompt_length: the static L of ``input_ids`` and ``attention_mask``, or ``None`` (classification
            has no prompt).
        inputs: the graph's input names, in order.
        outputs: the graph's output names, in order.
        prompt: the default prompt whose token ids the metadata holds, or ``None``.
    """

    path: Path
    task: str
    opset: int
    image_size: tuple[int, int]
    prompt_length: int | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    prompt: str | None = None


# ------------------------------------------------------------------------------------------- adapters
@contextlib.contextmanager
def _given_prompt_tokens(text: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Iterator[None]:
    """Make ``text.tokenize`` return the given token ids: :meth:`UniHema.forward_fields` takes prompt
    strings, the graph takes their ids (tokenizing is Python, outside the graph). Meant for tracing: no
    other thread may use the model meanwhile."""
    text.tokenize = lambda texts, device=None: (input_ids, attention_mask)
    try:
        yield
    finally:
        del text.tokenize


class FieldAdapter(nn.Module):
    """Detection or segmentation of fields of view through :meth:`UniHema.forward_fields`, as tensors.

    Returns ``(logits, boxes)`` (plus ``attributes`` with ``fov_attributes``) for detection and
    ``(mask_logits,)`` for segmentation.
    """

    def __init__(self, model: nn.Module, task: Task, fov_attributes: bool = False) -> None:
        super().__init__()
        self.model = model
        self.task = task
        if task is Task.SEGMENTATION:
            self.tasks: tuple[Task, ...] = (Task.SEGMENTATION,)
        else:
            self.tasks = (Task.DETECTION, Task.FOV_MORPHOLOGY) if fov_attributes else (Task.DETECTION,)

    def forward(
        self, pixel_values: Tensor, image_mask: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, ...]:
        placeholders = [""] * pixel_values.shape[0]
        with _given_prompt_tokens(self.model.text, input_ids, attention_mask):
            vision = self.model.forward_fields(pixel_values, placeholders, self.tasks, image_mask)
        if self.task is Task.SEGMENTATION:
            return (vision.segmentation.masks,)
        detection = vision.detection
        if Task.FOV_MORPHOLOGY in self.tasks:
            return detection.logits, detection.boxes, detection.attributes
        return detection.logits, detection.boxes


class CellAdapter(nn.Module):
    """Single-cell classification: ``(class_logits, attribute_logits)`` of ``model(..., "classification")``
    (the cell-morphology logits are the attribute logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor, image_mask: Tensor) -> tuple[Tensor, Tensor]:
        cells = self.model(pixel_values, Task.CLASSIFICATION, image_mask=image_mask)
        return cells.class_logits, cells.attribute_logits


def _input_names(adapter: nn.Module) -> tuple[str, ...]:
    return IMAGE_INPUTS if isinstance(adapter, CellAdapter) else IMAGE_INPUTS + PROMPT_INPUTS


def _adapter(model: nn.Module, task: Task, fov_attributes: bool) -> tuple[nn.Module, tuple[str, ...]]:
    """The adapter of ``task`` and its output names."""
    if task is Task.CLASSIFICATION:
        return CellAdapter(model), ("class_logits", "attribute_logits")
    if task is Task.SEGMENTATION:
        return FieldAdapter(model, task), ("mask_logits",)
    names = ("logits", "boxes", "attributes") if fov_attributes else ("logits", "boxes")
    return FieldAdapter(model, task, fov_attributes), names


# --------------------------------------------------------------------------------------------- inputs
def export_task(task: Task | str) -> Task:
    """``task`` as a :class:`Task` when it can be exported; a ``ValueError`` that says why otherwise."""
    value = task.value if isinstance(task, Task) else str(task)
    if value in EXPORT_TASKS:
        return Task(value)
    hints = {
        Task.FOV_MORPHOLOGY.value: "detection with fov_attributes=True, --fov-attributes, has its logits",
        Task.CELL_MORPHOLOGY.value: "the classification export has the cell-attribute logits",
        Task.VQA.value: "the text decoder's autoregressive generation stays in PyTorch",
        Task.MLM.value: "the text decoder's autoregressive generation stays in PyTorch",
    }
    reason = f" ({hints[value]})" if value in hints else ""
    raise ValueError(f"task {value!r} cannot be exported to ONNX{reason}; exportable: {list(EXPORT_TASKS)}")


def _preprocessor(model: nn.Module) -> PreprocessorConfig:
    return getattr(model, "preprocessor", None) or PreprocessorConfig()


def export_image_size(model: nn.Module, task: Task | str) -> tuple[int, int]:
    """The (H, W) a task is exported at: its trained input size, padded to the model's multiple.

    Segmentation and classification use their square ``seg_size`` / ``cls_size``. Detection images are
    resized to a shorter side of ``det_eval_size`` with the longer side capped at ``det_max_size``, so the
    square of ``det_max_size`` holds every evaluation-sized field in either orientation (``image_mask``
    marks the rest as padding).
    """
    task = export_task(task)
    preprocessor = _preprocessor(model)
    transforms, multiple = preprocessor.transforms, preprocessor.pad_to_multiple
    side = transforms.input_size(task) or transforms.det_max_size
    side = -(-side // multiple) * multiple
    return side, side


def _check_image_size(model: nn.Module, image_size: Any) -> tuple[int, int]:
    multiple = _preprocessor(model).pad_to_multiple
    valid = (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(is_int(v) and v > 0 and v % multiple == 0 for v in image_size)
    )
    require(valid, "image_size", f"must be (height, width), positive multiples of {multiple}", image_size)
    return int(image_size[0]), int(image_size[1])


def default_prompt(disease: str | None = None) -> str:
    """The vision prompt the predictor uses (``disease`` defaults to the generic one)."""
    return VISION_PROMPT.format(disease=disease or DEFAULT_DISEASE)


def prompt_tokens(model: nn.Module, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask (B, ``text.max_length``) int64 of ``prompts``, padded to the exported
    prompt length, on the model's device."""
    text = model.text
    ids, mask = text.tokenize(prompts, _device(model))
    padding = text.max_length - ids.shape[1]
    pad_id = text.tokenizer.pad_token_id or 0
    return F.pad(ids, (0, padding), value=pad_id).long(), F.pad(mask, (0, padding), value=0).long()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def example_inputs(
    model: nn.Module,
    task: Task | str,
    batch: int = EXPORT_BATCH,
    image_size: tuple[int, int] | None = None,
    padded_width: int = 0,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Random normalised images with the default prompt, named as the graph's inputs.

    ``padded_width`` columns on the right of the last image are marked as padding (and zeroed), as a
    batch of unequal images is padded.
    """
    task = export_task(task)
    height, width = image_size or export_image_size(model, task)
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, height, width, generator=generator)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    if padded_width:
        mask[-1, :, width - padded_width :] = True
        pixels[-1, :, :, width - padded_width :] = 0.0
    device = _device(model)
    inputs = {"pixel_values": pixels.to(device), "image_mask": mask.to(device)}
    if task is not Task.CLASSIFICATION:
        inputs["input_ids"], inputs["attention_mask"] = prompt_tokens(model, [default_prompt()] * batch)
    return inputs


def _check_prompt_padding(model: nn.Module) -> None:
    config = model.config
    if not (config.hemaformer.text_padding_masks or config.text.pad_to_max_length):
        raise ValueError(
            "the ONNX graph pads prompts to text.max_length, which changes this model's result: it "
            "attends to padded prompt tokens (hemaformer.text_padding_masks is off) yet pads prompts only "
            "to the longest one (text.pad_to_max_length is off)"
        )


# --------------------------------------------------------------------------------------------- export
def export_onnx(
    model: nn.Module,
    out: str | os.PathLike[str],
    task: Task | str = Task.DETECTION,
    opset: int = DEFAULT_OPSET,
    image_size: tuple[int, int] | None = None,
    fov_attributes: bool = False,
) -> OnnxExport:
    """Export ``task``'s vision path of ``model`` to the ONNX file ``out`` (written atomically).

    Args:
        model: a :class:`~unihema.model.unihema.UniHema` (put in eval mode for the export, then restored).
        out: the ``.onnx`` file to write.
        task: ``"detection"``, ``"segmentation"`` or ``"classification"``.
        opset: ONNX opset, 16 to 20 (GridSample needs 16).
        image_size: static (H, W) of the graph; default :func:`export_image_size`.
        fov_attributes: detection only: add the FoV attribute logits output ``attributes``.

    Returns:
        What was written (:class:`OnnxExport`).
    """
    onnx = _import("onnx")
    task = export_task(task)
    require(is_int(opset) and MIN_OPSET <= opset <= MAX_OPSET, "opset",
            f"must be an integer from {MIN_OPSET} (GridSample) to {MAX_OPSET}", opset)  # fmt: skip
    require(not fov_attributes or task is Task.DETECTION, "fov_attributes", "applies to detection only")
    size = _check_image_size(model, image_size) if image_size is not None else export_image_size(model, task)
    if task is not Task.CLASSIFICATION:
        _check_prompt_padding(model)
    adapter, output_names = _adapter(model, task, fov_attributes)
    inputs = example_inputs(model, task, image_size=size)
    input_names = _input_names(adapter)
    was_training = model.training
    buffer = io.BytesIO()
    try:
        trace_to_onnx(
            adapter, tuple(inputs[name] for name in input_names), buffer, opset, input_names, output_names
        )
    finally:
        model.train(was_training)
    graph = onnx.load_from_string(buffer.getvalue())
    prompt = None if task is Task.CLASSIFICATION else default_prompt()
    metadata = _metadata(model, task, size, output_names, prompt, inputs)
    onnx.helper.set_model_props(graph, {METADATA_PREFIX + key: value for key, value in metadata.items()})
    onnx.checker.check_model(graph)
    path = atomic_write_bytes(out, graph.SerializeToString())
    return OnnxExport(
        path=path, task=task.value, opset=opset, image_size=size,
        prompt_length=None if prompt is None else int(inputs["input_ids"].shape[1]),
        inputs=input_names, outputs=output_names, prompt=prompt,
    )  # fmt: skip


def trace_to_onnx(
    module: nn.Module,
    args: tuple[Tensor, ...],
    destination: str | os.PathLike[str] | io.BytesIO,
    opset: int,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
) -> None:
    """Trace ``module`` (in eval mode) on ``args`` into ONNX with the TorchScript-based exporter, dim 0 of
    every input and output dynamic (``batch``) and GroupNorm translated precisely."""
    # The exporter restores the module's mode afterwards: eval, so that it does not switch dropout on.
    module.eval()
    with torch.no_grad(), warnings.catch_warnings(), precise_symbolics(opset):
        # Tracing warns at every shape check and level size it records as a constant: those make H, W
        # and L static, as documented; the legacy exporter warns that it is not the default.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings(
            "ignore", message=".*TorchScript-based ONNX export", category=DeprecationWarning
        )
        torch.onnx.export(
            module, args, destination, dynamo=False, opset_version=opset,
            input_names=list(input_names), output_names=list(output_names),
            dynamic_axes={name: {0: BATCH_AXIS} for name in (*input_names, *output_names)},
        )  # fmt: skip


def _metadata(
    model: nn.Module,
    task: Task,
    size: tuple[int, int],
    outputs: tuple[str, ...],
    prompt: str | None,
    inputs: dict[str, Tensor],
) -> dict[str, str]:
    """The file's ``metadata_props`` (all JSON or plain strings), read back by
    :func:`compare_with_onnxruntime` and by callers that prepare inputs without this package."""
    metadata = {
        "task": task.value,
        "image_size": json.dumps(list(size)),
        "preprocessor": json.dumps(_preprocessor(model).to_dict()),
        "outputs": json.dumps(list(outputs)),
    }
    if prompt is not None:
        metadata["prompt"] = prompt
        metadata["prompt_ids"] = json.dumps(inputs["input_ids"][0].tolist())
        metadata["prompt_attention_mask"] = json.dumps(inputs["attention_mask"][0].tolist())
    heads = model.config.heads
    if task is Task.DETECTION and heads.num_detection_classes == len(DETECTION_CLASSES):
        metadata["classes"] = json.dumps(list(DETECTION_CLASSES))
    if task is Task.CLASSIFICATION and heads.num_cell_classes == len(CELL_CLASSES):
        metadata["classes"] = json.dumps(list(CELL_CLASSES))
    if "attributes" in outputs:
        metadata["attributes"] = json.dumps(model.box_attribute_head.schema)
    if task is Task.CLASSIFICATION:
        metadata["attributes"] = json.dumps(model.cell_attribute_head.schema)
    return metadata


def load_for_export(directory: str | os.PathLike[str]) -> nn.Module:
    """The model saved in ``directory`` by ``save_pretrained``, on the CPU."""
    from unihema.model.unihema import UniHema

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model folder {directory} does not exist (expected a save_pretrained folder)"
        )
    return UniHema.from_pretrained(directory)


def export_pretrained(
    directory: str | os.PathLike[str], out: str | os.PathLike[str], **options: Any
) -> OnnxExport:
    """:func:`export_onnx` of the model saved in ``directory``; a bad ``task`` fails before loading it."""
    export_task(options.get("task", Task.DETECTION))
    return export_onnx(load_for_export(directory), out, **options)


# ----------------------------------------------------------------------------------------- checking
def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``unihema.*`` metadata of an exported file, without the prefix."""
    onnx = _import("onnx")
    graph = onnx.load(str(path), load_external_data=False)
    return {
        prop.key[len(METADATA_PREFIX) :]: prop.value
        for prop in graph.metadata_props
        if prop.key.startswith(METADATA_PREFIX)
    }


def run_onnxruntime(path: str | os.PathLike[str], inputs: dict[str, Tensor]) -> dict[str, Any]:
    """onnxruntime's outputs (numpy arrays by output name) of the file at ``path`` on the CPU."""
    onnxruntime = _import("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {name: tensor.cpu().numpy() for name, tensor in inputs.items()})
    return dict(zip(names, values))


def compare_with_onnxruntime(
    model: nn.Module, path: str | os.PathLike[str], inputs: dict[str, Tensor]
) -> dict[str, float]:
    """Largest absolute difference, per output, between onnxruntime on the file at ``path`` and
    ``model`` (PyTorch) on the same ``inputs`` (e.g. :func:`example_inputs`)."""
    metadata = read_metadata(path)
    outputs = json.loads(metadata["outputs"])
    adapter, names = _adapter(model, export_task(metadata["task"]), "attributes" in outputs)
    was_training = model.training
    adapter.eval()
    try:
        with torch.no_grad():
            expected = dict(zip(names, adapter(*(inputs[name] for name in _input_names(adapter)))))
    finally:
        model.train(was_training)
    got = run_onnxruntime(path, inputs)
    return {name: float((torch.from_numpy(got[name]) - expected[name].cpu()).abs().max()) for name in names}


def _import(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(_ONNX_MISSING) from None
