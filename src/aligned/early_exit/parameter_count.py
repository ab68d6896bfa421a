"""Parameters saved by one shared head instead of a classifier per layer
(docs/method.md, "Objectives").

Per-layer heads add (L-1)·(C·D + C) parameters (a linear classifier at each of layers 1..L-1;
layer L keeps the model's head); one shared head adds 0. The saving is quoted relative to the
per-layer-head model, extra / (model + extra). The paper's figures (DeiT-S 16.08%, DeiT-B 8.89%
on ImageNet-1k) come out of this formula exactly when the heads are counted without their
biases, (L-1)·C·D, over the timm model's parameters with its own head; with biases they would
be 16.11% and 8.90% (checked in tests/test_exit.py).
"""

from __future__ import annotations

from typing import Any


def per_layer_head_parameters(
    num_layers: int, feature_dim: int, num_classes: int, bias: bool = True
) -> int:
    """Extra parameters of per-layer heads over one shared head: (L-1)·(C·D + C)."""
    return (num_layers - 1) * num_classes * (feature_dim + int(bias))


def shared_head_saving(
    model_parameters: int, num_layers: int, feature_dim: int, num_classes: int,
    bias: bool = True,
) -> float:
    """% of the per-layer-head model's parameters that one shared head saves."""
    extra = per_layer_head_parameters(num_layers, feature_dim, num_classes, bias)
    return 100 * extra / (model_parameters + extra)


def parameter_summary(backbone: Any) -> dict[str, Any]:
    """``evaluation.json``'s ``parameters`` for a layer-wise backbone (its own head included)."""
    model = sum(p.numel() for p in backbone.parameters())
    shape = (backbone.num_layers, backbone.feature_dim, backbone.num_classes)
    extra = per_layer_head_parameters(*shape)
    return {
        "model": model,
        "shared_head_extra": 0,
        "per_layer_heads_extra": extra,
        "saving_percent": shared_head_saving(model, *shape),
        "saving_percent_weights_only": shared_head_saving(model, *shape, bias=False),
        "note": "saving = (L-1)(C·D + C) / (model + that); weights only = the paper's convention",
    }
