"""What early-exit inference refuses before it runs: a rule whose threshold is NaN, and inputs
that are NaN or inf. Either would otherwise run with no error: no signal compares true with NaN,
so every sample runs to the last layer and leaves with class 0, the argmax of NaN logits (the
layer-wise evaluation refuses such features; ``aligned.analysis.feature_stacks``).

A rule built by name goes through ``make_rule``, which checks the threshold's range; one built
directly keeps the thresholds its rule gives a meaning to beyond that range (``BudgetRule(0.5)``:
every sample leaves at layer 1), NaN aside.
"""

from __future__ import annotations

import math
import numbers

import torch

from aligned.config import ConfigError
from aligned.early_exit.rules import ExitRule
from aligned.models.backbones.base import BlockState


def checked_rule(rule: ExitRule) -> ExitRule:
    """``rule``, once its threshold (when it has one) is known not to be NaN."""
    threshold = getattr(rule, "threshold", None)
    if isinstance(threshold, numbers.Real) and math.isnan(threshold):
        low, high = getattr(rule, "bounds", (-math.inf, math.inf))
        raise ConfigError(f"The {getattr(rule, 'name', type(rule).__name__)} rule's threshold is "
                          f"NaN, which no signal passes; give a number in [{low:g}, {high:g}].")
    return rule


def check_finite(state: BlockState) -> None:
    """A ConfigError naming the samples of a batch whose embedded inputs (what block 1 reads:
    the images' patches, the text's token embeddings) hold NaN or inf."""
    tokens = state.tokens  # (B, T, D)
    # One reduction screens the batch (NaN and inf carry into the sum); the exact test runs
    # only when it fires, since a sum of large finite values may overflow too.
    if not tokens.is_floating_point() or bool(tokens.sum(dtype=torch.float32).isfinite()):
        return
    bad = (~torch.isfinite(tokens).flatten(1).all(1)).nonzero().flatten().tolist()
    if not bad:
        return
    shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise ConfigError(
        f"Early exit got inputs that are NaN or inf (after the model's embedding) in sample(s) "
        f"{shown} of a batch of {len(tokens)} (0-based): check the inputs (NaN pixels? a failed "
        "preprocessing step?) and that the checkpoint's weights are finite."
    )
