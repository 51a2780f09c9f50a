"""Configuration of the UniHema model: :class:`UniHemaConfig`, its presets and its JSON/YAML files.

The configuration is split by module so each part of the paper maps to one section (the section
dataclasses are defined in :mod:`unihema.model.config_sections` and importable from here):

- :class:`VisionConfig`: backbone B, input projection, image encoder E_I and image decoder D_I;
- :class:`TextConfig`: the T5 text encoder E_T / decoder D_T and its tokenizer;
- :class:`HemaFormerConfig`: the four Hema-Former sub-modules (CMF, TGVR, SCFE, QGMF), including the
  options where the paper and the authors' released code differ (the paper's version is the default);
- :class:`HeadsConfig`: task heads and label-space sizes (taken from :mod:`unihema.data.vocab`);
- :class:`DenoisingConfig`: DINO contrastive denoising queries used in detection training.

Named presets (``tiny``: ResNet-18, d 128, fast on a CPU; ``paper``: ResNet-50, d 256, 6+6 layers, 900
queries, flan-t5-base sized text model, the dimensions of the authors' model) are the builder functions of
the registry :data:`unihema.model.presets.PRESET_REGISTRY`; :meth:`UniHemaConfig.from_preset` looks names
up there.

Every validation error is a :class:`ConfigError` (a :class:`~unihema.validation.ValidationError`, hence a
``ValueError``) whose message starts with the dotted name of the offending field, e.g.
``vision.d_model must be divisible by vision.num_heads (8), got 130``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from unihema.atomic import atomic_write_text
from unihema.model.config_sections import (
    ALL_BACKBONE_LAYERS,
    BACKBONE_DEPTHS,
    BACKBONE_NORMS,
    CMF_ORDERS,
    FEED_FORWARD_PROJ,
    PRETRAINED_TRAINABLE_LAYERS,
    QGMF_INPUT_SIZE,
    QGMF_QUERIES,
    QGMF_STYLES,
    SCFE_INPUTS,
    SCFE_POOLINGS,
    TGVR_MODES,
    ConfigError,
    DenoisingConfig,
    HeadsConfig,
    HemaFormerConfig,
    TextConfig,
    VisionConfig,
)
from unihema.validation import require

__all__ = [
    "ALL_BACKBONE_LAYERS",
    "BACKBONE_DEPTHS",
    "BACKBONE_NORMS",
    "CMF_ORDERS",
    "FEED_FORWARD_PROJ",
    "MODULE_GROUPS",
    "PRETRAINED_TRAINABLE_LAYERS",
    "QGMF_INPUT_SIZE",
    "QGMF_QUERIES",
    "QGMF_STYLES",
    "SCFE_INPUTS",
    "SCFE_POOLINGS",
    "TGVR_MODES",
    "ConfigError",
    "DenoisingConfig",
    "HeadsConfig",
    "HemaFormerConfig",
    "TextConfig",
    "UniHemaConfig",
    "VisionConfig",
]

MODULE_GROUPS: tuple[str, ...] = ("B", "E_I", "D_I", "E_T", "D_T", "CMF", "TGVR", "SCFE", "QGMF", "heads")
"""The paper's module groups (:meth:`unihema.model.unihema.UniHema.module_groups`): what a stage trains or freezes."""

TEXT_MEMORIES: tuple[str, ...] = ("fused", "text")
"""What the T5 decoder reads for VQA and masked sentences: ``"fused"``, CMF's image-and-text states E_W^T
(the model); ``"text"``, the T5 encoder's states E_E^T alone, the image unread (plain text-to-text T5, to
pre-train the text encoder and decoder on text before CMF is trained, as the paper's step 2 does)."""


def __getattr__(name: str) -> Any:
    # PRESETS lives with the preset registry, which builds on this module, so it is re-exported lazily.
    if name == "PRESETS":
        from unihema.model.presets import PRESETS

        return PRESETS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_SECTIONS: dict[str, type] = {
    "vision": VisionConfig,
    "text": TextConfig,
    "hemaformer": HemaFormerConfig,
    "heads": HeadsConfig,
    "denoising": DenoisingConfig,
}


