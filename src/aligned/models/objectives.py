"""Training objectives over the stack of per-layer logits (docs/method.md, "Objectives").

    loss = Σ_{l=1..L} α_l · CE(head(h_l), y)      (MSE instead of CE for regression)

- ``StandardObjective``: α = (0, ..., 0, 1), cross-entropy on the last layer only.
- ``AlignedObjective``: one shared head, α_l = 2l / (L(L+1)) by default (``linear``), or
  ``uniform``, or an explicit list (normalised to sum to 1).
- ``MultiExitObjective``: the standard multi-exit baseline; a separate linear classifier per
  hidden layer (the last layer keeps the model's head), trained with the same weighting.

``forward`` takes the stacked logits (L, B, C); ``feature_loss`` gives the same loss from the
features, one layer's logits at a time (causal LMs, where C is the vocabulary).

``AlignedObjective(layers_per_step=k)`` reads k randomly drawn hidden layers per step (plus the
last), each drawn layer's weight scaled so that the expected loss is the full aligned loss: a
causal LM's head costs several blocks at every layer it reads (SmolLM2's 49,152-word head: 8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aligned.config import ConfigError

Head = Callable[[torch.Tensor], torch.Tensor]


def layer_weights(weighting: str | Sequence[float], num_layers: int) -> torch.Tensor:
    """Per-layer loss weights α_1..α_L, summing to 1."""
    if isinstance(weighting, str):
        layers = torch.arange(1, num_layers + 1, dtype=torch.float64)
        if weighting == "linear":
            weights = 2 * layers / (num_layers * (num_layers + 1))
        elif weighting == "uniform":
            weights = torch.ones(num_layers, dtype=torch.float64)
        elif weighting == "last":
            weights = (layers == num_layers).double()
        else:
            raise ConfigError(
                f"Unknown loss weighting '{weighting}'. Use linear, uniform, last, or a list of "
                f"{num_layers} non-negative numbers, e.g. loss.weighting=[1,1,2,2,3,3]."
            )
    else:
        weights = torch.tensor([float(w) for w in weighting], dtype=torch.float64)
        if len(weights) != num_layers:
            raise ConfigError(
                f"loss.weighting has {len(weights)} weights but the model has {num_layers} "
                f"layers; give exactly one weight per layer."
            )
        if (weights < 0).any() or not torch.isfinite(weights).all():
            raise ConfigError(
                f"loss.weighting must be finite and non-negative, got {list(weighting)}."
            )
        if weights.sum() == 0:
            raise ConfigError("loss.weighting is all zeros; at least one layer needs a weight.")
    return (weights / weights.sum()).float()


def layer_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of each layer's logits (K, B, C) -> (K,): cross-entropy, or MSE when C == 1
    (regression, e.g. STS-B, as Hugging Face's sequence classifiers do)."""
    layers = logits.shape[0]
    if logits.shape[-1] == 1:
        scores = logits.squeeze(-1)  # (K, B)
        target = target.to(scores.dtype).expand_as(scores)
        return F.mse_loss(scores, target, reduction="none").mean(1)
    return F.cross_entropy(
        logits.flatten(0, 1), target.repeat(layers), reduction="none"
    ).view(layers, -1).mean(1)


def sampled_weights(weights: torch.Tensor, layers_per_step: int, seed: int, step: int
                    ) -> torch.Tensor:
    """``weights`` (L,) with all but ``layers_per_step`` of the weighted hidden layers 1..L-1
    zeroed and the drawn ones scaled by (weighted hidden layers) / k, so that the expected
    weights over draws are ``weights``; the last layer keeps its weight. The draw depends only
    on (seed, step): a resumed run draws what the uninterrupted run drew."""
    hidden = weights[:-1].nonzero().squeeze(1).tolist()  # layers a draw can pick (0-based)
    if layers_per_step >= len(hidden):
        return weights
    drawn = np.random.default_rng([seed, step]).choice(len(hidden), layers_per_step, replace=False)
    kept = torch.zeros_like(weights)
    kept[-1] = weights[-1]
    for index in drawn:
        layer = hidden[index]
        kept[layer] = weights[layer] * len(hidden) / layers_per_step
    return kept


