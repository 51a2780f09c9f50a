from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from unihema.data.sampler import MultiTaskBatchSampler
from unihema.data.schema import ArrayImage, Sample, Task

_PIXEL = ArrayImage(np.zeros((2, 2, 3), dtype=np.uint8))


def _samples(task: Task, counts: dict[str, int]) -> list[Sample]:
    return [
        Sample(image=_PIXEL, task=task, dataset=name, sample_id=f"{name}/{i}")
        for name, n in counts.items()
        for i in range(n)
    ]


def _corpus(det: int = 30, seg: int = 12, cls: int = 21) -> dict[Task, list[Sample]]:
    return {
        Task.DETECTION: _samples(Task.DETECTION, {"bccd": det}),
        Task.SEGMENTATION: _samples(Task.SEGMENTATION, {"seg": seg}),
        Task.CLASSIFICATION: _samples(Task.CLASSIFICATION, {"pbc": cls}),
    }


def _task_ranges(sampler: MultiTaskBatchSampler) -> dict[Task, range]:
    return {t: range(sampler.offsets[t], sampler.offsets[t] + sampler.sizes[t]) for t in sampler.tasks}


def test_round_robin_batches_are_task_homogeneous_and_cover_each_sample_once():
    sampler = MultiTaskBatchSampler(
        _corpus(), {Task.DETECTION: 4, Task.SEGMENTATION: 3, Task.CLASSIFICATION: 5}, seed=1
    )
    batches = list(sampler)
    ranges = _task_ranges(sampler)
    tasks = [sampler.task_of(b[0]) for b in batches]
    for batch, task in zip(batches, tasks):
        assert all(i in ranges[task] for i in batch)
        assert len(batch) <= sampler.k[task]
    # 30/4 -> 8 batches, 12/3 -> 4, 21/5 -> 5, interleaved in turn until each runs out
    assert len(batches) == len(sampler) == 17
    assert tasks[:6] == [Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION] * 2
    assert tasks[12:] == [Task.DETECTION, Task.CLASSIFICATION, Task.DETECTION, Task.DETECTION, Task.DETECTION]
    flat = sorted(itertools.chain.from_iterable(batches))
    assert flat == list(range(sampler.total_size))


def test_mixed_steps_end_where_the_smallest_task_runs_out():
    k = {Task.DETECTION: 4, Task.SEGMENTATION: 3, Task.CLASSIFICATION: 5}
    sampler = MultiTaskBatchSampler(_corpus(), k, seed=1)
    tasks = [sampler.task_of(b[0]) for b in sampler]
    mixed = sampler.mixed_steps()
    # Segmentation's 4 batches end after 4 rounds of 3 tasks; from there it never comes back.
    assert mixed == 12
    assert set(tasks[:mixed]) == set(k) and Task.SEGMENTATION not in tasks[mixed:]
    assert sampler.tail_tasks() == [Task.DETECTION, Task.CLASSIFICATION]
    assert set(tasks[mixed:]) == set(sampler.tail_tasks())
    weighted = MultiTaskBatchSampler(_corpus(), k, seed=1, mode="weighted")
    assert weighted.mixed_steps() == len(weighted) and weighted.tail_tasks() == []
    even = MultiTaskBatchSampler(_corpus(det=12, seg=12, cls=12), 3, seed=1)
    assert even.mixed_steps() == len(even) and even.tail_tasks() == []


def test_determinism_seed_and_epoch():
    corpus = _corpus()
    a = list(MultiTaskBatchSampler(corpus, 4, seed=7, mode="weighted"))
    b = list(MultiTaskBatchSampler(corpus, 4, seed=7, mode="weighted"))
    c = list(MultiTaskBatchSampler(corpus, 4, seed=8, mode="weighted"))
    assert a == b and a != c
    sampler = MultiTaskBatchSampler(corpus, 4, seed=7, mode="weighted")
    assert list(sampler) == list(sampler)  # same epoch, same plan
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != a and sorted(itertools.chain(*epoch1)) == sorted(itertools.chain(*a))


