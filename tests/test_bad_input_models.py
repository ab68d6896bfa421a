"""Backbone settings out of range are rejected when the model is built, not in the first
training step: timm's dropout and drop-path probabilities."""

from __future__ import annotations

import pytest
from conftest import TINY, compose_train
from tiny_models import TINY_VIT

from aligned.config import ConfigError
from aligned.models.backbones.timm_vit import DROP_RATES, TimmViT
from aligned.training.fit import train


@pytest.mark.parametrize("value", [2, 1.0, -0.1, "0.1", None])
@pytest.mark.parametrize("key", DROP_RATES)
def test_vit_drop_rates_outside_zero_to_one_are_rejected_when_built(key, value):
    with pytest.raises(ConfigError, match=rf"model.{key} must be a number in \[0, 1\), got "):
        TimmViT("vit_tiny_patch16_224", num_classes=5, **TINY_VIT, **{key: value})


def test_vit_drop_rates_in_range_reach_timm():
    rates = dict.fromkeys(DROP_RATES, 0.25)
    model = TimmViT("vit_tiny_patch16_224", num_classes=5, **TINY_VIT, **rates).model
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.25)  # timm's linear decay
    assert model.blocks[0].attn.attn_drop.p == 0.25 and model.head_drop.p == 0.25


def test_train_with_a_drop_path_rate_of_two_stops_before_training(tmp_path):
    cfg = compose_train([*TINY, "+model.drop_path_rate=2"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"model.drop_path_rate must be a number in \[0, 1\), "
                                          "got 2"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # no step was taken