class LayerwiseObjective(nn.Module):
    """Weighted cross-entropy over layers; subclasses choose the weights and the heads.

    ``logits_memory_mib``: ``feature_loss`` keeps every read layer's logits for backward while
    they (and their softmax) fit in this many MiB, and recomputes each layer's head in backward
    beyond it (recomputing costs a forward of the head, about a quarter of its work).
    """

    def __init__(
        self, num_layers: int, feature_dim: int, num_classes: int, weighting: str | Sequence[float],
        logits_memory_mib: float = 4096,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.num_classes = num_classes
        self.register_buffer("weights", layer_weights(weighting, num_layers), persistent=False)
        if not logits_memory_mib >= 0:
            raise ConfigError(f"loss.logits_memory_mib must be >= 0 (MiB of logits kept for "
                              f"backward; 0 recomputes every layer's head), got "
                              f"{logits_memory_mib}.")
        self.logits_memory_mib = float(logits_memory_mib)

    def layer_logits(self, features: torch.Tensor, head: Head) -> torch.Tensor:
        """(L, B, D) features -> (L, B, C) logits, the shared head applied at every layer."""
        return head(features)

    def logits_at(self, layer: int, features: torch.Tensor, head: Head) -> torch.Tensor:
        """Logits of layer ``layer`` (1..L) for one layer's features (B, D) -> (B, C): what
        ``layer_logits`` gives for that layer, for early exit, where only survivors reach it."""
        return head(features)

    def extra_parameters(self) -> int:
        """Parameters this objective adds to the backbone (0 with one shared head)."""
        return sum(p.numel() for p in self.parameters())

    def weights_at(self, step: int) -> torch.Tensor:
        return self.weights

    def forward(
        self, layer_logits: torch.Tensor, target: torch.Tensor, step: int = 0
    ) -> torch.Tensor:
        weights = self.weights_at(step)
        used = weights.nonzero().squeeze(1)  # skip zero-weight layers (standard: only the last)
        logits = layer_logits[used]  # (K, B, C)
        return (weights[used] * layer_losses(logits, target)).sum()

    def feature_loss(
        self, features: torch.Tensor, head: Head, target: torch.Tensor, step: int = 0
    ) -> torch.Tensor:
        """The same loss from the features (L, N, D), one layer's logits at a time: for a
        causal LM, all layers' logits at once (L x tokens x vocabulary) may not fit. When the
        read layers' logits exceed ``logits_memory_mib``, each layer's head + loss is recomputed
        in backward (activation checkpointing), so autograd keeps the features and never more
        than one layer's logits."""
        weights = self.weights_at(step)
        used = weights.nonzero().squeeze(1).tolist()

        def loss_at(layer_features: torch.Tensor, layer: int) -> torch.Tensor:
            logits = self.logits_at(layer, layer_features, head)  # (N, C)
            return layer_losses(logits[None], target)[0]

        # Autograd keeps each layer's logits and their log-softmax: 2 x N x C values a layer.
        kept_mib = (2 * len(used) * target.numel() * self.num_classes * features.element_size()
                    / 2**20)
        recompute = len(used) > 1 and kept_mib > self.logits_memory_mib
        total = features.new_zeros(())
        for index in used:
            if recompute:
                loss = checkpoint(loss_at, features[index], index + 1, use_reentrant=False)
            else:
                loss = loss_at(features[index], index + 1)
            total = total + weights[index] * loss
        return total


class StandardObjective(LayerwiseObjective):
    """Standard training: cross-entropy on the last layer only."""

    def __init__(self, num_layers: int, feature_dim: int, num_classes: int) -> None:
        super().__init__(num_layers, feature_dim, num_classes, weighting="last")


class AlignedObjective(LayerwiseObjective):
    """Aligned training: the shared head's weighted cross-entropy at every layer.

    ``alternating=True`` is the variant from the authors' code: even steps train the last layer
    only, odd steps the full weighted sum.

    ``layers_per_step=k`` (null: every layer, the paper's loss) reads the last layer and k of the
    hidden layers, drawn anew at every optimizer step from ``seed`` and the step, each weighted
    α_l · (L-1)/k so that the loss's expectation over draws is the full aligned loss.
    """

    def __init__(
        self,
        num_layers: int,
        feature_dim: int,
        num_classes: int,
        weighting: str | Sequence[float] = "linear",
        alternating: bool = False,
        layers_per_step: int | None = None,
        seed: int = 0,
        logits_memory_mib: float = 4096,
    ) -> None:
        super().__init__(num_layers, feature_dim, num_classes, weighting, logits_memory_mib)
        self.alternating = alternating
        self.register_buffer("last_only", layer_weights("last", num_layers), persistent=False)
        if layers_per_step is not None and (
                isinstance(layers_per_step, bool) or not isinstance(layers_per_step, int)
                or not 1 <= layers_per_step <= max(num_layers - 1, 1)):
            raise ConfigError(
                f"loss.layers_per_step must be a whole number of hidden layers from 1 to "
                f"{max(num_layers - 1, 1)} (the model has {num_layers} layers; the last is always "
                f"read), or null for every layer; got {layers_per_step!r}."
            )
        self.layers_per_step = layers_per_step
        self.seed = int(seed)

    def weights_at(self, step: int) -> torch.Tensor:
        if self.alternating and step % 2 == 0:
            return self.last_only
        if self.layers_per_step is None:
            return self.weights
        return sampled_weights(self.weights, self.layers_per_step, self.seed, step)


class MultiExitObjective(LayerwiseObjective):
    """Standard multi-exit baseline: one linear classifier per hidden layer 1..L-1.

    Adds (L-1)·(C·D + C) parameters, (L-1)·C·D with ``bias=false`` (the authors' GPT-2
    baseline: ``Linear(d, vocab, bias=False)`` per layer); the last layer keeps the model's head.
    """

    def __init__(
        self,
        num_layers: int,
        feature_dim: int,
        num_classes: int,
        weighting: str | Sequence[float] = "linear",
        bias: bool = True,
        logits_memory_mib: float = 4096,
    ) -> None:
        super().__init__(num_layers, feature_dim, num_classes, weighting, logits_memory_mib)
        self.exit_heads = nn.ModuleList(
            nn.Linear(feature_dim, num_classes, bias=bias) for _ in range(num_layers - 1)
        )

    def layer_logits(self, features: torch.Tensor, head: Head) -> torch.Tensor:
        hidden = [exit_head(f) for exit_head, f in zip(self.exit_heads, features[:-1], strict=True)]
        return torch.stack([*hidden, head(features[-1])])  # (L, B, C)

    def logits_at(self, layer: int, features: torch.Tensor, head: Head) -> torch.Tensor:
        if layer == self.num_layers:
            return head(features)
        return self.exit_heads[layer - 1](features)
