"""Hungarian matcher: the brute-force optimal assignment (also where greedy matching and degenerate boxes
fail), empty targets, validation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import torch

from unihema.train.matcher import HungarianMatcher, MatcherConfig, matching_cost


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


def _assignments(queries: int, targets: int) -> Iterator[list[tuple[int, int]]]:
    """Every one-to-one assignment of ``min(queries, targets)`` (query, target) pairs, sorted by query."""
    if queries >= targets:
        for rows in itertools.permutations(range(queries), targets):
            yield sorted(zip(rows, range(targets)))
    else:
        for cols in itertools.permutations(range(targets), queries):
            yield list(zip(range(queries), cols))


def _ranked_assignments(cost: torch.Tensor) -> list[tuple[float, list[tuple[int, int]]]]:
    """All assignments with their total cost, cheapest first; a NaN pair makes the total infinite."""
    table = cost.tolist()
    ranked = []
    for pairs in _assignments(*cost.shape):
        total = sum(table[q][t] for q, t in pairs)
        ranked.append((float("inf") if math.isnan(total) else total, pairs))
    return sorted(ranked, key=lambda item: item[0])


def _greedy_assignment(cost: torch.Tensor) -> list[tuple[int, int]]:
    """Each target in turn takes its cheapest free query (NaN pairs last)."""
    table = torch.nan_to_num(cost, nan=float("inf")).tolist()
    free, pairs = set(range(cost.shape[0])), []
    for target in range(cost.shape[1]):
        if not free:
            break
        query = min(free, key=lambda q: table[q][target])
        free.remove(query)
        pairs.append((query, target))
    return sorted(pairs)


def _identity_assignment(cost: torch.Tensor) -> list[tuple[int, int]]:
    return [(i, i) for i in range(min(cost.shape))]


def _matched_pairs(rows: torch.Tensor, cols: torch.Tensor) -> list[tuple[int, int]]:
    return list(zip(rows.tolist(), cols.tolist()))


@pytest.mark.parametrize(("queries", "targets"), [(5, 3), (4, 4), (6, 1), (3, 5)])
def test_matches_brute_force_optimum(queries: int, targets: int) -> None:
    generator = torch.Generator().manual_seed(queries * 10 + targets)
    matcher = HungarianMatcher()
    for _ in range(5):
        logits = torch.randn(1, queries, 7, generator=generator)
        boxes = _random_boxes(queries, generator)[None]
        target = {
            "labels": torch.randint(0, 7, (targets,), generator=generator),
            "boxes": _random_boxes(targets, generator),
        }
        ((rows, cols),) = matcher(logits, boxes, [target])
        assert len(rows) == len(cols) == min(queries, targets)
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        cost = matching_cost(logits[0], boxes[0], target["labels"], target["boxes"], matcher.config)
        best_total = _ranked_assignments(cost)[0][0]
        assert float(cost[rows, cols].sum()) == pytest.approx(best_total, rel=1e-5, abs=1e-5)


def test_recovers_a_permutation_of_exact_predictions() -> None:
    generator = torch.Generator().manual_seed(0)
    targets_boxes = _random_boxes(4, generator)
    labels = torch.tensor([0, 2, 1, 2])
    permutation = torch.tensor([3, 0, 2, 1])  # query q predicts target permutation[q]
    boxes = targets_boxes[permutation][None]
    logits = torch.full((1, 4, 3), -6.0)
    logits[0, torch.arange(4), labels[permutation]] = 6.0
    ((rows, cols),) = HungarianMatcher()(logits, boxes, [{"labels": labels, "boxes": targets_boxes}])
    assert torch.equal(cols, permutation[rows])


def test_handles_images_without_targets_in_a_batch() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 4, generator=generator)
    boxes = torch.stack([_random_boxes(5, generator), _random_boxes(5, generator)])
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    full = {"labels": torch.tensor([1, 3]), "boxes": _random_boxes(2, generator)}
    indices = HungarianMatcher()(logits, boxes, [empty, full])
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    assert sorted(indices[1][1].tolist()) == [0, 1]


def _random_case(
    queries: int, targets: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Logits, boxes and a target dict in which about a quarter of the boxes have zero width and/or height."""
    boxes = [_random_boxes(n, generator) for n in (queries, targets)]
    for box in boxes:
        degenerate = torch.rand(box.shape[0], 2, generator=generator) < 0.25
        box[:, 2:][degenerate] = 0.0
    labels = torch.randint(0, 5, (targets,), generator=generator)
    logits = torch.randn(1, queries, 5, generator=generator) * 2
    return logits, boxes[0][None], {"labels": labels, "boxes": boxes[1]}


@pytest.mark.parametrize(("queries", "targets"), [(4, 3), (5, 5), (6, 4), (3, 5)])
def test_assignment_is_the_brute_force_optimum_where_greedy_and_identity_are_not(
    queries: int, targets: int
) -> None:
    matcher = HungarianMatcher()
    generator = torch.Generator().manual_seed(100 + queries * 10 + targets)
    checked = nonfinite_cases = 0
    for _ in range(300):
        logits, boxes, target = _random_case(queries, targets, generator)
        cost = matching_cost(logits[0], boxes[0], target["labels"], target["boxes"], matcher.config)
        (best_total, expected), (runner_up, _) = _ranked_assignments(cost)[:2]
        # Only cases with one clear, finite optimum that neither shortcut finds.
        if not math.isfinite(best_total) or runner_up - best_total < 1e-3:
            continue
        if expected in (_greedy_assignment(cost), _identity_assignment(cost)):
            continue
        ((rows, cols),) = matcher(logits, boxes, [target])
        assert _matched_pairs(rows, cols) == expected
        checked += 1
        nonfinite_cases += int(cost.isnan().any())
        if checked >= 6 and nonfinite_cases:
            break
    # Enough such cases were checked, some with degenerate pairs whose cost is NaN.
    assert checked >= 6 and nonfinite_cases > 0


