"""The corpus: :class:`SyntheticCorpus` gives the seeded train/val/test split of the fields, generates
them on demand (cached, or all at once over worker processes) and turns each field into the samples of
every task (detection, FoV morphology, segmentation, single-cell classification and morphology, VQA and
masked sentences); :func:`generate_corpus` builds, generates and optionally writes one in a call."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from unihema.data.schema import SPLITS, ArrayImage, ArrayMask, Sample, Task
from unihema.data.synthetic.config import SyntheticConfig
from unihema.data.synthetic.crops import CellCrop, select_crops
from unihema.data.synthetic.field import FieldOfView, field_rng, generate_field
from unihema.data.synthetic.labels import CELL_CLASS_NAMES, DATASET_NAME, DETECTION_LABELS, WBC_TYPES
from unihema.data.synthetic.writer import write_corpus
from unihema.data.text import text_samples
from unihema.data.vocab import cell_index


class SyntheticCorpus:
    """The synthetic corpus: deterministic fields, splits and samples for every task.

    Fields are generated on first use and cached (``cache=False`` regenerates them each time, trading
    time for memory; the pixels are identical either way).

    Example::

        corpus = SyntheticCorpus(SyntheticConfig(n_images=200, seed=1))
        train = corpus.samples(Task.DETECTION, "train")
        corpus.write("data/synthetic")
    """

    def __init__(self, config: SyntheticConfig | None = None, *, cache: bool = True) -> None:
        self.config = config if config is not None else SyntheticConfig()
        self.cache = cache
        self._fields: dict[int, FieldOfView] = {}
        order = np.random.default_rng([int(self.config.seed), 0x5EED]).permutation(self.config.n_images)
        n = self.config.n_images
        n_train = int(round(self.config.split_fractions[0] * n))
        n_val = int(round(self.config.split_fractions[1] * n))
        n_val = min(n_val, n - n_train)
        self._split_of = np.empty(n, dtype=object)
        self._split_of[order[:n_train]] = "train"
        self._split_of[order[n_train : n_train + n_val]] = "val"
        self._split_of[order[n_train + n_val :]] = "test"

    def __len__(self) -> int:
        return self.config.n_images

    # ---------------------------------------------------------------------------------------- fields

    def field(self, index: int) -> FieldOfView:
        """Field ``index`` (generated on first use)."""
        if not 0 <= index < self.config.n_images:
            raise IndexError(f"field index {index} outside 0..{self.config.n_images - 1}")
        cached = self._fields.get(index)
        if cached is not None:
            return cached
        fov = generate_field(field_rng(self.config.seed, index), self.config)
        if self.cache:
            self._fields[index] = fov
        return fov

    def generate(self, workers: int = 1) -> None:
        """Generate (and cache) every field now, in ``workers`` processes.

        The fields are identical for any number of workers: each depends only on ``(seed, index)``.
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not self.cache:
            raise ValueError("generate() fills the field cache; this corpus was built with cache=False")
        missing = [i for i in range(self.config.n_images) if i not in self._fields]
        if workers == 1 or len(missing) < 2 * workers:
            for index in missing:
                self.field(index)
            return
        # Contiguous chunks, a few per worker, so pickling overhead stays small and the load balanced.
        n_chunks = min(len(missing), 4 * workers)
        chunks = [chunk.tolist() for chunk in np.array_split(np.asarray(missing), n_chunks)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for chunk, fields in zip(chunks, pool.map(_generate_chunk, [self.config] * len(chunks), chunks)):
                self._fields.update(zip(chunk, fields))

    def split_of(self, index: int) -> str:
        return str(self._split_of[index])

    def indices(self, split: str | None = None) -> list[int]:
        """Field indices of ``split`` (all fields for ``None``), ascending."""
        if split is None:
            return list(range(self.config.n_images))
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [int(i) for i in np.flatnonzero(self._split_of == split)]

    def fields(self, split: str | None = None) -> Iterator[tuple[int, FieldOfView]]:
        for index in self.indices(split):
            yield index, self.field(index)

    @staticmethod
    def annotated_classes(task: Task | str) -> tuple[str, ...]:
        """Vocabulary names of the classes the corpus annotates for ``task``."""
        task = Task(task)
        if task == Task.DETECTION:
            return DETECTION_LABELS
        if task == Task.FOV_MORPHOLOGY:
            return WBC_TYPES
        if task == Task.CLASSIFICATION:
            return CELL_CLASS_NAMES
        if task == Task.CELL_MORPHOLOGY:
            return WBC_TYPES
        return ()

    # --------------------------------------------------------------------------------------- samples

    def samples(self, task: Task | str, split: str | None = None) -> list[Sample]:
        """Every sample of ``task`` in ``split`` (``None`` = all splits), in field order."""
        task = Task(task)
        out: list[Sample] = []
        for index in self.indices(split):
            out.extend(self.field_samples(task, index, self.field(index)))
        return out

    def crops(self, index: int, fov: FieldOfView | None = None) -> list[CellCrop]:
        """The single-cell crops of field ``index`` (``fov``, when already at hand): every whole white
        cell, then a seeded choice of whole abnormal/infected red cells, normal red cells and platelets
        (at most the ``*_crops_per_field`` numbers of the config)."""
        fov = self.field(index) if fov is None else fov
        return select_crops(self.config, index, fov)

    def field_samples(self, task: Task, index: int, fov: FieldOfView) -> list[Sample]:
        """The samples of ``task`` drawn from field ``index`` (``fov``), holding the image arrays."""
        split = self.split_of(index)
        field_id = f"field_{index:05d}"
        height, width = self.config.height, self.config.width
        disease = fov.disease if self.config.disease_context else None
        common = {"dataset": DATASET_NAME, "split": split, "disease": disease}
        extra = {"split_group": field_id, "field_index": index, "condition": fov.condition}
        if task == Task.DETECTION:
            return [
                Sample(
                    image=ArrayImage(fov.image), task=task, sample_id=field_id,
                    boxes=fov.boxes, box_labels=fov.labels, box_attributes=fov.box_attributes,
                    image_size=(height, width), extra=dict(extra), **common,
                )
            ]  # fmt: skip
        if task == Task.FOV_MORPHOLOGY:
            keep = [i for i, c in enumerate(fov.cells) if c.is_wbc]
            if not keep:
                return []
            return [
                Sample(
                    image=ArrayImage(fov.image), task=task, sample_id=field_id,
                    boxes=fov.boxes[keep], box_labels=fov.labels[keep], box_attributes=fov.box_attributes[keep],
                    image_size=(height, width), extra=dict(extra), **common,
                )
            ]  # fmt: skip
        if task == Task.SEGMENTATION:
            return [
                Sample(
                    image=ArrayImage(fov.image), task=task, sample_id=field_id,
                    mask=ArrayMask(fov.mask), image_size=(height, width),
                    extra={**extra, "mask_target": self.config.mask_target}, **common,
                )
            ]  # fmt: skip
        out: list[Sample] = []
        for crop in self.crops(index, fov):
            cell = fov.cells[crop.cell_index]
            if task != Task.CLASSIFICATION and not cell.is_wbc:
                continue
            x0, y0, x1, y1 = crop.window
            sample = Sample(
                image=ArrayImage(fov.image[y0:y1, x0:x1]),
                task=Task.CLASSIFICATION if task == Task.CLASSIFICATION else Task.CELL_MORPHOLOGY,
                sample_id=f"{field_id}/cell_{crop.cell_index:03d}",
                cell_class=cell_index(cell.cell_class),
                cell_attributes=cell.cell_attributes if task != Task.CLASSIFICATION else None,
                image_size=(y1 - y0, x1 - x0),
                extra={
                    **extra,
                    "cell_index": crop.cell_index,
                    "crop": list(crop.window),
                    "label": cell.label,
                },
                **common,
            )
            if task.is_text:
                out.extend(self._text_samples(sample, task))
            else:
                out.append(sample)
        return out

    def _text_samples(self, sample: Sample, task: Task) -> list[Sample]:
        produced = text_samples(
            sample,
            seed=self.config.seed,
            max_vqa=self.config.max_vqa_per_cell if task == Task.VQA else 0,
            max_mlm=self.config.max_mlm_per_cell if task == Task.MLM else 0,
            checks=self.config.vqa_checks if sample.split == "train" else "one",
        )
        out = []
        for text_sample in produced:
            if text_sample.task == task:
                text_sample.extra = {**sample.extra, **text_sample.extra}
                out.append(text_sample)
        return out

    # ----------------------------------------------------------------------------------------- write

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """Save the corpus to ``out_dir`` and return the path of its ``synthetic.json`` summary (the
        layout is in :func:`~unihema.data.synthetic.writer.write_corpus`)."""
        return write_corpus(self, out_dir)


def _generate_chunk(config: SyntheticConfig, indices: list[int]) -> list[FieldOfView]:
    """Worker-process body of :meth:`SyntheticCorpus.generate`."""
    return [generate_field(field_rng(config.seed, index), config) for index in indices]


def generate_corpus(
    config: SyntheticConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    workers: int = 1,
) -> SyntheticCorpus:
    """Build a :class:`SyntheticCorpus`, generate every field (in ``workers`` processes), and write it to
    ``out_dir`` if given."""
    corpus = SyntheticCorpus(config)
    corpus.generate(workers)
    if out_dir is not None:
        corpus.write(out_dir)
    return corpus
