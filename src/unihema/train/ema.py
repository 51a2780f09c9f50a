"""Exponential moving average of the weights (Polyak averaging), the model a short run evaluates and saves.

Built on :class:`torch.optim.swa_utils.AveragedModel`. The decay ramps up from zero over the first
updates, ``decay * (1 - exp(-updates / warmup_steps))``, so the average does not drag the random
initialisation along while the weights still move fast (the ramp ultralytics and RT-DETR use).
Buffers (BatchNorm's running statistics) are averaged with the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from unihema.validation import is_number


def ramped_decay(decay: float, warmup_steps: float, updates: int) -> float:
    """The decay applied at the ``updates``-th update (1-based): ``decay`` approached from zero."""
    return decay * (1.0 - math.exp(-updates / warmup_steps))


def _ramped_ema_update(decay: float, warmup_steps: float) -> Callable[..., None]:
    @torch.no_grad()
    def update(
        averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor], n_averaged: torch.Tensor
    ) -> None:
        weight = 1.0 - ramped_decay(decay, warmup_steps, int(n_averaged))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(list(averaged), list(current), weight)
        else:  # integer buffers (BatchNorm's batch counter) follow the model
            for average, value in zip(averaged, current, strict=True):
                average.copy_(value)

    return update


class WeightEMA(nn.Module):
    """Moving average of ``model``'s parameters and buffers; :attr:`module` is the averaged copy.

    Args:
        model: the trained model; it is copied once, and :meth:`update` folds its current weights in.
        decay: the decay the ramp approaches, in [0, 1).
        warmup_steps: the ramp's time constant in updates (> 0).
    """

    def __init__(self, model: nn.Module, decay: float, warmup_steps: float) -> None:
        super().__init__()
        validate_ema(decay, warmup_steps)
        self.averaged = AveragedModel(
            model, multi_avg_fn=_ramped_ema_update(decay, warmup_steps), use_buffers=True
        )
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (call after each optimiser step)."""
        self.averaged.update_parameters(model)


def ema_errors(decay: float, warmup_steps: float) -> dict[str, str]:
    """Field name -> what is wrong with it, for the EMA settings out of range (empty when both are valid)."""
    errors = {}
    if not (is_number(decay) and 0.0 <= decay < 1.0):
        errors["ema_decay"] = "must be in [0, 1) (0: no average)"
    if not (is_number(warmup_steps) and warmup_steps > 0):
        errors["ema_warmup_steps"] = "must be a number > 0"
    return errors


def validate_ema(decay: float, warmup_steps: float) -> None:
    """Raise ``ValueError`` naming the field when the EMA settings are out of range."""
    values = {"ema_decay": decay, "ema_warmup_steps": warmup_steps}
    for name, why in ema_errors(decay, warmup_steps).items():
        raise ValueError(f"{name}: {why}, got {values[name]}")