@pytest.mark.parametrize("mode", ["round_robin", "weighted", "joint"])
def test_rank_shards_are_disjoint_and_covering(mode):
    world = 3
    corpus = _corpus(det=30, seg=12, cls=21)  # all divisible by 3: no padding needed
    samplers = [
        MultiTaskBatchSampler(corpus, 2, seed=5, rank=r, world_size=world, mode=mode) for r in range(world)
    ]
    per_rank = [list(s) for s in samplers]
    assert len({len(batches) for batches in per_rank}) == 1
    # every rank runs the same task at the same step
    for step in zip(*per_rank):
        assert len({tuple(sorted({samplers[0].task_of(i) for i in b})) for b in step}) == 1
    index_sets = [set(itertools.chain(*batches)) for batches in per_rank]
    for x, y in itertools.combinations(index_sets, 2):
        assert not x & y
    union = set().union(*index_sets)
    if mode == "joint":  # the epoch stops with the task that has the fewest batches (zip semantics)
        assert len(per_rank[0]) == 2  # 12 segmentation samples / 3 ranks / 2 per batch
        assert union >= set(_task_ranges(samplers[0])[Task.SEGMENTATION])
    else:
        assert union == set(range(samplers[0].total_size))


def test_uneven_sizes_are_padded_like_distributed_sampler():
    world = 4
    corpus = {Task.DETECTION: _samples(Task.DETECTION, {"a": 10}), Task.VQA: _samples(Task.VQA, {"q": 3})}
    per_rank = [list(MultiTaskBatchSampler(corpus, 2, rank=r, world_size=world)) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    flat = list(itertools.chain.from_iterable(itertools.chain(*b) for b in per_rank))
    assert set(flat) == set(range(13))
    counts = Counter(flat)
    assert sum(c - 1 for c in counts.values()) == (12 - 10) + (4 - 3)  # only the padding repeats


def test_drop_last_truncates_to_disjoint_full_batches():
    world = 4
    corpus = {Task.DETECTION: _samples(Task.DETECTION, {"a": 10}), Task.VQA: _samples(Task.VQA, {"q": 5})}
    per_rank = [
        list(MultiTaskBatchSampler(corpus, 1, rank=r, world_size=world, drop_last=True)) for r in range(world)
    ]
    flat = list(itertools.chain.from_iterable(itertools.chain(*b) for b in per_rank))
    assert len(flat) == len(set(flat)) == 8 + 4  # 10 -> 8 detection, 5 -> 4 vqa, nothing repeated
    k2 = list(
        MultiTaskBatchSampler(corpus, {Task.DETECTION: 2, Task.VQA: 1}, world_size=world, drop_last=True)
    )
    assert [len(b) for b in k2] == [2, 1]
    with pytest.raises(ValueError, match="'vqa' has 5 samples, too few"):
        MultiTaskBatchSampler(corpus, 2, world_size=world, drop_last=True)


def test_dataset_weights_are_respected_statistically():
    corpus = {Task.CLASSIFICATION: _samples(Task.CLASSIFICATION, {"small": 50, "large": 150})}
    sampler = MultiTaskBatchSampler(corpus, 10, dataset_weights={"small": 3.0}, seed=0)
    draws = Counter()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        for batch in sampler:
            draws.update("small" if i < 50 else "large" for i in batch)
    share = draws["small"] / sum(draws.values())
    # expected share of "small" = 3*50 / (3*50 + 1*150) = 0.5; 6000 draws -> std ~0.0065
    assert abs(share - 0.5) < 0.03
    unweighted = Counter()
    for batch in MultiTaskBatchSampler(corpus, 10, seed=0):
        unweighted.update("small" if i < 50 else "large" for i in batch)
    assert unweighted == Counter(small=50, large=150)  # natural proportions, each sample once
    zero = MultiTaskBatchSampler(corpus, 10, dataset_weights={"large": 0.0}, seed=0)
    assert all(i < 50 for batch in zero for i in batch)


def test_task_weights_in_weighted_mode():
    sampler = MultiTaskBatchSampler(
        _corpus(det=60, seg=60, cls=60),
        2,
        mode="weighted",
        task_weights={Task.DETECTION: 3.0, Task.SEGMENTATION: 1.0},
    )
    counts = Counter()
    for epoch in range(10):
        sampler.set_epoch(epoch)
        counts.update(sampler.task_of(b[0]) for b in sampler)
    total = sum(counts.values())
    assert counts[Task.CLASSIFICATION] == 0
    assert abs(counts[Task.DETECTION] / total - 0.75) < 0.04
    assert all(len(b) == 2 for b in sampler)  # over-drawn tasks wrap around with full batches


@pytest.mark.parametrize("mode", ["round_robin", "weighted", "joint"])
def test_resume_mid_epoch_continues_the_exact_sequence(mode):
    corpus = _corpus(det=60, seg=36, cls=42)
    kwargs = dict(dataset_weights={"bccd": 2.0}, seed=11, rank=1, world_size=2, mode=mode)
    reference = MultiTaskBatchSampler(corpus, 3, **kwargs)
    reference.set_epoch(4)
    full = list(reference)

    run = MultiTaskBatchSampler(corpus, 3, **kwargs)
    run.set_epoch(4)
    iterator = iter(run)
    head = [next(iterator) for _ in range(3)]
    assert head == full[:3]
    state = run.state_dict()
    assert state["consumed"] == 3 and state["epoch"] == 4
    # a loader that prefetched further still resumes from the batches actually trained on
    next(iterator)
    assert run.state_dict(consumed=3) == state

    resumed = MultiTaskBatchSampler(corpus, 3, **kwargs)
    resumed.load_state_dict(state)
    assert list(resumed) == full[3:]
    assert list(resumed) == full  # the following pass starts the epoch again from its beginning
    resumed.set_epoch(5)
    assert resumed.state_dict()["consumed"] == 0

    other = MultiTaskBatchSampler(corpus, 3, **{**kwargs, "seed": 12})
    with pytest.raises(ValueError, match="different configuration"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="consumed"):
        run.state_dict(consumed=len(run) + 1)


def test_joint_mode_groups_k_per_task():
    k = {Task.DETECTION: 2, Task.SEGMENTATION: 2, Task.CLASSIFICATION: 3}
    sampler = MultiTaskBatchSampler(_corpus(det=30, seg=12, cls=21), k, mode="joint")
    groups = list(sampler)
    assert len(groups) == len(sampler) == 6  # the segmentation task has the fewest batches (12 / 2)
    for group in groups:
        tasks = [sampler.task_of(i) for i in group]
        assert tasks == [Task.DETECTION] * 2 + [Task.SEGMENTATION] * 2 + [Task.CLASSIFICATION] * 3
    longest = MultiTaskBatchSampler(_corpus(det=30, seg=12, cls=21), k, mode="joint", joint_length="max")
    groups = list(longest)
    assert len(groups) == 15  # 30 / 2 detection batches; the others wrap around
    assert all(len(g) == 7 for g in groups)
    assert {i for g in groups for i in g} == set(range(longest.total_size))


def test_no_shuffle_keeps_natural_order():
    sampler = MultiTaskBatchSampler(_corpus(det=5, seg=3, cls=2), 2, shuffle=False)
    assert list(sampler) == [[0, 1], [5, 6], [8, 9], [2, 3], [7], [4]]


def test_invalid_configurations_raise_clear_errors():
    corpus = _corpus()
    with pytest.raises(ValueError, match="mode"):
        MultiTaskBatchSampler(corpus, 2, mode="zip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank"):
        MultiTaskBatchSampler(corpus, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no batch size for \\['classification'\\]"):
        MultiTaskBatchSampler(corpus, {Task.DETECTION: 2, Task.SEGMENTATION: 2})
    with pytest.raises(ValueError, match="'detection' must be >= 1"):
        MultiTaskBatchSampler(corpus, {Task.DETECTION: 0, Task.SEGMENTATION: 2, Task.CLASSIFICATION: 2})
    with pytest.raises(ValueError, match="'vqa' has no samples"):
        MultiTaskBatchSampler({Task.VQA: []}, 2)
    with pytest.raises(ValueError, match="dataset_weights\\['bccd'\\]"):
        MultiTaskBatchSampler(corpus, 2, dataset_weights={"bccd": -1.0})
    with pytest.raises(ValueError, match="task_weights only"):
        MultiTaskBatchSampler(corpus, 2, task_weights={Task.DETECTION: 1.0})
    with pytest.raises(ValueError, match="weight 0"):
        MultiTaskBatchSampler(corpus, 2, dataset_weights={"pbc": 0.0})
