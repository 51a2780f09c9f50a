"""Reading the catalog's data files into validated :class:`DatasetInfo` entries.

The catalog lives in YAML files next to this module:

- ``paper.yaml``: the paper's 46 datasets (``kind == "paper"``), in the paper's task order;
- ``staged.yaml``: the real datasets with a native reader (``kind == "staged"``);
- ``citations.yaml``: the Uni-Hema paper's reference number -> reference, for the datasets it cites;
- ``class_sets.yaml``: named class mappings shared by several entries.

An entries file is a list of mappings whose keys are the fields of :class:`DatasetInfo`, except
``kind`` (given by the file) and ``citation`` (looked up from ``paper_ref``), with these shorthands:

- ``tasks`` of a paper entry defaults to ``[paper_task]``;
- ``classes`` is a mapping source label -> unified name, or the name of a class set;
- ``github: owner/name@commit`` (staged entries) sets ``origin``, ``homepage`` and ``download_url`` (the
  archive of that commit);
- ``native_format`` of a staged entry defaults to its ``reader``.

A key left out or ``null`` is not known. Every value is checked on load; a :class:`CatalogError` names the
file, the entry and the field (``.../paper.yaml: entry 'bccd_det'.license must be a string, got 3``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import yaml

from unihema.data.catalog.entry import DatasetInfo, Kind, freeze_options
from unihema.data.schema import Task

CATALOG_DIR = Path(__file__).parent
"""The folder holding the catalog's data files."""

ENTRY_FILES: tuple[tuple[str, Kind], ...] = (("paper.yaml", "paper"), ("staged.yaml", "staged"))
"""The entries files of :data:`CATALOG_DIR` and the kind of their entries, in registry order."""

CITATIONS_FILE = "citations.yaml"
CLASS_SETS_FILE = "class_sets.yaml"

ClassPairs = tuple[tuple[str, str], ...]

_GITHUB_ORIGIN = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)@(?P<commit>[0-9a-f]{7,40})")
_VOCABULARIES = ("detection", "cell")


class CatalogError(ValueError):
    """A catalog data file that does not hold valid entries; the message names the file, entry and field."""


# The C parser when pyyaml has it (faster at import); the duplicate-key check runs in the constructor.
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe YAML loading that rejects a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base constructor reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _fail(where: str, problem: str, value: Any) -> NoReturn:
    shown = repr(value)
    if len(shown) > 80:  # a whole mapping or file would drown the message
        shown = f"{shown[:77]}..."
    raise CatalogError(f"{where} {problem}, got {shown}")


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise CatalogError(f"{path}: not valid YAML: {error}") from None


# --- value checks: each takes the value and where it sits ("<file>: entry 'x'.field") ---------------------


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        _fail(where, "must be a string", value)
    return value


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        _fail(where, "must be a list of strings", value)
    return tuple(_string(item, f"{where}[{index}]") for index, item in enumerate(value))


def _task(value: Any, where: str) -> Task:
    if not isinstance(value, str) or value not in {task.value for task in Task}:
        _fail(where, f"must be one of {', '.join(task.value for task in Task)}", value)
    return Task(value)


def _task_list(value: Any, where: str) -> tuple[Task, ...]:
    if not isinstance(value, list) or not value:
        _fail(where, "must be a non-empty list of tasks", value)
    return tuple(_task(item, f"{where}[{index}]") for index, item in enumerate(value))


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(where, "must be true or false", value)
    return value


def _size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _fail(where, "must be a number of bytes (an integer >= 0)", value)
    return value


def _vocabulary(value: Any, where: str) -> str:
    if value not in _VOCABULARIES:
        _fail(where, f"must be one of {', '.join(_VOCABULARIES)}", value)
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, "must be a mapping", value)
    for key in value:
        _string(key, f"{where} key")
    return value


def _options(value: Any, where: str) -> tuple[tuple[str, Any], ...]:
    return freeze_options(_mapping(value, where))


def _class_pairs(value: Any, where: str) -> ClassPairs:
    """A mapping source label -> unified name, as ``(source, unified)`` pairs in file order."""
    if not isinstance(value, dict) or not value:
        _fail(where, "must be a non-empty mapping source label -> unified name", value)
    pairs = []
    for source, unified in value.items():
        _string(source, f"{where} label")
        pairs.append((source, _string(unified, f"{where}[{source!r}]")))
    return tuple(pairs)


def _class_set_or_pairs(value: Any, where: str) -> str | ClassPairs:
    """``classes``: a class-set name (resolved by the entry) or a mapping source label -> unified name."""
    return value if isinstance(value, str) else _class_pairs(value, where)


_FieldCheck = Callable[[Any, str], Any]
_SHARED_FIELDS: dict[str, _FieldCheck] = {
    "name": _string,
    "display_name": _string,
    "tasks": _task_list,
    "disease": _string,
    "magnification": _string,
    "native_format": _string,
    "classes": _class_set_or_pairs,
    "class_vocabulary": _vocabulary,
    "license": _string,
    "homepage": _string,
    "download_url": _string,
    "sha256": _string,
    "size": _size,
    "paper_url": _string,
    "paper_ref": _string,
    "aliases": _string_list,
    "notes": _string,
}
_FIELDS: dict[Kind, dict[str, _FieldCheck]] = {
    "paper": {**_SHARED_FIELDS, "paper_task": _task},
    "staged": {
        **_SHARED_FIELDS,
        "reader": _string,
        "reader_options": _options,
        "github": _string,
        "origin": _string,
        "corresponds_to": _string_list,
        "subset": _boolean,
    },
}
_REQUIRED: dict[Kind, tuple[str, ...]] = {
    "paper": ("name", "display_name", "paper_task"),
    "staged": ("name", "display_name", "tasks", "reader"),
}


