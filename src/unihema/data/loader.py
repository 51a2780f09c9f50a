"""Model-ready batches: a lazy torch ``Dataset`` over samples, the batch ``collate`` and loader builders.

:func:`collate` produces exactly the batch contract of ``docs/architecture.md``::

    {"task": Task, "images": (B, 3, H, W) float, "image_mask": (B, H, W) bool (True = padding),
     "prompts": list[str], "targets": list[dict], "samples": list[Sample]}

Per-sample targets are built in :meth:`SampleDataset.__getitem__` (i.e. in the worker processes):

- detection / fov_morphology: ``boxes`` (N, 4) cxcywh normalised to the unpadded transformed image,
  ``labels`` (N,) int64, ``attributes`` (N, 6) int64 (-1 = unknown), ``class_mask``
  (len(DETECTION_CLASSES),) bool, ``size`` (2,) int64 unpadded (h, w);
- segmentation: ``mask`` (H, W) float32 in {0, 1} at the unpadded input size;
- classification: ``cell_class`` () int64;
- cell_morphology: ``cell_attributes`` (11,) int64, -1 = unknown;
- vqa, mlm: ``text`` str.

``class_mask`` says which detection classes the sample's dataset annotates, so that the detection loss
does not teach a class as background on datasets that never label it. It comes from a mapping
dataset name -> annotated class indices (see :func:`class_masks_from_read_results`).

Unreadable samples: images are decoded only when a batch needs them, so a file that is truncated,
corrupt or larger than PIL's decompression-bomb limit is found mid-run. Its error names the file
(:class:`~unihema.data.schema.UnreadableImageError`; a mask that does not fit its image raises
:class:`SampleLoadError`). Training loaders (``build_loader(train=True)``, the default of
``skip_unreadable``) skip it: the item is replaced by the next readable sample of the same task and a
:class:`UnreadableSampleWarning` names the file, so one bad file does not end a run; after
:data:`MAX_SUBSTITUTES` unreadable samples in a row the loader fails, naming the first. Evaluation
loaders raise instead (the evaluator names and leaves out each sample that fails).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torchvision import tv_tensors
from torchvision.ops import box_convert

from unihema.data.prompts import task_prompt
from unihema.data.sampler import MultiTaskBatchSampler
from unihema.data.schema import UNKNOWN, ReadResult, Sample, Task, UnreadableImageError
from unihema.data.transforms import Pipeline, TransformConfig, build_transforms
from unihema.data.vocab import CELL_ATTRIBUTES, DETECTION_CLASSES, detection_index

NUM_DETECTION_CLASSES = len(DETECTION_CLASSES)
MAX_SUBSTITUTES = 16
"""Readable samples looked for, one after another, in place of an unreadable one before a loader fails."""
ClassMasks = Mapping[str, Iterable[int]]
"""Dataset name -> indices into ``DETECTION_CLASSES`` that the dataset annotates."""


class SampleLoadError(ValueError):
    """A sample that cannot be turned into model inputs (no mask, a mask that does not fit its image, no
    target); the message names the sample."""


class UnreadableSampleWarning(UserWarning):
    """A training sample was skipped because its image or mask could not be read (the message names it)."""


def class_masks_from_read_results(results: Iterable[ReadResult]) -> dict[str, tuple[int, ...]]:
    """Annotated detection-class indices per dataset, from the readers' ``annotated_classes`` names.

    Names that are not detection classes (e.g. single-cell class names of a classification dataset)
    are ignored; a dataset without detection classes maps to an empty tuple.
    """
    masks: dict[str, tuple[int, ...]] = {}
    for result in results:
        indices: set[int] = set(masks.get(result.dataset, ()))
        for name in result.annotated_classes:
            try:
                indices.add(detection_index(name))
            except KeyError:
                continue
        masks[result.dataset] = tuple(sorted(indices))
    return masks


class SampleDataset(Dataset):
    """Loads and transforms samples lazily (in ``__getitem__``), so workers do the decoding.

    Args:
        samples: any indexable sequence of samples (a list, or a
            :class:`~unihema.data.manifest.ManifestDataset`). Tasks may be mixed: each item is
            transformed with its own task's pipeline.
        transforms: one pipeline for all items, or a mapping ``Task -> pipeline``; None builds the
            default evaluation pipelines of :mod:`unihema.data.transforms`.
        class_masks: dataset name -> annotated detection-class indices. None marks every class as
            annotated; otherwise a box-task sample of a dataset missing from the mapping is an error.
        skip_unreadable: replace a sample whose image or mask cannot be read by the next readable sample
            of the same task, with a warning naming the file (see the module docstring); default False:
            raise the error, which names the file.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transforms: Pipeline | Mapping[Task, Pipeline] | None = None,
        class_masks: ClassMasks | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        self.samples = samples
        self.transforms = transforms
        self.skip_unreadable = skip_unreadable
        self._default_pipelines: dict[Task, Pipeline] = {}
        self.class_masks: dict[str, torch.Tensor] | None = None
        if class_masks is not None:
            self.class_masks = {name: _class_mask(name, idx) for name, idx in class_masks.items()}

    def __len__(self) -> int:
        return len(self.samples)

    def pipeline(self, task: Task) -> Pipeline:
        if self.transforms is None:
            if task not in self._default_pipelines:
                self._default_pipelines[task] = build_transforms(task, train=False)
            return self._default_pipelines[task]
        if isinstance(self.transforms, Mapping):
            try:
                return self.transforms[task]
            except KeyError:
                raise KeyError(f"SampleDataset: no transform given for task {task.value!r}") from None
        return self.transforms

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        if not self.skip_unreadable:
            return self._item(sample)
        errors: list[Exception] = []
        for candidate in self._same_task_neighbours(index, sample):
            try:
                return self._item(candidate)
            except (UnreadableImageError, SampleLoadError) as error:
                errors.append(error)
                warnings.warn(
                    f"skipped sample {candidate.dataset}/{candidate.sample_id}: {error}; the next readable "
                    f"{sample.task.value} sample takes its place",
                    UnreadableSampleWarning,
                    stacklevel=2,
                )
        raise SampleLoadError(
            f"no readable {sample.task.value} sample near index {index}: {len(errors)} in a row could not be "
            f"read; first: {errors[0]}"
        )

    def _same_task_neighbours(self, index: int, sample: Sample) -> Iterable[Sample]:
        """``sample``, then the samples after it, then the ones before it, of its task (multi-task
        datasets hold each task in one block), at most :data:`MAX_SUBSTITUTES` + 1 in all."""
        yield sample
        given = 1
        for step in (1, -1):
            position = index + step
            while given <= MAX_SUBSTITUTES and 0 <= position < len(self):
                neighbour = self.samples[position]
                if neighbour.task is not sample.task:
                    break
                yield neighbour
                given += 1
                position += step

    def _item(self, sample: Sample) -> dict[str, Any]:
        where = f"sample {sample.dataset}/{sample.sample_id}"
        image = sample.load_image()
        height, width = image.height, image.width
        data: dict[str, Any] = {
            "image": tv_tensors.Image(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        }
        task = sample.task
        if task.has_boxes:
            data["boxes"] = tv_tensors.BoundingBoxes(
                torch.from_numpy(sample.boxes.copy()), format="XYXY", canvas_size=(height, width)
            )
            data["labels"] = torch.from_numpy(sample.box_labels.copy())
            data["attributes"] = torch.from_numpy(sample.box_attributes.copy())
        elif task is Task.SEGMENTATION:
            mask = sample.load_mask()
            if mask is None:
                raise SampleLoadError(f"{where}: segmentation sample without a mask")
            if mask.shape != (height, width):
                raise SampleLoadError(
                    f"{where}: mask shape {mask.shape} differs from image size {(height, width)}"
                )
            data["mask"] = tv_tensors.Mask(torch.from_numpy(mask.astype(np.uint8)))
        out = self.pipeline(task)(data)
        image_tensor = out["image"].as_subclass(torch.Tensor)
        return {
            "task": task,
            "image": image_tensor,
            "target": self._target(sample, out, image_tensor, where),
            "prompt": task_prompt(sample),
            "sample": sample,
        }

    def _target(self, sample: Sample, out: dict[str, Any], image: torch.Tensor, where: str) -> dict[str, Any]:
        task = sample.task
        h, w = int(image.shape[-2]), int(image.shape[-1])
        if task.has_boxes:
            boxes = out["boxes"].as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            return {
                "boxes": box_convert(boxes, "xyxy", "cxcywh") / scale,
                "labels": out["labels"].to(torch.int64),
                "attributes": out["attributes"].to(torch.int64),
                "class_mask": self._class_mask_of(sample.dataset),
                "size": torch.tensor([h, w], dtype=torch.int64),
            }
        if task is Task.SEGMENTATION:
            return {"mask": (out["mask"].as_subclass(torch.Tensor) > 0).to(torch.float32)}
        if task is Task.CLASSIFICATION:
            if sample.cell_class is None:
                raise SampleLoadError(f"{where}: classification sample without cell_class")
            return {"cell_class": torch.tensor(sample.cell_class, dtype=torch.int64)}
        if task is Task.CELL_MORPHOLOGY:
            if sample.cell_attributes is None:
                attributes = torch.full((len(CELL_ATTRIBUTES),), UNKNOWN, dtype=torch.int64)
            else:
                attributes = torch.from_numpy(sample.cell_attributes.copy())
            return {"cell_attributes": attributes}
        if sample.text_target is None:
            raise SampleLoadError(f"{where}: {task.value} sample without text_target")
        return {"text": sample.text_target}

    def _class_mask_of(self, dataset: str) -> torch.Tensor:
        if self.class_masks is None:
            return torch.ones(NUM_DETECTION_CLASSES, dtype=torch.bool)
        try:
            return self.class_masks[dataset].clone()
        except KeyError:
            raise KeyError(
                f"dataset {dataset!r} has no entry in class_masks (known: {sorted(self.class_masks)})"
            ) from None


def _class_mask(dataset: str, indices: Iterable[int]) -> torch.Tensor:
    mask = torch.zeros(NUM_DETECTION_CLASSES, dtype=torch.bool)
    for index in indices:
        if not 0 <= int(index) < NUM_DETECTION_CLASSES:
            raise ValueError(
                f"class_masks[{dataset!r}]: index {index} outside DETECTION_CLASSES (0..{NUM_DETECTION_CLASSES - 1})"
            )
        mask[int(index)] = True
    return mask


def pad_images(images: Sequence[torch.Tensor], pad_to_multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, h, w) images zero-padded at the bottom/right into one (B, C, H, W) batch, H and W the largest
    sizes rounded up to ``pad_to_multiple``; returns it with ``image_mask`` (B, H, W), True on the padding."""
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
    max_h = -(-max(int(image.shape[-2]) for image in images) // pad_to_multiple) * pad_to_multiple
    max_w = -(-max(int(image.shape[-1]) for image in images) // pad_to_multiple) * pad_to_multiple
    first = images[0]
    batch = torch.zeros((len(images), first.shape[0], max_h, max_w), dtype=first.dtype)
    image_mask = torch.ones((len(images), max_h, max_w), dtype=torch.bool)
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        batch[i, :, :h, :w] = image
        image_mask[i, :h, :w] = False
    return batch, image_mask


def collate(items: Sequence[dict[str, Any]], pad_to_multiple: int = 1) -> dict[str, Any]:
    """One task-homogeneous batch in the contract of ``docs/architecture.md``.

    Images are zero-padded at the bottom/right to the batch's largest height and width (rounded up to
    ``pad_to_multiple``); ``image_mask`` is True on the padding. Mixed tasks raise ``ValueError``
    (use :func:`collate_by_task` for joint multi-task groups).
    """
    if not items:
        raise ValueError("collate: empty batch")
    if pad_to_multiple < 1:
        raise ValueError(f"collate: pad_to_multiple must be >= 1, got {pad_to_multiple}")
    tasks = {item["task"] for item in items}
    if len(tasks) != 1:
        raise ValueError(f"collate: a batch must hold one task, got {sorted(t.value for t in tasks)}")
    images, image_mask = pad_images([item["image"] for item in items], pad_to_multiple)
    return {
        "task": tasks.pop(),
        "images": images,
        "image_mask": image_mask,
        "prompts": [item["prompt"] for item in items],
        "targets": [item["target"] for item in items],
        "samples": [item["sample"] for item in items],
    }


def collate_by_task(items: Sequence[dict[str, Any]], pad_to_multiple: int = 1) -> dict[Task, dict[str, Any]]:
    """Split a mixed group into one :func:`collate` batch per task, in order of first appearance.

    Used with ``MultiTaskBatchSampler(mode="joint")``: the trainer runs the model once per batch of
    the returned dict and sums the task losses before one optimiser step.
    """
    groups: dict[Task, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(item["task"], []).append(item)
    return {task: collate(group, pad_to_multiple) for task, group in groups.items()}


def build_loader(
    samples: Sequence[Sample],
    task: Task | str | None,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    sampler: Sampler | None = None,
    *,
    transform_config: TransformConfig | None = None,
    class_masks: ClassMasks | None = None,
    seed: int = 0,
    drop_last: bool | None = None,
    pin_memory: bool = False,
    pad_to_multiple: int = 1,
    skip_unreadable: bool | None = None,
    unaugmented_tasks: Collection[Task | str] = (),
) -> DataLoader:
    """A ``DataLoader`` yielding contract batches.

    Args:
        samples: the samples (all of ``task`` unless a multi-task ``sampler`` is given).
        task: the task of every sample; None only together with a :class:`MultiTaskBatchSampler`.
        batch_size: samples per batch (ignored when ``sampler`` is a :class:`MultiTaskBatchSampler`,
            which fixes its own batch sizes).
        train: training augmentation, shuffling (seeded by ``seed``) and ``drop_last`` by default.
        num_workers: worker processes decoding and transforming images (0 = in the main process).
        sampler: a :class:`MultiTaskBatchSampler` over ``samples`` (indices into the concatenation it
            documents), or any per-index ``Sampler``. ``mode="joint"`` batches are dicts ``Task -> batch``
            (see :func:`collate_by_task`).
        transform_config: sizes and augmentation; defaults of :class:`TransformConfig` when None.
        class_masks: annotated detection classes per dataset (see :class:`SampleDataset`).
        seed: seed of the shuffling generator (a multi-task sampler has its own seed).
        drop_last: drop the last incomplete batch; defaults to ``train``.
        pin_memory: pin batch tensors (for CUDA training).
        pad_to_multiple: round the padded batch size up to this multiple (e.g. the backbone stride).
        skip_unreadable: replace unreadable samples, warning (see the module docstring); defaults to ``train``.
        unaugmented_tasks: tasks whose training inputs are resized and normalised but never flipped or
            colour-jittered (:meth:`TransformConfig.without_augmentation`), such as a stage's cached crops.
    """
    if batch_size < 1:
        raise ValueError(f"build_loader: batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"build_loader: num_workers must be >= 0, got {num_workers}")
    config = transform_config or TransformConfig()
    multitask = isinstance(sampler, MultiTaskBatchSampler)
    if multitask:
        if len(samples) != sampler.total_size:
            raise ValueError(
                f"build_loader: the multi-task sampler indexes {sampler.total_size} samples, got {len(samples)}"
            )
        tasks = list(sampler.tasks)
    else:
        if task is None:
            raise ValueError("build_loader: task is required unless a MultiTaskBatchSampler is given")
        task = Task(task)
        tasks = [task]
        _check_single_task(samples, task)
    fixed = {Task(t) for t in unaugmented_tasks}
    plain = config.without_augmentation()
    transforms = {t: build_transforms(t, train=train, config=plain if t in fixed else config) for t in tasks}
    skip = train if skip_unreadable is None else skip_unreadable
    dataset = SampleDataset(samples, transforms, class_masks=class_masks, skip_unreadable=skip)

    # A partial of a module-level function pickles, so spawn-started workers can use it too.
    joint = multitask and sampler.mode == "joint"
    collate_fn = partial(collate_by_task if joint else collate, pad_to_multiple=pad_to_multiple)
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "collate_fn": collate_fn,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
    }
    if multitask:
        return DataLoader(dataset, batch_sampler=sampler, **common)
    if sampler is None:
        generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(dataset, generator=generator) if train else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train if drop_last is None else drop_last,
        **common,
    )


def build_multitask_loader(
    samples_by_task: Mapping[Task, Sequence[Sample]],
    k_per_task: Mapping[Task, int] | int,
    train: bool,
    num_workers: int = 0,
    *,
    mode: str = "round_robin",
    dataset_weights: Mapping[str, float] | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    transform_config: TransformConfig | None = None,
    class_masks: ClassMasks | None = None,
    pin_memory: bool = False,
    pad_to_multiple: int = 1,
    unaugmented_tasks: Collection[Task | str] = (),
) -> DataLoader:
    """A loader over several tasks at once, batched by a :class:`MultiTaskBatchSampler`.

    The dataset is the concatenation of ``samples_by_task`` in key order (the index space of the
    sampler). Call ``loader.batch_sampler.set_epoch(epoch)`` at the start of each epoch. The keyword
    options are :func:`build_loader`'s.
    """
    sampler = MultiTaskBatchSampler(
        samples_by_task,
        k_per_task,
        dataset_weights=dataset_weights,
        seed=seed,
        rank=rank,
        world_size=world_size,
        mode=mode,
        shuffle=train,
    )
    concatenated = ConcatenatedSamples([samples_by_task[t] for t in sampler.tasks])
    return build_loader(
        concatenated,
        None,
        1,
        train,
        num_workers,
        sampler,
        transform_config=transform_config,
        class_masks=class_masks,
        pin_memory=pin_memory,
        pad_to_multiple=pad_to_multiple,
        unaugmented_tasks=unaugmented_tasks,
    )


class ConcatenatedSamples(Sequence[Sample]):
    """Read-only concatenation of sample sequences (lists, manifest views), without copying or reading them."""

    def __init__(self, parts: Sequence[Sequence[Sample]]) -> None:
        self.parts = list(parts)
        self.ends = np.cumsum([len(p) for p in self.parts]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range ({len(self)} samples)")
        part = int(np.searchsorted(self.ends, index, side="right"))
        start = int(self.ends[part - 1]) if part else 0
        return self.parts[part][index - start]


def _check_single_task(samples: Sequence[Sample], task: Task) -> None:
    # Cheap for lists; a manifest-backed sequence is trusted (checked per item by collate).
    if isinstance(samples, list):
        for sample in samples:
            if sample.task is not task:
                raise ValueError(
                    f"build_loader(task={task.value!r}): sample {sample.dataset}/{sample.sample_id} has "
                    f"task {sample.task.value!r}"
                )
