"""Training for a fixed budget of training time (data loading excluded), shared by the benchmarks."""

from __future__ import annotations

import time
from typing import Any

import torch


def train_for(minutes: float, loader: Any, loss_of: Any, optimizer: Any, params: list, clip: float) -> int:
    """Optimiser steps on ``loss_of(batch, step)`` until ``minutes`` of training time; returns the steps."""
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
            if trained >= minutes * 60:
                break
    return steps