def test_overlapping_boxes_get_the_optimal_not_the_greedy_assignment() -> None:
    # Equal-sized boxes on one horizontal line. Query 0 is the nearest to target 0 (0.04 away) but also the
    # only good match of target 1 (0.08 away); query 1 is 0.08 from target 0 and 0.20 from target 1. Greedy
    # matching in target order pairs (q0, t0), (q1, t1); the optimum is (q0, t1), (q1, t0). Query 2, a
    # zero-size box, is a distractor far from both.
    targets = {
        "labels": torch.tensor([1, 1]),
        "boxes": torch.tensor([[0.30, 0.5, 0.2, 0.2], [0.42, 0.5, 0.2, 0.2]]),
    }
    boxes = torch.tensor([[[0.34, 0.5, 0.2, 0.2], [0.22, 0.5, 0.2, 0.2], [0.9, 0.9, 0.0, 0.0]]])
    logits = torch.zeros(1, 3, 2)
    matcher = HungarianMatcher()
    cost = matching_cost(logits[0], boxes[0], targets["labels"], targets["boxes"], matcher.config)
    assert _greedy_assignment(cost) == [(0, 0), (1, 1)]
    expected = _ranked_assignments(cost)[0][1]
    assert expected == [(0, 1), (1, 0)]
    ((rows, cols),) = matcher(logits, boxes, [targets])
    assert _matched_pairs(rows, cols) == expected


def test_rejects_bad_inputs() -> None:
    matcher = HungarianMatcher()
    with pytest.raises(ValueError, match="outside the 3 predicted classes"):
        matcher(
            torch.zeros(1, 2, 3),
            torch.full((1, 2, 4), 0.5),
            [{"labels": torch.tensor([3]), "boxes": torch.full((1, 4), 0.5)}],
        )
    with pytest.raises(ValueError, match="label -1 outside"):  # the offending label, not the maximum
        matcher(
            torch.zeros(1, 2, 3),
            torch.full((1, 2, 4), 0.5),
            [{"labels": torch.tensor([-1, 2]), "boxes": torch.full((2, 4), 0.5)}],
        )
    with pytest.raises(ValueError, match="2 target dicts for a batch of 1"):
        matcher(torch.zeros(1, 2, 3), torch.full((1, 2, 4), 0.5), [{}, {}])
    with pytest.raises(ValueError, match=r"MatcherConfig.cost_\* must not all be 0"):
        MatcherConfig(cost_class=0, cost_bbox=0, cost_giou=0)


def test_one_to_many_gives_each_target_its_k_cheapest_free_queries() -> None:
    generator = torch.Generator().manual_seed(3)
    targets = _random_boxes(3, generator)
    # Queries 0-3 are copies of target 0 jittered by growing amounts, 4-7 of target 1; 8-9 are far away.
    queries = torch.cat(
        [torch.stack([targets[0] + 0.01 * i for i in range(4)])]
        + [torch.stack([targets[1] + 0.01 * i for i in range(4)])]
        + [torch.tensor([[0.05, 0.05, 0.02, 0.02], [0.95, 0.95, 0.02, 0.02]])]
    )
    logits = torch.zeros(1, len(queries), 2)
    target = {"labels": torch.tensor([0, 0, 1]), "boxes": targets}
    matcher = HungarianMatcher()
    rows, cols = matcher.one_to_many(logits, queries[None], [target], k=3)[0]
    assignment = dict(zip(rows.tolist(), cols.tolist()))
    # Each target's three cheapest queries, each query once; the worst copy of each stays unmatched.
    assert [q for q, t in assignment.items() if t == 0] == [0, 1, 2]
    assert [q for q, t in assignment.items() if t == 1] == [4, 5, 6]
    assert len(set(rows.tolist())) == len(rows)
    cost = matching_cost(logits[0], queries, target["labels"], targets, MatcherConfig())
    assert {q for q, t in assignment.items() if t == 2} <= set(
        cost[:, 2].topk(3, largest=False).indices.tolist()
    )
    for q, t in assignment.items():  # a query wanted by two targets goes to the cheaper one
        wanted_by = [j for j in range(3) if q in cost[:, j].topk(3, largest=False).indices.tolist()]
        assert t == min(wanted_by, key=lambda j: float(cost[q, j]))


def test_one_to_many_with_fewer_queries_than_k_and_no_targets() -> None:
    boxes = torch.tensor([[[0.3, 0.3, 0.1, 0.1], [0.6, 0.6, 0.1, 0.1]]])
    logits = torch.zeros(1, 2, 2)
    matcher = HungarianMatcher()
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.3, 0.3, 0.1, 0.1]])}
    rows, cols = matcher.one_to_many(logits, boxes, [target], k=5)[0]
    assert rows.tolist() == [0, 1] and cols.tolist() == [0, 0]
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    rows, cols = matcher.one_to_many(logits, boxes, [empty], k=2)[0]
    assert rows.numel() == 0 and cols.numel() == 0
    with pytest.raises(ValueError, match="one_to_many k"):
        matcher.one_to_many(logits, boxes, [target], k=0)
