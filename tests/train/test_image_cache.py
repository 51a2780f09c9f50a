"""The image-memory cache: one computation per distinct input, exact rows, a byte budget."""

from __future__ import annotations

import torch

from unihema.model.outputs import CellInputs, ImageMemory
from unihema.train.image_cache import ImageMemoryCache, input_keys


def _memory_of(calls: list[int]):
    def compute(images: torch.Tensor, image_mask: torch.Tensor) -> ImageMemory:
        calls.append(images.shape[0])
        tokens = images.flatten(2).transpose(1, 2)[:, :, :2] * 2
        return ImageMemory(
            tokens, image_mask.flatten(1)[:, : tokens.shape[1]], images.mean((1, 2, 3))[:, None]
        )

    return compute


def test_rows_are_computed_once_and_returned_in_batch_order() -> None:
    calls: list[int] = []
    cache = ImageMemoryCache(_memory_of(calls), max_bytes=2**20)
    images, mask = torch.randn(3, 3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.bool)
    first = cache.lookup(images, mask)
    # The same inputs in another order, with one new input: only the new one is computed.
    reordered = torch.cat((images[[2, 0]], torch.randn(1, 3, 4, 4)))
    second = cache.lookup(reordered, torch.zeros(3, 4, 4, dtype=torch.bool))
    assert calls == [3, 1] and len(cache) == 4 and (cache.hits, cache.misses) == (2, 4)
    expected = _memory_of([])(reordered, torch.zeros(3, 4, 4, dtype=torch.bool))
    torch.testing.assert_close(second.tokens, expected.tokens)
    torch.testing.assert_close(second.cell, expected.cell)
    torch.testing.assert_close(second.tokens[1], first.tokens[0])


def test_keys_follow_the_pixels_and_the_padding() -> None:
    image, mask = torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool)
    padded = mask.clone()
    padded[0, -1] = True
    changed = image.clone()
    changed[0, 0, 0, 0] += 1e-3
    keys = input_keys(torch.cat((image, image, changed, image)), torch.cat((mask, mask, mask, padded)))
    assert keys[0] == keys[1] and len(set(keys)) == 3


def test_past_its_budget_the_cache_computes_without_storing() -> None:
    calls: list[int] = []
    cache = ImageMemoryCache(_memory_of(calls), max_bytes=200)  # about one row
    images, mask = torch.randn(3, 3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.bool)
    cache.lookup(images, mask)
    cache.lookup(images, mask)
    assert len(cache) == 1 and cache.bytes <= 200
    assert calls == [3, 2]


def test_single_cell_rows_are_cached_field_by_field() -> None:
    calls: list[int] = []

    def scfe_inputs(images: torch.Tensor, image_mask: torch.Tensor) -> CellInputs:
        calls.append(images.shape[0])
        memory = images.flatten(2).transpose(1, 2)
        return CellInputs(memory, image_mask.flatten(1), memory[:, :2] + 1, image_mask.flatten(1)[:, :2])

    cache = ImageMemoryCache(scfe_inputs, max_bytes=2**20)
    images, mask = torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool)
    cache.lookup(images, mask)
    swapped = cache.lookup(images[[1, 0]], mask)
    assert calls == [2] and isinstance(swapped, CellInputs) and len(swapped) == 2
    expected = scfe_inputs(images[[1, 0]], mask)
    for name in ("memory", "memory_padding", "tokens", "token_padding"):
        torch.testing.assert_close(getattr(swapped, name), getattr(expected, name))
    torch.testing.assert_close(swapped[1:].tokens, expected.tokens[1:])
