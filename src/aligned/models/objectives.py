"""Training objectives over the stack of per-layer logits (METHOD.md §3).

    loss = Σ_{l=1..L} α_l · CE(head(h_l), y)      (MSE instead of CE for regression)

- ``StandardObjective``: α = (0, ..., 0, 1), cross-entropy on the last layer only.
- ``AlignedObjective``: one shared head, α_l = 2l / (L(L+1)) by default (``linear``), or
  ``uniform``, or an explicit list (normalised to sum to 1).
- ``MultiExitObjective``: the standard multi-exit baseline; a separate linear classifier per
  hidden layer (the last layer keeps the model's head), trained with the same weighting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

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


class LayerwiseObjective(nn.Module):
    """Weighted cross-entropy over layers; subclasses choose the weights and the heads."""

    def __init__(
        self, num_layers: int, feature_dim: int, num_classes: int, weighting: str | Sequence[float]
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.register_buffer("weights", layer_weights(weighting, num_layers), persistent=False)

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


class StandardObjective(LayerwiseObjective):
    """Standard training: cross-entropy on the last layer only."""

    def __init__(self, num_layers: int, feature_dim: int, num_classes: int) -> None:
        super().__init__(num_layers, feature_dim, num_classes, weighting="last")


class AlignedObjective(LayerwiseObjective):
    """Aligned training: the shared head's weighted cross-entropy at every layer.

    ``alternating=True`` is the variant from the authors' code: even steps train the last layer
    only, odd steps the full weighted sum.
    """

    def __init__(
        self,
        num_layers: int,
        feature_dim: int,
        num_classes: int,
        weighting: str | Sequence[float] = "linear",
        alternating: bool = False,
    ) -> None:
        super().__init__(num_layers, feature_dim, num_classes, weighting)
        self.alternating = alternating
        self.register_buffer("last_only", layer_weights("last", num_layers), persistent=False)

    def weights_at(self, step: int) -> torch.Tensor:
        if self.alternating and step % 2 == 0:
            return self.last_only
        return self.weights


class MultiExitObjective(LayerwiseObjective):
    """Standard multi-exit baseline: one linear classifier per hidden layer 1..L-1.

    Adds (L-1)·(C·D + C) parameters; the last layer keeps the model's own head.
    """

    def __init__(
        self,
        num_layers: int,
        feature_dim: int,
        num_classes: int,
        weighting: str | Sequence[float] = "linear",
    ) -> None:
        super().__init__(num_layers, feature_dim, num_classes, weighting)
        self.exit_heads = nn.ModuleList(
            nn.Linear(feature_dim, num_classes) for _ in range(num_layers - 1)
        )

    def layer_logits(self, features: torch.Tensor, head: Head) -> torch.Tensor:
        hidden = [exit_head(f) for exit_head, f in zip(self.exit_heads, features[:-1], strict=True)]
        return torch.stack([*hidden, head(features[-1])])  # (L, B, C)

    def logits_at(self, layer: int, features: torch.Tensor, head: Head) -> torch.Tensor:
        if layer == self.num_layers:
            return head(features)
        return self.exit_heads[layer - 1](features)
