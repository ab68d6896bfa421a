"""The surface every backbone offers: per-layer features and the model's own classifier."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


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
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The shared classifier: (..., D) -> (..., C)."""
        raise NotImplementedError

    def head_parameters(self) -> int:
        """Number of parameters in the classifier that the head applies (C·D + C for a linear)."""
        raise NotImplementedError

    def forward(self, inputs: Any) -> torch.Tensor:
        """Per-layer logits of the shared head, shape (L, B, C)."""
        return self.head(self.layer_features(inputs))
