"""One layer of early-exit inference, shared by per-batch (``inference``) and pooled
(``pooled``) inference: run the block, and give the rule what it reads after it."""

from __future__ import annotations

import torch

from aligned.analysis.cos import cosine_to_previous
from aligned.early_exit.rules import ExitRule, LayerSignals
from aligned.models.backbones.base import BlockState
from aligned.training.system import LayerwiseClassifier


def run_layer(
    system: LayerwiseClassifier, rule: ExitRule, layer: int, state: BlockState,
    previous: torch.Tensor | None,
) -> tuple[BlockState, LayerSignals, torch.Tensor | None]:
    """Block ``layer`` on ``state`` and what ``rule`` sees after it: the layer's logits
    (computed on first use), and for rules that read it the cosine to ``previous`` (NaN without
    one). Returns the new state, the signals, and what the next layer's cosine compares with:
    this layer's features (B, D) in float64, or None when the rule reads no cosine."""
    backbone = system.backbone
    state = backbone.run_block(layer, state)
    features = backbone.read(state)  # (B, D)

    def logits() -> torch.Tensor:  # (B, C), computed when the rule or an exit needs them
        return system.objective.logits_at(layer, features, backbone.head)

    if not rule.reads_cosine:
        return state, LayerSignals(logits), None
    current = features.to(torch.float64)  # the cosine's precision, converted once per layer
    return state, LayerSignals(logits, cosine_to_previous(previous, current)), current
