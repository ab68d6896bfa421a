"""Objectives: weights, equivalences, gradient flow, and the multi-exit baseline's heads."""

from __future__ import annotations

import pytest
import torch

from aligned.config import ConfigError
from aligned.models.backbones.timm_vit import TimmViT
from aligned.models.objectives import (
    AlignedObjective,
    MultiExitObjective,
    StandardObjective,
    layer_weights,
)


def test_linear_weights_follow_the_paper_and_sum_to_one():
    weights = layer_weights("linear", 4)
    torch.testing.assert_close(weights, torch.tensor([1.0, 2.0, 3.0, 4.0]) * 2 / (4 * 5))
    assert weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("weighting", ["linear", "uniform", "last", [1, 0, 3]])
def test_weights_sum_to_one(weighting):
    assert layer_weights(weighting, 3).sum().item() == pytest.approx(1.0)


def test_explicit_weights_are_normalised():
    torch.testing.assert_close(layer_weights([1, 1, 2], 3), torch.tensor([0.25, 0.25, 0.5]))


@pytest.mark.parametrize(
    "weighting, message",
    [([1, 2], "has 2 weights but the model has 3"), ([1, -1, 1], "non-negative"),
     ([0, 0, 0], "all zeros"), ("quadratic", "Unknown loss weighting")],
)
def test_bad_weights_are_rejected(weighting, message):
    with pytest.raises(ConfigError, match=message):
        layer_weights(weighting, 3)


def test_with_one_layer_aligned_equals_standard():
    logits, target = torch.randn(1, 8, 5), torch.randint(0, 5, (8,))
    aligned = AlignedObjective(1, 4, 5)(logits, target)
    standard = StandardObjective(1, 4, 5)(logits, target)
    torch.testing.assert_close(aligned, standard)
    torch.testing.assert_close(standard, torch.nn.functional.cross_entropy(logits[0], target))


def test_aligned_loss_is_the_weighted_sum_of_layer_cross_entropies():
    logits, target = torch.randn(3, 8, 5), torch.randint(0, 5, (8,))
    expected = sum(
        (2 * (i + 1) / 12) * torch.nn.functional.cross_entropy(logits[i], target) for i in range(3)
    )
    torch.testing.assert_close(AlignedObjective(3, 4, 5)(logits, target), expected)


def test_alternating_trains_last_layer_on_even_steps():
    logits, target = torch.randn(3, 8, 5), torch.randint(0, 5, (8,))
    objective = AlignedObjective(3, 4, 5, alternating=True)
    standard = StandardObjective(3, 4, 5)(logits, target)
    torch.testing.assert_close(objective(logits, target, step=0), standard)
    aligned = AlignedObjective(3, 4, 5)(logits, target)
    torch.testing.assert_close(objective(logits, target, step=1), aligned)


OBJECTIVES = [StandardObjective, AlignedObjective, MultiExitObjective]


def tiny_vit():
    torch.manual_seed(0)
    return TimmViT("vit_tiny_patch16_224", num_classes=5, img_size=8, in_chans=1, patch_size=4,
                   embed_dim=16, depth=3, num_heads=2)


@pytest.mark.parametrize("objective_class", OBJECTIVES)
def test_gradients_reach_every_block(objective_class):
    backbone = tiny_vit()
    objective = objective_class(3, backbone.feature_dim, 5)
    images, target = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    loss = objective(objective.layer_logits(backbone.layer_features(images), backbone.head), target)
    loss.backward()
    for index, block in enumerate(backbone.model.blocks):
        grads = [p.grad for p in block.parameters()]
        assert all(g is not None for g in grads), f"block {index + 1} got no gradient"
        assert sum(g.abs().sum() for g in grads) > 0, f"block {index + 1} gradient is zero"


def test_aligned_trains_the_shared_head_from_every_layer():
    """The head's gradient under aligned differs from standard: early layers contribute."""
    backbone = tiny_vit()
    images, target = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    grads = []
    for objective in (StandardObjective(3, 16, 5), AlignedObjective(3, 16, 5)):
        backbone.zero_grad()
        objective(backbone(images), target).backward()
        grads.append(backbone.model.head.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_multiexit_adds_one_linear_head_per_hidden_layer():
    backbone = tiny_vit()
    objective = MultiExitObjective(3, backbone.feature_dim, 5)
    assert objective.extra_parameters() == (3 - 1) * (5 * 16 + 5)
    assert AlignedObjective(3, 16, 5).extra_parameters() == 0
    features = backbone.layer_features(torch.randn(2, 1, 8, 8))
    logits = objective.layer_logits(features, backbone.head)
    torch.testing.assert_close(logits[-1], backbone.head(features[-1]))  # last keeps model head
    torch.testing.assert_close(logits[0], objective.exit_heads[0](features[0]))
