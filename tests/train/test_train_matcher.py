"""Hungarian matcher: optimality against brute force, empty targets, validation."""

from __future__ import annotations

import itertools

import pytest
import torch

from unihema.train.matcher import HungarianMatcher, MatcherConfig, matching_cost


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


def _brute_force_cost(cost: torch.Tensor) -> float:
    queries, targets = cost.shape
    best = float("inf")
    if queries >= targets:
        for rows in itertools.permutations(range(queries), targets):
            best = min(best, float(sum(cost[r, c] for c, r in enumerate(rows))))
    else:
        for cols in itertools.permutations(range(targets), queries):
            best = min(best, float(sum(cost[r, c] for r, c in enumerate(cols))))
    return best


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
        assert float(cost[rows, cols].sum()) == pytest.approx(_brute_force_cost(cost), rel=1e-5, abs=1e-5)


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


def test_degenerate_boxes_do_not_break_matching() -> None:
    logits = torch.zeros(1, 3, 2)
    boxes = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]]])
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.0]])}
    ((rows, cols),) = HungarianMatcher()(logits, boxes, [target])
    assert rows.numel() == 1 and cols.tolist() == [0]


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
    with pytest.raises(ValueError, match="all costs are 0"):
        MatcherConfig(cost_class=0, cost_bbox=0, cost_giou=0)
