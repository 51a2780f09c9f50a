"""The catalog's registry: every entry by name, loaded once from the data files, and the lookups."""

from __future__ import annotations

import difflib

from unihema.data.catalog.entry import DatasetInfo, Kind
from unihema.data.catalog.loader import load_catalog

_REGISTRY: dict[str, DatasetInfo] = load_catalog()

PAPER_DATASET_COUNT = 46
"""Number of datasets the paper trains and evaluates on (11 segmentation + 18 detection + 17 classification)."""


def list_datasets(kind: Kind | None = None) -> list[DatasetInfo]:
    """Every catalog entry (paper entries first, in the paper's task order), optionally of one ``kind``."""
    return [entry for entry in _REGISTRY.values() if kind is None or entry.kind == kind]


def paper_datasets() -> list[DatasetInfo]:
    """The paper's 46 datasets (segmentation, then detection, then classification)."""
    return list_datasets("paper")


def staged_datasets() -> list[DatasetInfo]:
    """The real datasets this package reads, with their reader and options."""
    return list_datasets("staged")


def _key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def get_dataset(name: str) -> DatasetInfo:
    """The entry named ``name`` (slug, display name or alias, case and punctuation ignored).

    A display name or alias shared by several entries (``"BCCD"``: ``bccd``, ``bccd_det``, ``bccd_cls``)
    resolves to the staged entry when there is one, else raises ``KeyError`` listing the candidates.

    Raises:
        KeyError: unknown name, with the closest matches.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    key = _key(name)
    matches = [
        entry
        for entry in _REGISTRY.values()
        if key in {_key(entry.name), _key(entry.display_name), *map(_key, entry.aliases)}
    ]
    staged = [entry for entry in matches if entry.kind == "staged" and _key(entry.name) == key]
    if staged:
        return staged[0]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(entry.name for entry in matches)
        raise KeyError(f"dataset name {name!r} is ambiguous: it matches {names}")
    candidates = {_key(entry.name): entry.name for entry in _REGISTRY.values()}
    for entry in _REGISTRY.values():
        for alias in (entry.display_name, *entry.aliases):
            candidates.setdefault(_key(alias), entry.name)
    close = difflib.get_close_matches(key, list(candidates), n=5, cutoff=0.5)
    suggestions = list(dict.fromkeys(candidates[c] for c in close))
    hint = (
        f"; did you mean {', '.join(suggestions)}?" if suggestions else "; run `unihema data list` to see all"
    )
    raise KeyError(f"unknown dataset {name!r}{hint}")


def staged_dataset_for_folder(folder_name: str) -> DatasetInfo | None:
    """The staged entry whose name is ``folder_name`` (a dataset folder's name), or ``None``."""
    entry = _REGISTRY.get(folder_name)
    return entry if entry is not None and entry.kind == "staged" else None
