"""The cache of frozen image paths (``StageConfig.image_cache``).

In a VQA / masked-sentence step the image path (backbone, input projection, E_I and SCFE) takes most of
the time, about four fifths in a ``tiny`` step at 96 px, although stages such as the paper's steps 2 and
6 freeze it: it then maps the same crop to the same :class:`~unihema.model.outputs.ImageMemory` every
time it is drawn. In the same way a stage that fits SCFE and the cell heads on a frozen backbone and E_I
(the demo's step 5) maps each single-cell crop to the same :class:`~unihema.model.outputs.CellInputs`.
:class:`ImageMemoryCache` computes such rows once per distinct input and hands them to the model's forward
(``image_memory=`` / ``cell_inputs=``), so only the trained modules run again. Entries are keyed by the
input's pixels (a digest of the image tensor and its padding mask, so two samples of the same crop share
one entry and a changed crop never reads a stale one) and live for one stage.

What the cache needs, and the stage configuration checks: the stage trains none of the groups the cached
rows come from (``B``, ``E_I`` and, for the text tasks, ``SCFE``), and the cached tasks' inputs are not
augmented (the trainer turns flips and colour jitter off for them), since an augmented crop is a new input
each time. Frozen groups run in ``eval()`` mode, so an entry is exactly what the forward would compute (up
to the float rounding of a different batch composition).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from unihema.data.schema import Task
from unihema.model.outputs import CellInputs, ImageMemory

logger = logging.getLogger(__name__)

#: Groups the image memory is computed by: a stage with ``image_cache`` and text tasks must freeze them.
IMAGE_MEMORY_GROUPS: tuple[str, ...] = ("B", "E_I", "SCFE")

#: Groups the single-cell inputs of SCFE are computed by: a stage with ``image_cache`` and single-cell
#: tasks must freeze them.
CELL_INPUT_GROUPS: tuple[str, ...] = ("B", "E_I")


def cached_tasks(tasks: Sequence[Task]) -> list[Task]:
    """The tasks of a stage whose inputs an ``image_cache`` serves: text tasks (image memory) and
    single-cell tasks (SCFE inputs); detection, FoV morphology and segmentation always run uncached."""
    return [task for task in tasks if task.is_text or task.is_single_cell]


#: Share of the memory available at the start of a stage that its cache may fill.
CACHE_MEMORY_SHARE = 0.25

#: What the share is taken of where the available memory is unknown.
DEFAULT_CACHE_BYTES = 4 * 2**30

Rows = TypeVar("Rows", ImageMemory, CellInputs)
MemoryFunction = Callable[[Tensor, Tensor], ImageMemory | CellInputs]


def _fields(row: ImageMemory | CellInputs) -> dict[str, Tensor]:
    """The row's tensors by field name, ``None`` fields left out."""
    values = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    return {name: value for name, value in values.items() if value is not None}


def _cat(rows: Sequence[Rows]) -> Rows:
    """Rows of one kind stacked into one batch, field by field (``None`` fields stay ``None``)."""
    names = _fields(rows[0])
    return dataclasses.replace(rows[0], **{n: torch.cat([getattr(row, n) for row in rows]) for n in names})


def input_keys(images: Tensor, image_mask: Tensor) -> list[bytes]:
    """One digest per image of the batch, of its pixels, padding mask and shape (CPU tensors)."""
    keys = []
    for image, mask in zip(images.detach().cpu(), image_mask.detach().cpu()):
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr((tuple(image.shape), str(image.dtype))).encode())
        digest.update(image.contiguous().numpy().tobytes())
        digest.update(mask.contiguous().numpy().tobytes())
        keys.append(digest.digest())
    return keys


class ImageMemoryCache:
    """Per-input rows (:class:`ImageMemory` or :class:`CellInputs`), filled on demand up to ``max_bytes``.

    Args:
        compute: the frozen image path, ``model.image_memory`` or ``model.cell_inputs`` (run without
            gradients on the inputs missing); one cache holds the rows of one of them.
        max_bytes: what the stored rows may take; past it, inputs not yet stored are computed every time
            (logged once).
    """

    def __init__(self, compute: MemoryFunction, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.compute = compute
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._rows: dict[bytes, ImageMemory | CellInputs] = {}
        self._full_logged = False

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(
        self, images: Tensor, image_mask: Tensor, keys: list[bytes] | None = None
    ) -> ImageMemory | CellInputs:
        """The batch's rows (image memory or SCFE inputs), from the cache where stored; ``keys``: :func:`input_keys`
        of the batch (computed here when None)."""
        keys = input_keys(images, image_mask) if keys is None else keys
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} keys for a batch of {images.shape[0]} images")
        first: dict[bytes, int] = {}  # a batch can hold two questions about one crop
        for row, key in enumerate(keys):
            first.setdefault(key, row)
        missing = [row for key, row in first.items() if key not in self._rows]
        fresh: dict[bytes, ImageMemory | CellInputs] = {}
        if missing:
            index = torch.tensor(missing, device=images.device)
            with torch.no_grad():
                computed = self.compute(images.index_select(0, index), image_mask.index_select(0, index))
            for position, row in enumerate(missing):
                fresh[keys[row]] = computed[position : position + 1]
                self._store(keys[row], fresh[keys[row]])
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        return _cat([fresh[key] if key in fresh else self._rows[key] for key in keys])

    def _store(self, key: bytes, row: ImageMemory | CellInputs) -> None:
        tensors = _fields(row)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.bytes + size > self.max_bytes:
            if not self._full_logged:
                logger.info(
                    "image-memory cache full (%d inputs, %.0f MB): further inputs are computed each time",
                    len(self._rows), self.bytes / 2**20,
                )  # fmt: skip
                self._full_logged = True
            return
        # Clones, so a stored row does not keep its whole batch's tensors alive.
        self._rows[key] = dataclasses.replace(row, **{name: t.clone() for name, t in tensors.items()})
        self.bytes += size
