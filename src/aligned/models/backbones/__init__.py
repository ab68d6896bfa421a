"""Backbones: plain nn.Modules with one surface (see ``LayerwiseBackbone``).

Each family lives in its own module and loads on first use, so that using a ViT never imports
transformers: ``from aligned.models.backbones import TimmViT`` imports timm only.
"""

from __future__ import annotations

import importlib
from typing import Any

from aligned.models.backbones.base import BlockState, LayerwiseBackbone

# class -> its module
FAMILIES = {"TimmViT": "timm_vit", "HFEncoder": "hf_encoder", "HFDecoder": "hf_decoder"}

__all__ = ["BlockState", "LayerwiseBackbone", *FAMILIES]


def __getattr__(name: str) -> Any:
    if name in FAMILIES:
        return getattr(importlib.import_module(f"{__name__}.{FAMILIES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
