"""The image-memory cache of text stages whose image path is frozen (``StageConfig.image_cache``).

In a VQA / masked-sentence step the image path (backbone, input projection, E_I and SCFE) takes most of
the time, about four fifths in a ``tiny`` step at 96 px, although stages such as the paper's steps 2 and
6 freeze it: it then maps the same crop to the same :class:`~unihema.model.outputs.ImageMemory` every
time it is drawn. :class:`ImageMemoryCache` computes that memory once per distinct input and hands it to
the model's forward (``image_memory=``), so only E_T, CMF and D_T run again. Entries are keyed by the
input's pixels (a digest of the image tensor and its padding mask, so two samples of the same crop share
one entry and a changed crop never reads a stale one) and live for one stage.

What the cache needs, and the stage configuration checks: every task of the stage is vqa or mlm with the
fused memory, the stage trains none of the groups the memory comes from (``B``, ``E_I``, ``SCFE``), and
the stage's inputs are not augmented (the trainer turns flips and colour jitter off for it), since an
augmented crop is a new input each time. Frozen groups run in ``eval()`` mode, so an entry is exactly
what the forward would compute (up to the float rounding of a different batch composition).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import torch
from torch import Tensor

from unihema.model.outputs import ImageMemory

logger = logging.getLogger(__name__)

#: Groups the image memory is computed by: a stage with ``image_cache`` must freeze them.
IMAGE_MEMORY_GROUPS: tuple[str, ...] = ("B", "E_I", "SCFE")

#: Share of the memory available at the start of a stage that its cache may fill.
CACHE_MEMORY_SHARE = 0.25

#: What the share is taken of where the available memory is unknown.
DEFAULT_CACHE_BYTES = 4 * 2**30

MemoryFunction = Callable[[Tensor, Tensor], ImageMemory]


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
    """Per-input :class:`ImageMemory` rows, filled on demand up to ``max_bytes``.

    Args:
        compute: the image path, ``model.image_memory`` (run without gradients on the inputs missing).
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
        self._rows: dict[bytes, ImageMemory] = {}
        self._full_logged = False

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, images: Tensor, image_mask: Tensor, keys: list[bytes] | None = None) -> ImageMemory:
        """The batch's image memory, its rows from the cache where stored; ``keys``: :func:`input_keys`
        of the batch (computed here when None)."""
        keys = input_keys(images, image_mask) if keys is None else keys
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} keys for a batch of {images.shape[0]} images")
        first: dict[bytes, int] = {}  # a batch can hold two questions about one crop
        for row, key in enumerate(keys):
            first.setdefault(key, row)
        missing = [row for key, row in first.items() if key not in self._rows]
        fresh: dict[bytes, ImageMemory] = {}
        if missing:
            index = torch.tensor(missing, device=images.device)
            with torch.no_grad():
                computed = self.compute(images.index_select(0, index), image_mask.index_select(0, index))
            for position, row in enumerate(missing):
                fresh[keys[row]] = computed[position : position + 1]
                self._store(keys[row], fresh[keys[row]])
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        rows = [fresh[key] if key in fresh else self._rows[key] for key in keys]
        cells = None if rows[0].cell is None else torch.cat([r.cell for r in rows])  # type: ignore[misc]
        return ImageMemory(torch.cat([r.tokens for r in rows]), torch.cat([r.padding for r in rows]), cells)

    def _store(self, key: bytes, row: ImageMemory) -> None:
        parts = [t for t in (row.tokens, row.padding, row.cell) if t is not None]
        size = sum(t.numel() * t.element_size() for t in parts)
        if self.bytes + size > self.max_bytes:
            if not self._full_logged:
                logger.info(
                    "image-memory cache full (%d inputs, %.0f MB): further inputs are computed each time",
                    len(self._rows), self.bytes / 2**20,
                )  # fmt: skip
                self._full_logged = True
            return
        # Clones, so a stored row does not keep its whole batch's tensors alive.
        cell = None if row.cell is None else row.cell.clone()
        self._rows[key] = ImageMemory(row.tokens.clone(), row.padding.clone(), cell)
        self.bytes += size
