"""Module paths from before the one-package-per-concern layout (0.1), so that checkpoints and
configs written then still load: their ``_target_`` strings name the old modules."""

from __future__ import annotations

import importlib
from typing import Any

# old module -> the module it became; a target "<old>.<Name>" becomes "<new>.<Name>".
MOVED_MODULES = {
    "aligned.backbones.base": "aligned.models.backbones.base",
    "aligned.backbones.timm_vit": "aligned.models.backbones.timm_vit",
    "aligned.backbones.hf_encoder": "aligned.models.backbones.hf_encoder",
    "aligned.objectives": "aligned.models.objectives",
    "aligned.system": "aligned.training.system",
    "aligned.training": "aligned.training.fit",
    **{f"aligned.{name}": f"aligned.training.{name}" for name in (
        "resume", "checkpoints", "callbacks", "loggers", "optim", "metrics", "sweep_summary",
        "results")},
    "aligned.similarity": "aligned.analysis.similarity",
    "aligned.layerwise_pass": "aligned.analysis.layerwise_pass",
    "aligned.analysis": "aligned.analysis.readouts",
    "aligned.plots": "aligned.analysis.plots",
    "aligned.report": "aligned.analysis.report",
    "aligned.wandb_evaluation": "aligned.analysis.wandb_logging",
    "aligned.exit": "aligned.early_exit.inference",
    "aligned.exit_pooled": "aligned.early_exit.pooled",
    "aligned.exit_rules": "aligned.early_exit.rules",
    "aligned.exit_sweep": "aligned.early_exit.offline",
    "aligned.parameter_count": "aligned.early_exit.parameter_count",
}


def current_target(target: str) -> str:
    """``target`` under today's module paths: as it is when it resolves (the old module
    ``aligned.training`` is today's package, which exports ``train``), else its moved path."""
    module, _, name = target.rpartition(".")
    if module not in MOVED_MODULES:
        return target
    try:
        if hasattr(importlib.import_module(module), name):
            return target
    except ImportError:
        pass
    return f"{MOVED_MODULES[module]}.{name}"


def upgrade_targets(node: Any) -> Any:
    """A plain config (dicts and lists, as a checkpoint stores it) with every ``_target_``
    under today's module paths; a new object, the input is left as it was."""
    if isinstance(node, dict):
        return {key: current_target(value) if key == "_target_" and isinstance(value, str)
                else upgrade_targets(value) for key, value in node.items()}
    if isinstance(node, list):
        return [upgrade_targets(value) for value in node]
    return node
