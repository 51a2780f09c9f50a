"""The moving average of the weights: its ramped decay, what it averages, and its validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unihema.train.ema import WeightEMA, ramped_decay, validate_ema


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_the_decay_ramps_from_zero_towards_its_target() -> None:
    decays = [ramped_decay(0.99, 10.0, n) for n in (1, 10, 100, 1000)]
    assert decays == sorted(decays)
    assert decays[0] == pytest.approx(0.99 * (1 - math.exp(-0.1)))
    assert decays[1] == pytest.approx(0.99 * (1 - math.exp(-1.0)))
    assert decays[-1] == pytest.approx(0.99, abs=1e-12)


def test_the_first_update_copies_then_each_update_moves_by_one_minus_the_decay() -> None:
    model = _net()
    ema = WeightEMA(model, decay=0.9, warmup_steps=2.0)
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    ema.update(model)  # the first update takes the weights as they are
    assert torch.equal(ema.module[0].weight, model[0].weight)
    assert ema.module[0].weight.data_ptr() != model[0].weight.data_ptr()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema.update(model)
    # Second update: n_averaged is 1, so the ramp's decay is 0.9 * (1 - e^-0.5).
    expected = 1.0 - ramped_decay(0.9, 2.0, 1)
    assert torch.allclose(ema.module[0].weight, torch.full_like(model[0].weight, expected))
    assert ema.updates == 2
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_batchnorm_statistics_are_averaged_and_its_counter_follows_the_model() -> None:
    model = _net()
    ema = WeightEMA(model, decay=0.5, warmup_steps=1e-9)  # the ramp is over at once: decay 0.5
    ema.update(model)
    model.train()
    model(torch.randn(8, 3) + 5.0)  # moves the running mean and counts one batch
    ema.update(model)
    bn, averaged = model[1], ema.module[1]
    assert torch.allclose(averaged.running_mean, 0.5 * bn.running_mean)
    assert int(averaged.num_batches_tracked) == int(bn.num_batches_tracked) == 1


@pytest.mark.parametrize(
    ("decay", "warmup", "field"),
    [(1.0, 10.0, "ema_decay"), (-0.1, 10.0, "ema_decay"), (0.9, 0.0, "ema_warmup_steps")],
)
def test_out_of_range_settings_name_their_field(decay: float, warmup: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        validate_ema(decay, warmup)
