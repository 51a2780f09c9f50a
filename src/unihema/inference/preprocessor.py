"""The pre-processing a model was trained with, saved beside its weights (``preprocessor_config.json``).

A model trained on 416 px BCCD fields and scored at the default 800 px loses half its mAP; a model trained
on the demo's 128 px synthetic fields scored on the default 256 px corpus sees cells twice the size it
learnt. :class:`PreprocessorConfig` records the input sizes, the normalisation and padding (a
:class:`~unihema.data.transforms.TransformConfig` plus ``pad_to_multiple``) and, for models trained on the
built-in corpus, the synthetic corpus settings, so that ``unihema eval`` and the demo use them by default.

File layout (JSON)::

    {"format_version": 1,
     "transforms": {<TransformConfig fields>},
     "pad_to_multiple": 32,
     "synthetic": {<SyntheticConfig fields>} or null}
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unihema.atomic import atomic_write_text
from unihema.data.transforms import TransformConfig
from unihema.validation import ValidationError, require

PREPROCESSOR_NAME = "preprocessor_config.json"
FORMAT_VERSION = 1


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


@dataclass(frozen=True)
class PreprocessorConfig:
    """How images are prepared for a model.

    Attributes:
        transforms: resizing, normalisation and (training) augmentation per task.
        pad_to_multiple: batches are zero-padded to a multiple of this many pixels.
        synthetic: fields of the :class:`~unihema.data.synthetic.SyntheticConfig` of the built-in corpus the
            model was trained on, or ``None`` (trained on real data only, or unknown).
    """

    transforms: TransformConfig = field(default_factory=TransformConfig)
    pad_to_multiple: int = 32
    synthetic: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        value = self.pad_to_multiple
        require(isinstance(value, int) and value >= 1, "pad_to_multiple", "must be a positive integer", value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "transforms": dataclasses.asdict(self.transforms),
            "pad_to_multiple": self.pad_to_multiple,
            "synthetic": self.synthetic,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "preprocessor config") -> PreprocessorConfig:
        """Inverse of :meth:`to_dict`; errors are :class:`ValidationError` prefixed with ``source``."""
        if not isinstance(data, dict):
            raise ValidationError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValidationError(
                f"{source}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(TransformConfig)}
        transforms = data.get("transforms") or {}
        unknown = sorted(set(transforms) - known)
        if unknown:
            raise ValidationError(f"{source}: transforms.{unknown[0]} is not a TransformConfig field")
        try:
            return cls(
                transforms=TransformConfig(**_tuples(transforms)),
                pad_to_multiple=data.get("pad_to_multiple", 32),
                synthetic=data.get("synthetic"),
            )
        except (TypeError, ValueError) as error:
            raise ValidationError(f"{source}: {error}") from None

    def save(self, directory: str | os.PathLike[str]) -> Path:
        path = Path(directory) / PREPROCESSOR_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PreprocessorConfig | None:
        """The configuration saved in ``directory``, or ``None`` when the folder has none."""
        path = Path(directory) / PREPROCESSOR_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not readable JSON ({error})") from None
        return cls.from_dict(data, source=str(path))

    def synthetic_config(self) -> Any:
        """The recorded :class:`~unihema.data.synthetic.SyntheticConfig` (``None`` when not recorded)."""
        from unihema.data.synthetic import SyntheticConfig

        return None if self.synthetic is None else SyntheticConfig(**_tuples(self.synthetic))