def _entry(
    raw: Any,
    path: Path,
    number: int,
    kind: Kind,
    citations: Mapping[str, str],
    class_sets: Mapping[str, ClassPairs],
) -> DatasetInfo:
    """Entry ``number`` (from 1) of the entries file ``path``, checked field by field."""
    name = raw.get("name") if isinstance(raw, dict) else None
    where = f"{path}: entry {name!r}" if isinstance(name, str) else f"{path}: entry #{number}"
    if not isinstance(raw, dict):
        _fail(where, "must be a mapping of fields", raw)
    checks = _FIELDS[kind]
    unknown = [key for key in raw if key not in checks]
    if unknown:
        _fail(
            f"{where}.{unknown[0]}",
            f"is not a field of a {kind} entry (fields: {', '.join(checks)})",
            raw[unknown[0]],
        )
    fields = {key: checks[key](value, f"{where}.{key}") for key, value in raw.items() if value is not None}
    for key in _REQUIRED[kind]:
        if key not in fields:
            raise CatalogError(f"{where}.{key} is required")

    if kind == "paper":
        fields.setdefault("tasks", (fields["paper_task"],))
    else:
        fields.setdefault("native_format", fields["reader"])
    if "github" in fields:
        taken = [key for key in ("origin", "homepage", "download_url") if key in fields]
        if taken:
            raise CatalogError(f"{where}.github sets {', '.join(taken)}: give one or the other")
        origin = fields.pop("github")
        match = _GITHUB_ORIGIN.fullmatch(origin)
        if match is None:
            _fail(f"{where}.github", "must be 'owner/name@commit'", origin)
        fields["origin"] = origin
        fields["homepage"] = f"https://github.com/{match['repo']}"
        fields["download_url"] = f"https://github.com/{match['repo']}/archive/{match['commit']}.zip"
    if isinstance(fields.get("classes"), str):
        if fields["classes"] not in class_sets:
            known = ", ".join(class_sets)
            _fail(
                f"{where}.classes",
                f"must name a class set of {CLASS_SETS_FILE} ({known}) or map labels",
                fields["classes"],
            )
        fields["classes"] = class_sets[fields["classes"]]
    if "paper_ref" in fields:
        if fields["paper_ref"] not in citations:
            _fail(f"{where}.paper_ref", f"is not a reference of {CITATIONS_FILE}", fields["paper_ref"])
        fields["citation"] = citations[fields["paper_ref"]]
    try:
        return DatasetInfo(kind=kind, **fields)
    except ValueError as error:  # the entry's own consistency checks (names, vocabularies, readers ...)
        raise CatalogError(f"{path}: {error}") from None


def load_citations(path: str | Path) -> dict[str, str]:
    """Reference number -> reference, from a citations file (a mapping of strings)."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        _fail(f"{path}:", "must hold a mapping reference number -> reference", data)
    return {
        _string(ref, f"{path}: reference key"): _string(text, f"{path}: reference {ref!r}")
        for ref, text in data.items()
    }


def load_class_sets(path: str | Path) -> dict[str, ClassPairs]:
    """Class-set name -> ``(source label, unified name)`` pairs, from a class-sets file."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        _fail(f"{path}:", "must hold a mapping class-set name -> classes", data)
    return {
        _string(name, f"{path}: class-set name"): _class_pairs(pairs, f"{path}: class set {name!r}")
        for name, pairs in data.items()
    }


def load_entries(
    path: str | Path,
    kind: Kind,
    *,
    citations: Mapping[str, str] | None = None,
    class_sets: Mapping[str, ClassPairs] | None = None,
) -> list[DatasetInfo]:
    """The entries of one entries file, validated, in file order.

    Args:
        path: a YAML file holding a list of entries (see the module docstring for the keys).
        kind: the kind of every entry of the file.
        citations: reference number -> reference for ``paper_ref``; default: the catalog's citations.
        class_sets: named class mappings for ``classes``; default: the catalog's class sets.

    Raises:
        CatalogError: the file is not valid YAML, or an entry or field is malformed; the message names the
            file, the entry and the field.
    """
    path = Path(path)
    if citations is None:
        citations = load_citations(CATALOG_DIR / CITATIONS_FILE)
    if class_sets is None:
        class_sets = load_class_sets(CATALOG_DIR / CLASS_SETS_FILE)
    data = _read_yaml(path)
    if not isinstance(data, list):
        _fail(f"{path}:", "must hold a list of entries", data)
    return [
        _entry(raw, path, number, kind, citations, class_sets) for number, raw in enumerate(data, start=1)
    ]


def load_catalog(folder: str | Path = CATALOG_DIR) -> dict[str, DatasetInfo]:
    """Every entry of the catalog's files in ``folder``, by name: paper entries first, then staged ones.

    Raises:
        CatalogError: a malformed file or entry, or a name defined twice.
    """
    folder = Path(folder)
    citations = load_citations(folder / CITATIONS_FILE)
    class_sets = load_class_sets(folder / CLASS_SETS_FILE)
    registry: dict[str, DatasetInfo] = {}
    defined_in: dict[str, Path] = {}
    for file_name, kind in ENTRY_FILES:
        path = folder / file_name
        for entry in load_entries(path, kind, citations=citations, class_sets=class_sets):
            if entry.name in registry:
                raise CatalogError(
                    f"{path}: entry {entry.name!r} is already defined in {defined_in[entry.name]}"
                )
            registry[entry.name] = entry
            defined_in[entry.name] = path
    return registry
