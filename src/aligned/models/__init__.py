"""Models: backbones (plain nn.Modules with one layer-wise surface: every block's feature and
the shared head) and the training objectives over their stack of per-layer logits
(docs/method.md, "Objectives").

    from aligned.models import TimmViT, AlignedObjective
"""

from __future__ import annotations

from typing import Any

from aligned.models import backbones
from aligned.models.backbones import BlockState, LayerwiseBackbone
from aligned.models.objectives import (
    AlignedObjective,
    LayerwiseObjective,
    MultiExitObjective,
    StandardObjective,
)

__all__ = [
    "AlignedObjective", "BlockState", "LayerwiseBackbone", "LayerwiseObjective",
    "MultiExitObjective", "StandardObjective", *backbones.FAMILIES,
]


def __getattr__(name: str) -> Any:  # the backbone families, loaded on first use
    if name in backbones.FAMILIES:
        return getattr(backbones, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
