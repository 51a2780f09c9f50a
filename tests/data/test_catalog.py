"""The dataset catalog: the paper's 46 datasets, the staged ones, class mappings, lookups and the docs table."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from support.paths import DATASETS_ROOT, REPO_ROOT
from unihema.data import catalog
from unihema.data.catalog import (
    READER_FORMATS,
    DatasetInfo,
    catalog_markdown,
    get_dataset,
    info_text,
    list_datasets,
    paper_datasets,
    staged_datasets,
)
from unihema.data.catalog.loader import CATALOG_DIR, CatalogError, load_catalog, load_entries
from unihema.data.schema import Task
from unihema.data.vocab import CELL_CLASSES, DETECTION_CLASSES, cell_index, detection_index

PAPER_TABLE = REPO_ROOT.parent / "shared" / "reference" / "paper-datasets.md"
STAGED_NAMES = {
    "bccd", "txl_pbc", "bccd_nucleus_masks", "segmentation_wbc", "pbc", "wbcatt", "bccd_wbc_crops",
    "chula_rbc12", "fiocruz_malaria_thick", "erythrocytesidb1", "sickle_uganda",
}  # fmt: skip


def test_the_paper_counts_46_datasets_per_task_group() -> None:
    entries = paper_datasets()
    assert len(entries) == catalog.PAPER_DATASET_COUNT == 46
    groups = Counter(entry.paper_task for entry in entries)
    # Section 4.1: "18 datasets were used for detection, 11 for segmentation, and 17 for classification".
    assert groups == {Task.SEGMENTATION: 11, Task.DETECTION: 18, Task.CLASSIFICATION: 17}
    assert all(entry.kind == "paper" for entry in entries)
    assert len({entry.name for entry in list_datasets()}) == len(list_datasets()) == 46 + len(STAGED_NAMES)


def test_every_class_mapping_resolves_to_the_canonical_vocabulary_name() -> None:
    mapped = 0
    for entry in list_datasets():
        if entry.classes is None:
            continue
        vocab = DETECTION_CLASSES if entry.class_vocabulary == "detection" else CELL_CLASSES
        lookup = detection_index if entry.class_vocabulary == "detection" else cell_index
        for source, unified in entry.classes:
            assert vocab[lookup(unified)] == unified, (
                f"{entry.name}: {source!r} -> {unified!r} is not canonical"
            )
            mapped += 1
        assert set(entry.class_map) == {source for source, _ in entry.classes}
    assert mapped > 100
    # Spot checks of mappings that need an alias or an explicit rename.
    assert get_dataset("pbc").class_map["ig"] == cell_index("immature granulocyte")
    assert get_dataset("bccd").class_map["Platelets"] == detection_index("platelet")
    assert get_dataset("chula_rbc12").class_map["11"] == cell_index("hypochromic rbc")
    assert get_dataset("erythrocytesidb1").class_map["falciforme"] == cell_index("elongated rbc")


def test_unknown_source_labels_resolve_through_the_vocabulary_aliases_where_the_dataset_uses_words() -> None:
    # Where a dataset's labels are words (not numeric codes), the vocabulary's own alias tables must agree
    # with the catalog, so readers and catalog never disagree on a class.
    for name in ("bccd", "txl_pbc", "pbc", "bccd_wbc_crops", "erythrocytesidb1", "fiocruz_malaria_thick"):
        entry = get_dataset(name)
        lookup = detection_index if entry.class_vocabulary == "detection" else cell_index
        for source, target in entry.classes or ():
            assert lookup(source) == lookup(target), f"{name}: {source!r}"


def test_staged_entries_name_their_folder_reader_and_paper_entries() -> None:
    staged = {entry.name: entry for entry in staged_datasets()}
    assert set(staged) == STAGED_NAMES
    paper_names = {entry.name for entry in paper_datasets()}
    for entry in staged.values():
        assert entry.reader in READER_FORMATS
        assert entry.origin and "@" in entry.origin and entry.homepage
        assert set(entry.corresponds_to) <= paper_names, entry.name
    assert staged["segmentation_wbc"].corresponds_to == ("wbc_image_dataset_seg",)
    assert staged["bccd"].corresponds_to == ("bccd_det",)
    assert staged["txl_pbc"].corresponds_to == ("txl_pbc_det",)
    assert "acevedo_cls" in staged["pbc"].corresponds_to
    assert staged["erythrocytesidb1"].corresponds_to == ("erythrocytesidb_seg",)
    assert staged["chula_rbc12"].corresponds_to == ()
    assert staged["bccd_nucleus_masks"].options == {
        "images_root": "../bccd/BCCD/JPEGImages",
        "mapping": "nonzero",
    }
    options = staged["segmentation_wbc"].options
    options["mapping"] = "changed"  # a fresh dict: the catalog is not modified
    assert staged["segmentation_wbc"].options["mapping"] == "cell"


def test_staged_entries_match_the_dataset_folders() -> None:
    if not DATASETS_ROOT.is_dir():
        pytest.skip(f"datasets not found at {DATASETS_ROOT}")
    folders = {path.name for path in DATASETS_ROOT.iterdir() if path.is_dir()}
    assert folders == STAGED_NAMES
    for name in folders:
        source = (DATASETS_ROOT / name / "SOURCE.md").read_text(encoding="utf-8")
        repo, commit = get_dataset(name).origin.split("@")
        assert repo in source and commit in source, f"{name}: origin differs from SOURCE.md"
        license_ = get_dataset(name).license
        if license_ is not None:
            assert license_.split("-")[0] in source, f"{name}: license {license_!r} not in SOURCE.md"


def _table_rows() -> list[tuple[str, str, str]]:
    rows, task = [], ""
    for line in PAPER_TABLE.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[1] in ("Dataset", "---------"):
            continue
        task = cells[0].strip("*") or task
        link = re.search(r"\((https?://[^)\s]+)\)", cells[2])
        rows.append((task, cells[1], link.group(1) if link else ""))
    return rows


def test_every_row_of_the_authors_table_has_an_entry_in_its_task_group() -> None:
    if not PAPER_TABLE.is_file():
        pytest.skip(f"{PAPER_TABLE} not found")
    rows = _table_rows()
    assert len(rows) == 45
    task_of = {
        "Segmentation": Task.SEGMENTATION,
        "Detection": Task.DETECTION,
        "Classification": Task.CLASSIFICATION,
    }
    for task, name, link in rows:
        candidates = [
            entry for entry in paper_datasets()
            if name in (entry.display_name, *entry.aliases) and entry.paper_task == task_of[task]
        ]  # fmt: skip
        assert len(candidates) == 1, f"{task} / {name}: {[c.name for c in candidates]}"
        entry = candidates[0]
        if link and entry.name != "parasite_det":  # that row's link is a paper; see the entry's notes
            assert link in (entry.homepage, entry.download_url), f"{name}: table link {link} not kept"
    # The paper's extra sources (section 4.1) that the table lacks.
    assert get_dataset("pd_pf_det").paper_ref == "[74]"
    assert get_dataset("nuclick_cls").paper_task == Task.CLASSIFICATION


def test_unknown_fields_are_none_and_displayed_as_unknown() -> None:
    entry = get_dataset("plasmodium_phonecamera_det")
    assert (
        entry.homepage is None and entry.paper_url is None and entry.license is None and entry.classes is None
    )
    assert entry.native_format == "unknown"
    text = info_text(entry)
    assert re.search(r"^homepage\s+unknown$", text, re.M)
    assert re.search(r"^license\s+unknown$", text, re.M)
    assert re.search(r"^classes\s+unknown$", text, re.M)
    data = entry.to_dict()
    assert data["homepage"] is None and data["sha256"] is None and data["classes"] is None
    json.dumps([e.to_dict() for e in list_datasets()])  # every entry is JSON-ready


def test_direct_download_links_are_files_not_pages() -> None:
    direct = {entry.name: entry.download_url for entry in paper_datasets() if entry.download_url}
    assert direct["acevedo_cls"] == "https://data.mendeley.com/public-api/zip/snkd93bnjr/download/1"
    assert direct["elsafty_rbc_seg"] == "https://figshare.com/ndownloader/files/43957974"
    for url in direct.values():
        assert "public-api/zip" in url or "ndownloader" in url, url
    assert get_dataset("bccd_det").download_url is None


def test_get_dataset_by_slug_alias_display_name_and_close_matches() -> None:
    assert get_dataset("txl_pbc_det").display_name == "TXL PBC"
    assert get_dataset("SSL Seg").name == "wbc_image_dataset_seg"
    assert get_dataset("ssl-seg").name == "wbc_image_dataset_seg"
    assert get_dataset("BCCD").name == "bccd"  # the staged copy wins over bccd_det / bccd_cls
    assert get_dataset("MiniSit").name == "bloodmnist_cls"
    with pytest.raises(KeyError, match="mp_idb_seg, mp_idb_det"):
        get_dataset("MP-IDB")
    with pytest.raises(KeyError, match=r"unknown dataset 'bcdd'.*bccd"):
        get_dataset("bcdd")


def test_entries_are_frozen_and_validated() -> None:
    entry = get_dataset("bccd")
    with pytest.raises(AttributeError):
        entry.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="name must be"):
        DatasetInfo(
            name="Bad Name",
            display_name="x",
            kind="paper",
            tasks=(Task.DETECTION,),
            paper_task=Task.DETECTION,
        )
    with pytest.raises(ValueError, match="paper_task"):
        DatasetInfo(
            name="x", display_name="x", kind="paper", tasks=(Task.DETECTION,), paper_task=Task.SEGMENTATION
        )
    with pytest.raises(ValueError, match="classes and class_vocabulary"):
        DatasetInfo(
            name="x",
            display_name="x",
            kind="staged",
            tasks=("detection",),
            reader="voc",
            classes=(("a", "rbc"),),
        )
    with pytest.raises(ValueError, match="need a reader"):
        DatasetInfo(name="x", display_name="x", kind="staged", tasks=("detection",), reader="nope")
    with pytest.raises(ValueError, match="'no such cell' does not resolve"):
        DatasetInfo(name="x", display_name="x", kind="staged", tasks=("classification",), reader="folders",
                    classes=(("a", "no such cell"),), class_vocabulary="cell")  # fmt: skip
    with pytest.raises(ValueError, match="sha256"):
        DatasetInfo(
            name="x", display_name="x", kind="staged", tasks=("detection",), reader="voc", sha256="abc"
        )


def test_docs_table_is_in_sync_with_the_catalog(tmp_path: Path) -> None:
    docs = REPO_ROOT / "docs" / "datasets.md"
    expected = catalog_markdown()
    assert docs.read_text(encoding="utf-8") == expected, (
        "regenerate: python -m unihema.data.catalog docs/datasets.md"
    )
    for entry in list_datasets():
        assert f"`{entry.name}`" in expected
    written = catalog.write_catalog_markdown(tmp_path / "datasets.md")
    assert written.read_text(encoding="utf-8") == expected
    assert [p.name for p in tmp_path.iterdir()] == ["datasets.md"]  # no temporary file left


def test_the_data_files_load_into_the_registry() -> None:
    assert list(load_catalog(CATALOG_DIR).values()) == list_datasets()


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (
            "paper",
            "- {name: bccd_x, display_name: BCCD, paper_task: detection, license: 3}",
            "entry 'bccd_x'.license must be a string, got 3",
        ),
        (
            "paper",
            "- {name: x, display_name: X, paper_task: detect}",
            "entry 'x'.paper_task must be one of detection, ",
        ),
        (
            "paper",
            "- {name: x, display_name: X, paper_task: detection, licence: MIT}",
            "entry 'x'.licence is not a field",
        ),
        ("paper", "- {display_name: X, paper_task: detection}", "entry #1.name is required"),
        (
            "paper",
            "- {name: x, display_name: X, paper_task: detection, aliases: [a, 3]}",
            "entry 'x'.aliases[1] must be",
        ),
        (
            "paper",
            "- {name: x, display_name: X, paper_task: detection, paper_ref: '[999]'}",
            "entry 'x'.paper_ref is not",
        ),
        (
            "paper",
            "- {name: x, display_name: X, paper_task: detection, classes: nope, class_vocabulary: cell}",
            "entry 'x'.classes must name a class set",
        ),
        (
            "paper",
            "- {name: x, display_name: X, paper_task: detection, size: true}",
            "entry 'x'.size must be",
        ),
        ("paper", "- name: x\n  display_name: X\n  name: y\n", "key 'name' given twice"),
        ("paper", "name: x", "must hold a list of entries"),
        (
            "staged",
            "- {name: x, display_name: X, tasks: [detection], reader: voc, github: nope}",
            "entry 'x'.github",
        ),
        (
            "staged",
            "- {name: x, display_name: X, tasks: [detection], reader: nope}",
            "staged entries need a reader",
        ),
    ],
)
def test_a_malformed_entry_file_names_the_file_entry_and_field(
    tmp_path: Path, kind: str, text: str, message: str
) -> None:
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(CatalogError) as error:
        load_entries(path, kind)  # type: ignore[arg-type]
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_a_name_defined_twice_across_the_data_files_is_refused(tmp_path: Path) -> None:
    for name in ("citations.yaml", "class_sets.yaml", "paper.yaml"):
        shutil.copy(CATALOG_DIR / name, tmp_path / name)
    (tmp_path / "staged.yaml").write_text(
        "- {name: bccd_det, display_name: BCCD, tasks: [detection], reader: voc}\n", encoding="utf-8"
    )
    with pytest.raises(
        CatalogError, match=r"staged\.yaml: entry 'bccd_det' is already defined in .*paper\.yaml"
    ):
        load_catalog(tmp_path)
