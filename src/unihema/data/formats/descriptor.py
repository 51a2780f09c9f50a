"""Reading a dataset folder with options from a descriptor file beside the data and from the command line.

A dataset descriptor is a small YAML file named ``unihema.yaml`` (or ``unihema.yml``) in the dataset's
folder. It says which reader to use and with which options, so that a folder in its native layout reads
with no code::

    format: masks                # optional: a reader name (default: detected)
    options:                     # optional: that reader's options
      colour_map: {nucleus: [0, 255, 255], cytoplasm: [0, 0, 255], background: [255, 255, 255]}

It is validated when loaded; every error names the file and the field (``options.colour_map``).
On the command line, ``--option key=value`` (repeatable) gives one option each; values are YAML
(:func:`parse_option_pairs`: ``mapping=cell``, ``crop_size=48``, ``foreground=[nucleus]``).

:func:`read_dataset` is the one call for every command that reads a folder: it merges the descriptor's
options with the ones given (given ones win), picks the reader (the one given, else the descriptor's, else
a caller's default such as a catalog entry, else the detected one), checks the option names against the
reader, and reads. :func:`plan_read` does the same without reading and says what it chose and why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unihema.data.formats._common import OptionError, yaml_error_text
from unihema.data.formats.base import READERS, detect, get_reader, load_all_readers, reader_options
from unihema.data.schema import ReadResult

DESCRIPTOR_NAMES = ("unihema.yaml", "unihema.yml")
"""File names of the dataset descriptor, looked for in the dataset folder itself."""
DESCRIPTOR_FIELDS = ("format", "options")
_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class DescriptorError(ValueError):
    """A dataset descriptor file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class DatasetDescriptor:
    """A validated ``unihema.yaml``.

    Attributes:
        path: the descriptor file.
        format: the reader it names, or ``None`` (detect the format).
        options: reader options it gives (possibly empty).
    """

    path: Path
    format: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def find_descriptor(root: Path) -> Path | None:
    """The descriptor file in ``root``, or ``None``."""
    return next((Path(root) / n for n in DESCRIPTOR_NAMES if (Path(root) / n).is_file()), None)


def load_descriptor(root: Path) -> DatasetDescriptor | None:
    """The validated descriptor of the dataset folder ``root``, or ``None`` when it has none.

    Raises:
        DescriptorError: the file is not YAML, not a mapping, has an unknown field, names an unknown
            format, or gives options that are not a mapping of option names (or not options of its format).
    """
    path = find_descriptor(root)
    if path is None:
        return None
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DescriptorError(f"{path}: not a readable YAML file ({yaml_error_text(err)})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise DescriptorError(
            f"{path}: expected a mapping with the fields {', '.join(DESCRIPTOR_FIELDS)}, got {type(loaded).__name__}"
        )
    unknown = [str(key) for key in loaded if key not in DESCRIPTOR_FIELDS]
    if unknown:
        raise DescriptorError(
            f"{path}: unknown field {unknown[0]!r}; a descriptor has the fields {', '.join(DESCRIPTOR_FIELDS)}"
        )
    format = loaded.get("format")
    if format is not None:
        load_all_readers()
        if not isinstance(format, str) or format not in READERS:
            raise DescriptorError(
                f"{path}: field 'format': {format!r} is not a reader; known formats: {', '.join(sorted(READERS))}"
            )
    options = loaded.get("options") or {}
    if not isinstance(options, dict):
        raise DescriptorError(
            f"{path}: field 'options': expected a mapping of option names to values, got {type(options).__name__}"
        )
    for key in options:
        if not isinstance(key, str) or not _OPTION_NAME.fullmatch(key):
            raise DescriptorError(f"{path}: field 'options': {key!r} is not an option name")
    descriptor = DatasetDescriptor(path, format, dict(options))
    if format is not None:
        _check_names(
            format, descriptor.options, lambda name: _descriptor_field(descriptor, name), DescriptorError
        )
    return descriptor


def parse_option_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """``["mapping=cell", "crop_size=48"]`` -> ``{"mapping": "cell", "crop_size": 48}``.

    Each value is read as YAML: scalars (``true``, ``48``, ``0.5``, ``null``, text), lists (``[0, 255]``) and
    maps (``{nucleus: [0, 255, 255]}``). ``ValueError`` naming the bad pair for a missing ``=``, a key that
    is not an option name, an empty or malformed value, or a key given twice.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--option {pair!r}: expected key=value (e.g. mapping=cell)")
        if not _OPTION_NAME.fullmatch(key):
            raise ValueError(f"--option {pair!r}: {key!r} is not an option name")
        if not text.strip():
            raise ValueError(f"--option {pair!r}: no value after '=' (write {key}=null for none)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(
                f"--option {pair!r}: the value is not valid YAML ({yaml_error_text(err)})"
            ) from None
        if key in options:
            raise ValueError(f"--option {pair!r}: option {key!r} is given twice")
        options[key] = value
    return options


@dataclass(frozen=True)
class ReadPlan:
    """How a dataset folder is to be read (see :func:`plan_read`).

    Attributes:
        root: the dataset folder.
        format: the reader to use.
        format_source: how the reader was chosen: ``"given"``, ``"descriptor"``, ``"default"`` (the caller's,
            e.g. a catalog entry) or ``"detected"``.
        rule: which files matched the reader (its ``explain``), or ``None`` when it could not tell.
        options: the merged reader options: the default's, then the descriptor's, then the given ones.
        descriptor: the descriptor whose settings were used, or ``None``.
        sources: option name -> where its value came from (for error messages).
    """

    root: Path
    format: str
    format_source: str
    rule: str | None
    options: dict[str, Any]
    descriptor: DatasetDescriptor | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``"voc reader (detected: 5 XML files ... paired by stem with 5 images in 'Images/')"``."""
        details = [_FORMAT_SOURCES.get(self.format_source, self.format_source)]
        if self.descriptor is not None:
            details.append(f"options of {self.descriptor.path}")
        text = f"{self.format} reader ({', '.join(details)}"
        return f"{text}: {self.rule})" if self.rule else f"{text})"


