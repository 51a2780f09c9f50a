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
        self._rows: dict[bytes, tuple[Tensor, Tensor, Tensor | None]] = {}
        self._full_logged = False

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, images: Tensor, image_mask: Tensor, keys: list[bytes] | None = None) -> ImageMemory:
        """The batch's image memory, its rows from the cache where stored; ``keys``: :func:`input_keys`
        of the batch (computed here when None)."""
        keys = input_keys(images, image_mask) if keys is None else keys
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} keys for a batch of {images.shape[0]} images")
        # First row of every input not stored (a batch can hold two questions about one crop).
        missing = list(
            {key: i for i, key in reversed(list(enumerate(keys))) if key not in self._rows}.values()
        )
        fresh: dict[bytes, tuple[Tensor, Tensor, Tensor | None]] = {}
        if missing:
            index = torch.tensor(missing, device=images.device)
            with torch.no_grad():
                computed = self.compute(images.index_select(0, index), image_mask.index_select(0, index))
            for position, row in enumerate(missing):
                cell = None if computed.cell is None else computed.cell[position]
                fresh[keys[row]] = (computed.tokens[position], computed.padding[position], cell)
                self._store(keys[row], fresh[keys[row]])
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        rows = [fresh[key] if key in fresh else self._rows[key] for key in keys]
        return _stack(rows)

    def _store(self, key: bytes, row: tuple[Tensor, Tensor, Tensor | None]) -> None:
        size = sum(t.numel() * t.element_size() for t in row if t is not None)
        if self.bytes + size > self.max_bytes:
            if not self._full_logged:
                logger.info(
                    "image-memory cache full (%d inputs, %.0f MB): further inputs are computed each time",
                    len(self._rows), self.bytes / 2**20,
                )  # fmt: skip
                self._full_logged = True
            return
        # Clones, so a stored row does not keep its whole batch's tensors alive.
        self._rows[key] = tuple(None if t is None else t.clone() for t in row)  # type: ignore[assignment]
        self.bytes += size


def _stack(rows: list[tuple[Tensor, Tensor, Tensor | None]]) -> ImageMemory:
    """Rows of possibly different lengths as one batch, shorter rows padded (and marked padding)."""
    length = max(int(tokens.shape[0]) for tokens, _, _ in rows)
    tokens_out, padding_out = [], []
    for tokens, padding, _ in rows:
        extra = length - int(tokens.shape[0])
        if extra:
            tokens = torch.cat((tokens, tokens.new_zeros(extra, tokens.shape[1])))
            padding = torch.cat((padding, padding.new_ones(extra)))
        tokens_out.append(tokens)
        padding_out.append(padding)
    cells = [cell for _, _, cell in rows]
    cell = None if cells[0] is None else torch.stack(cells)  # type: ignore[arg-type]
    return ImageMemory(torch.stack(tokens_out), torch.stack(padding_out), cell)
