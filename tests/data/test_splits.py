from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.paths import DATASETS_ROOT, dataset_path
from unihema.data import splits as splits_module
from unihema.data.schema import ArrayImage, FileImage, Sample, Task
from unihema.data.splits import (
    HASH_SPLIT_ORIGIN,
    SPLIT_ORIGIN_KEY,
    HashCache,
    SplitConfig,
    assign_splits,
    content_hashes,
    hash_split,
    is_hash_split,
    read_duplicate_hints,
    resolve_cross_dataset_leaks,
)


def _array_sample(
    sample_id: str, dataset: str = "toy", split: str | None = None, value: int = 0, **extra
) -> Sample:
    image = ArrayImage(np.full((4, 4, 3), value, dtype=np.uint8))
    return Sample(image=image, task=Task.CLASSIFICATION, dataset=dataset, sample_id=sample_id, split=split,
                  cell_class=0, extra=dict(extra))  # fmt: skip


def _file_sample(path: Path, dataset: str, split: str | None, sample_id: str | None = None) -> Sample:
    return Sample(image=FileImage(path), task=Task.DETECTION, dataset=dataset, sample_id=sample_id or path.name,
                  split=split, source_path=path)  # fmt: skip


def _write_png(path: Path, value: int) -> Path:
    Image.fromarray(np.full((5, 6, 3), value, dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------- splits


def test_split_config_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction"):
        SplitConfig(val_fraction=-0.1)
    with pytest.raises(ValueError, match="no training data"):
        SplitConfig(val_fraction=0.5, test_fraction=0.5)


def test_hash_split_fractions_and_seed():
    config = SplitConfig(val_fraction=0.2, test_fraction=0.1, seed=3)
    keys = [f"ds/img_{i}.png" for i in range(6000)]
    assigned = [hash_split(k, config) for k in keys]
    fractions = {s: assigned.count(s) / len(keys) for s in ("train", "val", "test")}
    assert abs(fractions["val"] - 0.2) < 0.02
    assert abs(fractions["test"] - 0.1) < 0.02
    reseeded = [hash_split(k, SplitConfig(val_fraction=0.2, test_fraction=0.1, seed=4)) for k in keys]
    assert reseeded != assigned
    assert [hash_split(k, config) for k in keys] == assigned  # deterministic


def test_assign_splits_keeps_source_split_and_is_stable_when_samples_are_added():
    config = SplitConfig(val_fraction=0.2, test_fraction=0.2)
    own = _array_sample("fixed", split="val")
    first = assign_splits([own] + [_array_sample(f"s{i}") for i in range(200)], config)
    assert first[0].split == "val" and first[0] is own
    assert all(s.split in ("train", "val", "test") for s in first)
    more = assign_splits([own] + [_array_sample(f"s{i}") for i in range(400)], config)
    assert [s.split for s in more[:201]] == [s.split for s in first]
    # the input samples are not modified
    raw = _array_sample("x")
    assign_splits([raw], config)
    assert raw.split is None
    # respect_source_split=False re-splits every sample by hash
    forced = assign_splits(
        [own], SplitConfig(val_fraction=0.2, test_fraction=0.2, respect_source_split=False)
    )
    assert forced[0].split == hash_split("toy/fixed", config)


def test_assign_splits_keeps_split_groups_together_and_rejects_unknown_split():
    config = SplitConfig(val_fraction=0.3, test_fraction=0.3)
    crops = [_array_sample(f"img{g}#crop{c}", split_group=f"img{g}") for g in range(50) for c in range(4)]
    assigned = assign_splits(crops, config)
    for g in range(50):
        assert len({s.split for s in assigned[g * 4 : g * 4 + 4]}) == 1
    assert len({s.split for s in assigned}) == 3
    with pytest.raises(ValueError, match="toy/bad.*'holdout'"):
        assign_splits([_array_sample("bad", split="holdout")])


def test_assign_splits_marks_the_samples_it_splits_by_hash():
    config = SplitConfig(val_fraction=0.2, test_fraction=0.2)
    published = _array_sample("own", split="test", note="kept")
    drawn = _array_sample("drawn", note="kept")
    kept, hashed = assign_splits([published, drawn], config)
    assert kept is published and not is_hash_split(kept) and SPLIT_ORIGIN_KEY not in kept.extra
    assert is_hash_split(hashed) and hashed.extra == {"note": "kept", SPLIT_ORIGIN_KEY: HASH_SPLIT_ORIGIN}
    assert hashed.split == hash_split("toy/drawn", config)
    assert drawn.extra == {"note": "kept"} and drawn.split is None  # the input's extra is not shared
    (resplit,) = assign_splits([published], SplitConfig(respect_source_split=False))
    assert is_hash_split(resplit)


# ---------------------------------------------------------------------------------------------- hashing


def test_hash_cache_reuses_unchanged_files_and_detects_changes(tmp_path, monkeypatch):
    a = _write_png(tmp_path / "a.png", 10)
    b = tmp_path / "b_copy.png"
    b.write_bytes(a.read_bytes())
    c = _write_png(tmp_path / "c.png", 20)
    cache = HashCache(tmp_path / "cache" / "hashes.json")
    ha, hb, hc = (cache.file_hash(p) for p in (a, b, c))
    assert ha == hb != hc

    calls = []
    original = splits_module._hash_file
    monkeypatch.setattr(splits_module, "_hash_file", lambda p: calls.append(p) or original(p))
    assert cache.file_hash(a) == ha and calls == []  # cached
    _write_png(c, 30)
    stat = os.stat(c)
    os.utime(c, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    assert cache.file_hash(c) != hc and len(calls) == 1

    cache.save()
    reloaded = HashCache(tmp_path / "cache" / "hashes.json")
    assert len(reloaded) == 3
    assert reloaded.file_hash(a) == ha and len(calls) == 1  # served from the saved cache

    (tmp_path / "broken.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="broken.json"):
        HashCache(tmp_path / "broken.json")


def test_array_images_hash_by_content():
    digests = content_hashes(
        [_array_sample("a", value=1), _array_sample("b", value=1), _array_sample("c", value=2)]
    )
    assert digests[0] == digests[1] != digests[2]


# ---------------------------------------------------------------------------------------------- leaks


def _toy_corpus(tmp_path: Path) -> dict[str, list[Sample]]:
    x = _write_png(tmp_path / "x.png", 1)
    y = _write_png(tmp_path / "y.png", 2)
    z = _write_png(tmp_path / "z.png", 3)
    x_copy = tmp_path / "renamed_x.png"
    x_copy.write_bytes(x.read_bytes())
    y_copy = tmp_path / "renamed_y.png"
    y_copy.write_bytes(y.read_bytes())
    return {
        "a": [_file_sample(x, "a", "test"), _file_sample(y, "a", "val"), _file_sample(z, "a", "train")],
        "b": [
            _file_sample(x_copy, "b", "train"),
            _file_sample(y_copy, "b", "train"),
            _file_sample(z, "b", "test"),
        ],
    }


def test_resolve_drops_training_copies_of_eval_images(tmp_path):
    corpus = _toy_corpus(tmp_path)
    resolved, report = resolve_cross_dataset_leaks(corpus)
    # b's copies of a's test/val images and a's training copy of b's test image are all leaks
    assert sorted((leak.train_dataset, leak.train_sample_id, leak.eval_split) for leak in report.leaks) == [
        ("a", "z.png", "test"), ("b", "renamed_x.png", "test"), ("b", "renamed_y.png", "val"),
    ]  # fmt: skip
    assert report.removed == 3 and report.hashed == 6
    assert [s.sample_id for s in resolved["a"]] == ["x.png", "y.png"]
    assert [s.sample_id for s in resolved["b"]] == ["z.png"]
    assert report.by_pair() == {("a", "b"): 1, ("b", "a"): 2}
    assert (
        "3 training samples" in report.summary()
        and "0 moved into training, 0 moved to val/test, 3 dropped" in report.summary()
    )
    assert len(corpus["b"]) == 3  # input untouched
    report.write_csv(tmp_path / "leaks.csv")
    rows = list(csv.DictReader((tmp_path / "leaks.csv").open()))
    assert len(rows) == 3 and {r["eval_dataset"] for r in rows} == {"a", "b"}


def test_resolve_move_and_same_dataset_option(tmp_path):
    corpus = _toy_corpus(tmp_path)
    moved, report = resolve_cross_dataset_leaks(corpus, action="move")
    assert report.moved == 3 and report.removed == 0
    assert {s.sample_id: s.split for s in moved["b"]} == {
        "renamed_x.png": "test",
        "renamed_y.png": "val",
        "z.png": "test",
    }

    dup = _write_png(tmp_path / "dup.png", 9)
    twin = tmp_path / "dup_twin.png"
    twin.write_bytes(dup.read_bytes())
    own = {"c": [_file_sample(dup, "c", "test"), _file_sample(twin, "c", "train")]}
    kept, report = resolve_cross_dataset_leaks(own, same_dataset=False)
    assert len(kept["c"]) == 2 and not report.leaks
    kept, report = resolve_cross_dataset_leaks(own)
    assert [s.sample_id for s in kept["c"]] == ["dup.png"] and len(report.leaks) == 1

    with pytest.raises(ValueError, match="assign_splits"):
        resolve_cross_dataset_leaks({"d": [_array_sample("unsplit")]})
    with pytest.raises(ValueError, match="action"):
        resolve_cross_dataset_leaks(own, action="keep")  # type: ignore[arg-type]


def _hashed(sample: Sample) -> Sample:
    """``sample`` as :func:`assign_splits` returns a hash-split copy (its split drawn, not published)."""
    sample.extra[SPLIT_ORIGIN_KEY] = HASH_SPLIT_ORIGIN
    return sample


def _shared_images(tmp_path: Path) -> dict[str, list[Sample]]:
    """Images shared by a dataset with a published split (``pub``), one split by hash (``hashed``) and
    another published one (``other``)."""
    paths = {}
    for value, name in enumerate(("x", "y", "z", "w", "solo"), start=1):
        paths[name] = _write_png(tmp_path / f"{name}.png", value)
        for copy in ("hashed", "other"):
            paths[f"{copy}_{name}"] = tmp_path / f"{copy}_{name}.png"
            paths[f"{copy}_{name}"].write_bytes(paths[name].read_bytes())
    return {
        "pub": [
            _file_sample(paths["x"], "pub", "train"),  # x: published train, a hash-split test copy
            _file_sample(paths["y"], "pub", "test"),  # y: published test, a published train copy
            _file_sample(paths["w"], "pub", "val"),  # w: published val and test, a hash-split train copy
            _file_sample(paths["solo"], "pub", "train"),
        ],
        "hashed": [
            _hashed(_file_sample(paths["hashed_x"], "hashed", "test")),
            _hashed(_file_sample(paths["hashed_y"], "hashed", "val")),
            _hashed(_file_sample(paths["hashed_z"], "hashed", "train")),  # z: hash splits only
            _hashed(_file_sample(paths["hashed_w"], "hashed", "train")),
        ],
        "other": [
            _file_sample(paths["other_y"], "other", "train"),
            _hashed(_file_sample(paths["other_z"], "other", "val")),
            _file_sample(paths["other_w"], "other", "test"),
        ],
    }


def _splits(resolved: dict[str, list[Sample]]) -> dict[str, dict[str, str | None]]:
    return {name: {s.sample_id: s.split for s in samples} for name, samples in resolved.items()}


def test_align_gives_every_copy_of_an_image_one_split(tmp_path):
    corpus = _shared_images(tmp_path)
    before = _splits(corpus)
    resolved, report = resolve_cross_dataset_leaks(corpus, action="align")
    # Hash-split copies take the published split (x: into training), else the strictest split (z: val).
    hashed = {"hashed_x.png": "train", "hashed_y.png": "test", "hashed_z.png": "val", "hashed_w.png": "test"}
    assert _splits(resolved) == {
        "pub": {"x.png": "train", "y.png": "test", "w.png": "val", "solo.png": "train"},  # as published
        "hashed": hashed,
        # the published training copy of y follows pub's test copy; published val/test copies stay
        "other": {"other_y.png": "test", "other_z.png": "val", "other_w.png": "test"},
    }
    assert _splits(corpus) == before  # inputs untouched
    assert (report.moved_to_train, report.moved, report.removed, report.hashed) == (1, 4, 0, 11)
    assert report.split_overrides() == {"hashed": hashed}
    outcomes = {pair: (o.moved_to_train, o.moved_to_eval, o.dropped) for pair, o in report.outcomes().items()}
    assert outcomes == {
        ("hashed", "pub"): (1, 1, 0),  # x into training, y to test
        ("hashed", "other"): (0, 2, 0),  # z to other's val, w to other's published test
        ("other", "pub"): (0, 1, 0),  # other's training copy of y
    }
    # The leaks found before aligning: the training copies of x, y, z and w.
    assert sorted((leak.train_dataset, leak.train_sample_id) for leak in report.leaks) == [
        ("hashed", "hashed_w.png"), ("hashed", "hashed_z.png"), ("other", "other_y.png"), ("pub", "x.png"),
    ]  # fmt: skip
    summary = report.summary()
    assert "(align): 1 moved into training, 4 moved to val/test, 0 dropped" in summary
    assert "  hashed (image also in pub): 1 moved into training, 1 moved to val/test, 0 dropped" in summary
    report.write_csv(tmp_path / "aligned.csv")
    rows = list(csv.DictReader((tmp_path / "aligned.csv").open()))
    assert len(rows) == 5 and {r["split_origin"] for r in rows} == {"hash", "source"}
    (x_row,) = [r for r in rows if r["sample_id"] == "hashed_x.png"]
    assert (x_row["old_split"], x_row["new_split"], x_row["other_dataset"]) == ("test", "train", "pub")


def test_align_same_dataset_option_and_that_drop_and_move_ignore_the_split_origin(tmp_path):
    dup = _write_png(tmp_path / "dup.png", 9)
    twin = tmp_path / "dup_twin.png"
    twin.write_bytes(dup.read_bytes())
    own = {"c": [_hashed(_file_sample(dup, "c", "test")), _file_sample(twin, "c", "train")]}
    kept, report = resolve_cross_dataset_leaks(own, action="align", same_dataset=False)
    assert _splits(kept) == {"c": {"dup.png": "test", "dup_twin.png": "train"}} and not report.changes
    aligned, report = resolve_cross_dataset_leaks(own, action="align")
    assert _splits(aligned) == {"c": {"dup.png": "train", "dup_twin.png": "train"}}  # the published split
    assert report.split_overrides() == {"c": {"dup.png": "train"}}

    # drop and move treat hash-split copies as any other: training copies of val/test images leave training.
    corpus = _shared_images(tmp_path)
    dropped, report = resolve_cross_dataset_leaks(corpus)
    assert report.removed == 4 and not report.changes and report.split_overrides() == {}
    assert _splits(dropped)["hashed"] == {"hashed_x.png": "test", "hashed_y.png": "val"}
    assert _splits(dropped)["pub"] == {"y.png": "test", "w.png": "val", "solo.png": "train"}
    moved, report = resolve_cross_dataset_leaks(corpus, action="move")
    assert (report.moved, report.moved_to_train, report.removed) == (4, 0, 0)
    assert _splits(moved)["pub"]["x.png"] == "test" and _splits(moved)["hashed"]["hashed_x.png"] == "test"
    # Only the hash-split samples that moved are overrides (evaluation re-derives their split).
    assert report.split_overrides() == {"hashed": {"hashed_z.png": "val", "hashed_w.png": "test"}}


# ---------------------------------------------------------------------------------------------- real data

CSV_NAME = "CROSS_DATASET_DUPLICATES.csv"


def _real_corpus() -> dict[str, list[Sample]]:
    bccd = dataset_path("bccd") / "BCCD"
    bccd_split = {}
    for split in ("train", "val", "test"):
        for image_id in (bccd / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
            bccd_split[image_id] = split
    txl = dataset_path("txl_pbc") / "TXL_PBC" / "images"
    pbc = dataset_path("pbc") / "PBC_dataset_normal_DIB"
    corpus = {
        "bccd": [
            _file_sample(p, "bccd", bccd_split[p.stem]) for p in sorted((bccd / "JPEGImages").glob("*.jpg"))
        ],
        "txl_pbc": [
            _file_sample(p, "txl_pbc", split, f"{split}/{p.name}")
            for split in ("train", "val", "test")
            for p in sorted((txl / split).glob("*.jpg"))
        ],
        # PBC has no split of its own: hash split by sample id
        "pbc": [
            _file_sample(p, "pbc", None, f"{p.parent.name}/{p.name}") for p in sorted(pbc.glob("*/*.jpg"))
        ],
    }
    corpus["pbc"] = assign_splits(corpus["pbc"], SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=0))
    return corpus


@pytest.mark.realdata
def test_real_bccd_txl_pbc_leaks_match_duplicate_list(tmp_path):
    corpus = _real_corpus()
    assert (len(corpus["bccd"]), len(corpus["txl_pbc"]), len(corpus["pbc"])) == (364, 1440, 2560)
    csv_path = DATASETS_ROOT / CSV_NAME
    if not csv_path.is_file():
        pytest.skip(f"{csv_path} missing")

    # Expected leaks from the precomputed list: staged pairs where one side is train, the other val/test.
    by_rel_path = {str(s.source_path.relative_to(DATASETS_ROOT)): s for ss in corpus.values() for s in ss}
    expected: set[tuple[str, str]] = set()
    staged_pairs = 0
    for txl_rel, other_rel in read_duplicate_hints(csv_path):
        if other_rel not in by_rel_path:  # the other file is not in the staged subset
            continue
        staged_pairs += 1
        a, b = by_rel_path[txl_rel], by_rel_path[other_rel]
        for train, other in ((a, b), (b, a)):
            if train.split == "train" and other.split in ("val", "test"):
                expected.add((train.dataset, train.sample_id))
    assert staged_pairs == 390  # as documented next to the CSV

    cache = HashCache(tmp_path / "hashes.json")
    resolved, report = resolve_cross_dataset_leaks(corpus, cache=cache)
    found = {(leak.train_dataset, leak.train_sample_id) for leak in report.leaks}
    assert found == expected
    assert report.removed == len(expected) > 0
    assert {pair[0] for pair in report.by_pair()} <= {"bccd", "txl_pbc", "pbc"}

    # After resolution no training image equals any val/test image, by content.
    flat = [s for ss in resolved.values() for s in ss]
    digests = content_hashes(flat, cache)
    train_hashes = {d for s, d in zip(flat, digests) if s.split == "train"}
    eval_hashes = {d for s, d in zip(flat, digests) if s.split != "train"}
    assert not train_hashes & eval_hashes
    # Every staged duplicate pair of the CSV is found by hashing (and nothing beyond it across datasets).
    all_flat = [s for ss in corpus.values() for s in ss]
    groups: dict[str, set[str]] = {}
    for sample, digest in zip(all_flat, content_hashes(all_flat, cache)):
        groups.setdefault(digest, set()).add(str(sample.source_path.relative_to(DATASETS_ROOT)))
    hashed_pairs = sum(len(g) - 1 for g in groups.values() if len(g) > 1)
    assert hashed_pairs == staged_pairs


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore::unihema.data.formats._common.ReaderWarning")
def test_real_wbcatt_keeps_its_training_images_under_align(tmp_path):
    """WBCAtt publishes a split for PBC images; PBC has none. Dropping loses WBCAtt training images to PBC's
    hash split, aligning keeps them all (PBC's copies follow WBCAtt's split)."""
    from unihema.data.catalog import get_dataset
    from unihema.data.formats import read_dataset

    corpus = {}
    for name in ("pbc", "wbcatt"):
        entry = get_dataset(name)
        result = read_dataset(
            dataset_path(name), dataset=name, default_format=entry.reader, default_options=entry.options
        )
        corpus[name] = assign_splits(result.samples, SplitConfig(val_fraction=0.1, test_fraction=0.1))
    cache = HashCache(tmp_path / "hashes.json")
    dropped, _ = resolve_cross_dataset_leaks(corpus, action="drop", cache=cache)
    aligned, report = resolve_cross_dataset_leaks(corpus, action="align", cache=cache)

    def wbcatt_train(resolved: dict[str, list[Sample]]) -> int:
        return sum(s.split == "train" for s in resolved["wbcatt"])

    assert _splits(aligned)["wbcatt"] == _splits(corpus)["wbcatt"]  # its published split wins everywhere
    # Dropping loses the images PBC's hash split puts in val/test (about 20 %), aligning none.
    assert wbcatt_train(aligned) == wbcatt_train(corpus) > 0
    assert wbcatt_train(dropped) < 0.9 * wbcatt_train(corpus)
    assert report.removed == 0 and report.moved_to_train > 0 and set(report.split_overrides()) == {"pbc"}
    # One split per image afterwards.
    flat = [s for samples in aligned.values() for s in samples]
    splits_of: dict[str, set[str | None]] = {}
    for sample, digest in zip(flat, content_hashes(flat, cache)):
        splits_of.setdefault(digest, set()).add(sample.split)
    assert all(len(found) == 1 for found in splits_of.values())