# How ReadPlan.describe words each format_source.
_FORMAT_SOURCES = {
    "given": "given",
    "descriptor": "named by its descriptor",
    "default": "of its catalog entry",
    "detected": "detected",
}


def plan_read(
    root: str | Path,
    format: str | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    default_format: str | None = None,
    default_options: Mapping[str, Any] | None = None,
) -> ReadPlan:
    """Choose the reader and merge the options for ``root`` (see the module docstring), without reading.

    ``default_format`` / ``default_options`` are the caller's fallback (a catalog entry): the options apply
    only when that reader is the one chosen. Descriptor options apply when the descriptor names no format
    or the chosen one. Raises ``ValueError`` (naming the descriptor field or ``--option``) for an option the
    reader does not have, and :class:`~unihema.data.formats.base.WrongFormatError` when no format is given
    and none is recognised.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    descriptor = load_descriptor(root)
    given = dict(options or {})
    rule: str | None = None
    if format is not None:
        source = "given"
    elif descriptor is not None and descriptor.format is not None:
        format, source = descriptor.format, "descriptor"
    elif default_format is not None:
        format, source = default_format, "default"
    else:
        hints = {**(descriptor.options if descriptor else {}), **given}
        detection = detect(root, hints)
        format, source, rule = detection.format, "detected", detection.rule
    get_reader(format)  # an unknown name fails here, naming the known ones
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if default_options and default_format == format:
        merged.update(default_options)
        sources.update(dict.fromkeys(default_options, "default"))
    used_descriptor = None
    if descriptor is not None and descriptor.format in (None, format):
        used_descriptor = descriptor
        _check_names(
            format, descriptor.options, lambda name: _descriptor_field(descriptor, name), DescriptorError
        )
        merged.update(descriptor.options)
        sources.update(dict.fromkeys(descriptor.options, "descriptor"))
    _check_names(format, given, lambda name: f"option {name!r}")
    merged.update(given)
    sources.update(dict.fromkeys(given, "given"))
    if rule is None:
        explain = getattr(get_reader(format), "explain", None)
        rule = explain(root, merged) if explain is not None else None
    return ReadPlan(root, format, source, rule, merged, used_descriptor, sources)


def read_dataset(
    root: str | Path,
    format: str | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    dataset: str | None = None,
    default_format: str | None = None,
    default_options: Mapping[str, Any] | None = None,
) -> ReadResult:
    """Read the dataset folder ``root``: merge its descriptor and ``options``, pick the reader, read.

    Args:
        root: the dataset folder.
        format: reader name; default: the descriptor's, else ``default_format``, else detected.
        options: reader options (``parse_option_pairs`` of ``--option``), overriding the descriptor's.
        dataset: the dataset's name in the samples (default: the reader's, usually the folder's name).
        default_format: the caller's fallback reader (e.g. a catalog entry's).
        default_options: options of ``default_format``, used only when it is the reader chosen.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: a bad descriptor, an unknown option, or an option value the reader refuses (the message
            says whether it came from the descriptor or was given).
        unihema.data.formats.WrongFormatError: no format given and none recognised, or the folder does not
            hold the format given.
    """
    return read_planned(
        plan_read(root, format, options, default_format=default_format, default_options=default_options),
        dataset=dataset,
    )


def read_planned(plan: ReadPlan, *, dataset: str | None = None, **extra: Any) -> ReadResult:
    """Read with a :func:`plan_read` plan; ``extra`` options (``verify_images``) apply unless the plan sets them."""
    options = {**extra, **plan.options}
    try:
        return get_reader(plan.format).read(plan.root, dataset=dataset, **options)
    except OptionError as err:
        raise ValueError(f"{_where(plan, err.option)}: {err}") from None


def _where(plan: ReadPlan, name: str) -> str:
    source = plan.sources.get(name)
    if source == "descriptor" and plan.descriptor is not None:
        return _descriptor_field(plan.descriptor, name)
    if source == "given":
        return f"option {name!r}"
    return f"{plan.format} reader option {name!r}"


def _descriptor_field(descriptor: DatasetDescriptor, name: str) -> str:
    return f"{descriptor.path}: field 'options.{name}'"


def _check_names(
    format: str, options: Mapping[str, Any], where: Any, error: type[ValueError] = ValueError
) -> None:
    """Raise ``error`` for the first option ``format``'s reader does not have; ``where(name)`` starts it."""
    known = reader_options(get_reader(format))
    for name in options:
        if name not in known:
            raise error(
                f"{where(name)}: the {format} reader has no such option; its options: {', '.join(sorted(known))}"
            )
