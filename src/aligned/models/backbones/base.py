"""The surface every backbone offers: per-layer features and the model's own classifier."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class BlockState:
    """A batch between two blocks: the tokens, plus what the blocks need per sample (e.g. the
    attention mask). Every tensor has one row per sample, so ``select`` keeps a subset of the
    batch (early exit drops the samples that have exited)."""

    tokens: torch.Tensor  # (B, T, D)
    extras: dict[str, torch.Tensor | None] = field(default_factory=dict)  # (B, ...) each

    def select(self, rows: torch.Tensor) -> BlockState:
        extras = {k: None if v is None else v[rows] for k, v in self.extras.items()}
        return BlockState(self.tokens[rows], extras)


class LayerwiseBackbone(nn.Module):
    """A transformer whose last-layer classifier can read every block's output.

    Layers are numbered 1..L (blocks); ``layer_features`` returns them in that order.
    A feature is what the model's classifier reads at that depth: the block output after the
    model's own final norm / pooling / pooler. ``head`` is the model's last-layer classifier,
    applied unchanged to every layer (the shared head).
    """

    num_layers: int
    feature_dim: int
    num_classes: int

    def layer_features(self, inputs: Any) -> torch.Tensor:
        """Features of every block, shape (L, B, D)."""
        state = self.begin(inputs)
        features = []
        for layer in range(1, self.num_layers + 1):
            state = self.run_block(layer, state)
            features.append(self.read(state))  # (B, D)
        return torch.stack(features)  # (L, B, D)

    def begin(self, inputs: Any) -> BlockState:
        """The embedded inputs, what block 1 reads."""
        raise NotImplementedError

    def run_block(self, layer: int, state: BlockState) -> BlockState:
        """Block ``layer`` (1..L) applied to ``state``."""
        raise NotImplementedError

    def read(self, state: BlockState) -> torch.Tensor:
        """The feature the head reads after a block, (B, D)."""
        raise NotImplementedError

    def merge_states(self, states: list[BlockState]) -> BlockState:
        """One batch of the samples of several states (pooled early exit). Same-shaped rows are
        concatenated; a backbone whose rows can differ in length (text) overrides this."""
        extras = {key: None if states[0].extras[key] is None
                  else torch.cat([state.extras[key] for state in states])
                  for key in states[0].extras}
        return BlockState(torch.cat([state.tokens for state in states]), extras)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The shared classifier: (..., D) -> (..., C)."""
        raise NotImplementedError

    def head_parameters(self) -> int:
        """Number of parameters in the classifier that the head applies (C·D + C for a linear)."""
        raise NotImplementedError

    def forward(self, inputs: Any) -> torch.Tensor:
        """Per-layer logits of the shared head, shape (L, B, C)."""
        return self.head(self.layer_features(inputs))
