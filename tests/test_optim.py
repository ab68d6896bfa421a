"""AdamW warm-up + decay schedule (aligned.training.optim)."""

from __future__ import annotations

import math

import pytest
from torch import nn

from aligned.config import ConfigError
from aligned.training.optim import adamw_with_warmup_cosine


def learning_rates(total_steps: int, **kwargs) -> list[float]:
    config = adamw_with_warmup_cosine(nn.Linear(2, 2), total_steps, lr=1.0, **kwargs)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_warmup_rises_linearly_to_the_peak(decay: str):
    rates = learning_rates(100, warmup_fraction=0.1, decay=decay)
    assert rates[:10] == pytest.approx([(step + 1) / 10 for step in range(10)])
    assert rates[10] == pytest.approx(1.0)


def test_linear_decay_falls_in_equal_steps_to_zero():
    rates = learning_rates(100, warmup_fraction=0.2, decay="linear")
    assert rates[20:] == pytest.approx([1 - step / 80 for step in range(80)])


def test_cosine_decay_follows_half_a_cosine():
    rates = learning_rates(100, warmup_fraction=0.2, decay="cosine")
    expected = [0.5 * (1 + math.cos(math.pi * step / 80)) for step in range(80)]
    assert rates[20:] == pytest.approx(expected)
    assert rates[60] == pytest.approx(0.5)  # halfway: cosine and linear meet


def test_biases_get_no_weight_decay():
    config = adamw_with_warmup_cosine(nn.Linear(2, 2), 10, weight_decay=0.1)
    decayed, plain = config["optimizer"].param_groups
    assert [p.ndim for p in decayed["params"]] == [2] and decayed["weight_decay"] == 0.1
    assert [p.ndim for p in plain["params"]] == [1] and plain["weight_decay"] == 0.0


def test_unknown_decay_is_a_clear_error():
    with pytest.raises(ConfigError, match="optim.decay='step' is not one of cosine, linear"):
        adamw_with_warmup_cosine(nn.Linear(2, 2), 10, decay="step")

