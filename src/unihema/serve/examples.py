"""The page's bundled examples: a few small fields drawn by the built-in synthetic generator.

They are generated on first request (a few tens of milliseconds each) and kept in memory as PNG bytes;
nothing is written to disk. Field ``i`` of the generator depends only on ``(seed, i)``, so the examples
are the same on every server; each is labelled with the condition the generator drew for it.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

from PIL import Image

EXAMPLE_SEED = 7
EXAMPLE_FIELDS = (0, 4, 2)
"""Generator fields shown as examples (with this seed: a healthy, a malaria and a sickle-cell field)."""
EXAMPLE_SIZE = (192, 256)
"""(height, width) of the example fields in pixels."""


@dataclass(frozen=True)
class Example:
    """One example field.

    Attributes:
        name: its name in the URL (``field-<index>``).
        condition: what the generator drew (``"healthy"``, ``"malaria"``, ``"sickle cell"``, ...).
        disease: the disease context of that condition (what to type in the page's disease box).
        png: the image as PNG bytes.
        width, height: its size in pixels.
    """

    name: str
    condition: str
    disease: str
    png: bytes
    width: int
    height: int

    def describe(self, url: str) -> dict[str, object]:
        return {
            "name": self.name,
            "condition": self.condition,
            "disease": self.disease,
            "url": url,
            "width": self.width,
            "height": self.height,
        }


class ExampleGallery:
    """The examples, generated once on first use (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._examples: dict[str, Example] | None = None

    def all(self) -> dict[str, Example]:
        with self._lock:
            if self._examples is None:
                self._examples = _generate()
            return self._examples


def _generate() -> dict[str, Example]:
    from unihema.data.synthetic import DISEASE_OF_CONDITION, SyntheticConfig, SyntheticCorpus

    corpus = SyntheticCorpus(
        SyntheticConfig(image_size=EXAMPLE_SIZE, n_images=max(EXAMPLE_FIELDS) + 1, seed=EXAMPLE_SEED),
        cache=False,
    )
    examples = {}
    for index in EXAMPLE_FIELDS:
        field = corpus.field(index)
        buffer = io.BytesIO()
        Image.fromarray(field.image).save(buffer, format="PNG")
        name = f"field-{index}"
        examples[name] = Example(
            name=name,
            condition=field.condition,
            disease=DISEASE_OF_CONDITION.get(field.condition, "blood"),
            png=buffer.getvalue(),
            width=field.image.shape[1],
            height=field.image.shape[0],
        )
    return examples
