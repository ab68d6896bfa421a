"""Backbones: plain nn.Modules with one surface (see ``LayerwiseBackbone``).

Each family lives in its own module so that using a ViT never imports transformers.
"""

from aligned.backbones.base import LayerwiseBackbone

__all__ = ["LayerwiseBackbone"]
