"""The dataset catalog: the 46 datasets of the Uni-Hema paper, and the real datasets this package reads.

Two kinds of entries live in one registry:

- **paper entries** (``kind == "paper"``): one per dataset *and task group* as the paper counts them
  ("11 segmentation, 18 detection and 17 classification datasets", section 4.1: 46 in all). They are the
  rows of the dataset table the authors published with their code, reconciled with section 4.1:

  * the table lists "WBC Image Dataset" and "SSL Seg" with the same link (``zxaoyou/segmentation_WBC``)
    and section 4.1 names only the "WBC Image dataset [90]": one entry, with "SSL Seg" as an alias;
  * section 4.1 cites NuClick [32] among the classification sources, the table only under segmentation:
    an extra classification entry;
  * section 4.1 names PD-PF [74] among the detection datasets, the table does not: an extra detection
    entry. ErythrocytesIDB [19] and AneRBC [65] are also named among the detection datasets; they keep
    their single segmentation entry, with ``Task.DETECTION`` added to their tasks and a note.

  A dataset the table lists under two task groups (BCCD, KRD-WBC, MP-IDB, Acevedo, NuClick) has one entry
  per group, hence the ``_seg`` / ``_det`` / ``_cls`` suffix of every paper entry's name.
- **staged entries** (``kind == "staged"``): the real datasets with a native reader in
  :mod:`unihema.data.formats`, named like their folder (``bccd``, ``txl_pbc`` ...), with the reader and
  its options, the origin repository and commit, and the paper entries they correspond to.

Facts come from the paper (its section 4.1, tables and reference list), the authors' dataset table, and
for staged entries from each dataset's ``SOURCE.md``. A field nobody could check is ``None`` (shown as
"unknown"), never a guess. Links are kept as published, including the odd ones; ``notes`` says when a
link looks wrong.

The entries are data: YAML files in this package (``paper.yaml``, ``staged.yaml``, with the shared
``citations.yaml`` and ``class_sets.yaml``), read and validated on import by :mod:`.loader`. The entry
type is in :mod:`.entry`, the lookups in :mod:`.registry`, the markdown table and info text in
:mod:`.render`. ``python -m unihema.data.catalog docs/datasets.md`` regenerates the docs table.
"""

from unihema.data.catalog.entry import READER_FORMATS, UNKNOWN_TEXT, DatasetInfo, display
from unihema.data.catalog.registry import (
    PAPER_DATASET_COUNT,
    get_dataset,
    list_datasets,
    paper_datasets,
    staged_dataset_for_folder,
    staged_datasets,
)
from unihema.data.catalog.render import catalog_markdown, info_text, write_catalog_markdown

__all__ = [
    "PAPER_DATASET_COUNT",
    "READER_FORMATS",
    "UNKNOWN_TEXT",
    "DatasetInfo",
    "catalog_markdown",
    "display",
    "get_dataset",
    "info_text",
    "list_datasets",
    "paper_datasets",
    "staged_dataset_for_folder",
    "staged_datasets",
    "write_catalog_markdown",
]
