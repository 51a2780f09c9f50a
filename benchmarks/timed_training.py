"""Training for a fixed budget of training time (data loading excluded), shared by the benchmarks."""

from __future__ import annotations

import time
from typing import Any

import torch


def train_for(
    minutes: float,
    loader: Any,
    loss_of: Any,
    optimizer: Any,
    params: list,
    clip: float,
    after_step: Any = None,
) -> int:
    """Optimiser steps on ``loss_of(batch, step)`` until ``minutes`` of training time; returns the steps.

    ``after_step(steps, spent)``, when given, runs after each optimiser step (outside the clock) with the
    steps taken and the fraction of the budget spent, for weight averages and time-based schedules."""
    trained, steps = 0.0, 0
    while trained < minutes * 60:
        for batch in loader:
            started = time.perf_counter()
            loss = loss_of(batch, steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            trained += time.perf_counter() - started
            steps += 1
            if after_step is not None:
                after_step(steps, trained / (minutes * 60))
            if trained >= minutes * 60:
                break
    return steps