@dataclass
class UniHemaConfig:
    """The whole model. Build from a preset (:meth:`from_preset`), a dict, or a JSON/YAML file.

    Construction validates every field (:meth:`validate`).

    Args:
        vision (VisionConfig, default ``VisionConfig()``): backbone, image encoder and image decoder.
        text (TextConfig, default ``TextConfig()``): T5 text encoder/decoder and tokenizer.
        hemaformer (HemaFormerConfig, default ``HemaFormerConfig()``): CMF, TGVR, SCFE and QGMF.
        heads (HeadsConfig, default ``HeadsConfig()``): task heads and label-space sizes.
        denoising (DenoisingConfig, default ``DenoisingConfig()``): DINO denoising queries.
        preset (str | None, default None): name of the preset this configuration started from
            (informational).

    Examples:
        >>> config = UniHemaConfig.from_preset("tiny", vision={"num_queries": 100})
        >>> config.preset, config.vision.num_queries, config.vision.backbone_depth
        ('tiny', 100, 18)
        >>> UniHemaConfig.from_dict(config.to_dict()) == config
        True
        >>> try:
        ...     UniHemaConfig.from_preset("tiny", vision={"num_queries": 0})
        ... except ConfigError as error:
        ...     print(error)
        vision.num_queries must be a positive integer, got 0

        ``config.save("model.yaml")`` and ``UniHemaConfig.load("model.yaml")`` write and read files.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    hemaformer: HemaFormerConfig = field(default_factory=HemaFormerConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    denoising: DenoisingConfig = field(default_factory=DenoisingConfig)
    preset: str | None = None

    FORMAT_VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raises :class:`ConfigError` naming the first invalid one."""
        for name, cls in _SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, cls):
                raise ConfigError.for_field(name, f"must be a {cls.__name__}, got {type(section).__name__}")
            section.validate(f"{name}.")
        d_model = self.vision.d_model
        for name in ("cmf_num_heads", "tgvr_num_heads"):
            heads = getattr(self.hemaformer, name)
            require(
                d_model % heads == 0,
                f"hemaformer.{name}",
                f"must divide vision.d_model ({d_model})",
                heads,
                error=ConfigError,
            )

    # ----------------------------------------------------------------------------------------- dicts
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), suitable for JSON and YAML."""

        def plain(value: Any) -> Any:
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value

        out: dict[str, Any] = {"format_version": self.FORMAT_VERSION, "preset": self.preset}
        for name in _SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UniHemaConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError` naming them."""
        if not isinstance(data, dict):
            raise ConfigError.for_field("configuration", f"must be a mapping, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format_version", cls.FORMAT_VERSION)
        if version != cls.FORMAT_VERSION:
            raise ConfigError(f"format_version {version!r} is not supported (expected {cls.FORMAT_VERSION})")
        preset = data.pop("preset", None)
        sections: dict[str, Any] = {}
        for name, value in data.items():
            _require_section(name)
            sections[name] = _section_from_dict(name, _SECTIONS[name], value)
        return cls(**sections, preset=preset)

    # ----------------------------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the configuration as JSON (``.json``) or YAML (``.yaml``/``.yml``), atomically."""
        path = Path(path)
        data = self.to_dict()
        suffix = path.suffix.lower()
        if suffix == ".json":
            text = json.dumps(data, indent=2) + "\n"
        elif suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            raise ConfigError(f"{path}: configuration files must end in .json, .yaml or .yml")
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UniHemaConfig:
        """Read a configuration written by :meth:`save` (JSON or YAML by suffix)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"configuration file not found: {path}")
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                data = json.loads(text)
            elif suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                raise ConfigError(f"{path}: configuration files must end in .json, .yaml or .yml")
        except (json.JSONDecodeError, ImportError) as error:
            raise ConfigError(f"{path}: not a valid configuration file ({error})") from error
        except Exception as error:  # yaml.YAMLError without importing yaml at module level
            if type(error).__module__.startswith("yaml"):
                raise ConfigError(f"{path}: not a valid YAML configuration ({error})") from error
            raise
        try:
            return cls.from_dict(data)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from error

    # --------------------------------------------------------------------------------------- presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> UniHemaConfig:
        """The preset ``name`` of :data:`unihema.model.presets.PRESET_REGISTRY`, with section overrides.

        ``overrides`` maps a section name to a dict of fields (merged into the preset) or to a complete
        section dataclass, e.g. ``from_preset("tiny", vision={"num_queries": 100})``; the result is
        validated as a whole. An unknown ``name`` raises :class:`ConfigError` listing the known presets.
        """
        from unihema.model.presets import build_preset  # the presets are built from this module

        base = build_preset(name).to_dict()
        for section, value in overrides.items():
            _require_section(section)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                base[section] = UniHemaConfig(**{section: value}).to_dict()[section]
            elif isinstance(value, dict):
                base[section] = {**base[section], **value}
            else:
                raise ConfigError(f"override for {section} must be a dict or a {_SECTIONS[section].__name__}")
        return cls.from_dict(base)


def _require_section(name: str) -> None:
    require(
        name in _SECTIONS,
        name,
        f"is not a configuration section (expected one of {tuple(_SECTIONS)})",
        error=ConfigError,
    )


def _section_from_dict(name: str, cls: type, value: Any) -> Any:
    if not isinstance(value, dict):
        raise ConfigError.for_field(name, f"must be a mapping, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in value:
        require(key in known, f"{name}.{key}", f"is not a known field of {cls.__name__}", error=ConfigError)
    kwargs = {key: tuple(item) if isinstance(item, list) else item for key, item in value.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{name}: {error}") from error
