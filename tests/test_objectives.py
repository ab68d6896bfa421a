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


# ---------------------------------------------------------------- layers_per_step


def test_sampled_layers_keep_the_last_and_k_hidden_layers_scaled_to_the_full_weights():
    objective = AlignedObjective(6, 4, 5, layers_per_step=2, seed=3)
    full = layer_weights("linear", 6)
    for step in range(50):
        weights = objective.weights_at(step)
        drawn = weights[:-1].nonzero().squeeze(1)
        assert len(drawn) == 2 and weights[-1] == full[-1]
        torch.testing.assert_close(weights[drawn], full[drawn] * 5 / 2)
    # The draw is a function of (seed, step): the same again, another seed draws otherwise.
    again = AlignedObjective(6, 4, 5, layers_per_step=2, seed=3)
    other = AlignedObjective(6, 4, 5, layers_per_step=2, seed=4)
    draws = [objective.weights_at(step) for step in range(20)]
    assert all(torch.equal(w, again.weights_at(s)) for s, w in enumerate(draws))
    assert not all(torch.equal(w, other.weights_at(s)) for s, w in enumerate(draws))


def test_the_sampled_loss_is_the_full_aligned_loss_in_expectation():
    torch.manual_seed(0)
    logits, target = torch.randn(5, 16, 7), torch.randint(0, 7, (16,))
    exact = AlignedObjective(5, 4, 7)(logits, target)
    sampled = AlignedObjective(5, 4, 7, layers_per_step=1, seed=0)
    draws = torch.stack([sampled(logits, target, step=step) for step in range(4000)])
    assert draws.std() > 0.05  # the draws do differ
    # The mean of 4,000 draws is within 4 standard errors of the exact sum.
    assert abs(draws.mean() - exact) < 4 * draws.std() / 4000**0.5
    # Every hidden layer is drawn about equally often (1 of 4 per step).
    counts = sum((sampled.weights_at(step)[:-1] > 0).long() for step in range(4000))
    assert counts.sum() == 4000 and counts.min() > 850


def test_the_sampled_loss_from_features_matches_the_logits_path_and_alternates():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 9)
    features, target = torch.randn(4, 12, 4), torch.randint(0, 9, (12,))
    objective = AlignedObjective(4, 4, 9, layers_per_step=2, seed=1, alternating=True)
    for step in range(6):
        torch.testing.assert_close(objective.feature_loss(features, head, target, step=step),
                                   objective(head(features), target, step=step))
    # alternating: even steps the last layer only, odd steps the sampled hidden layers too
    assert torch.equal(objective.weights_at(4), objective.last_only)
    assert (objective.weights_at(5)[:-1] > 0).sum() == 2


def test_layers_per_step_of_every_hidden_layer_is_the_full_loss():
    full = AlignedObjective(4, 4, 5)
    every = AlignedObjective(4, 4, 5, layers_per_step=3, seed=7)
    assert all(torch.equal(every.weights_at(step), full.weights) for step in range(5))


@pytest.mark.parametrize("k", [0, 6, -1, 1.5, True, "2"])
def test_a_bad_layers_per_step_names_the_range(k):
    with pytest.raises(ConfigError, match="loss.layers_per_step must be a whole number of "
                                          "hidden layers from 1 to 5"):
        AlignedObjective(6, 4, 5, layers_per_step=k)


def test_logits_are_recomputed_in_backward_only_beyond_the_memory_budget(monkeypatch):
    import aligned.models.objectives as objectives

    calls = []
    real = objectives.checkpoint
    monkeypatch.setattr(objectives, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50)
    features, target = torch.randn(3, 20, 8, requires_grad=True), torch.randint(0, 50, (20,))
    gradients = []
    for budget in (1e6, 0):  # logits kept (3 layers x 20 tokens x 50 fit), then recomputed
        objective = AlignedObjective(3, 8, 50, logits_memory_mib=budget)
        features.grad = None
        objective.feature_loss(features, head, target).backward()
        gradients.append(features.grad.clone())
        assert len(calls) == (0 if budget else 3)
    torch.testing.assert_close(gradients[0], gradients[1])
    with pytest.raises(ConfigError, match="loss.logits_memory_mib must be >= 0"):
        AlignedObjective(3, 8, 50, logits_memory_mib=-1)
