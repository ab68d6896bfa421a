"""Next-token prediction as per-token classification: a causal LM batch becomes N (feature,
target) pairs, one per token that has a next token, so that objectives, metrics and analysis
treat tokens as they treat samples.

Labels follow Hugging Face's convention: ``labels`` is ``input_ids`` with -100 where nothing is
to be predicted (padding); the feature at position t predicts the label at t + 1.
"""

from __future__ import annotations

import torch

IGNORE = -100  # the label of a position without a target (padding), as in Hugging Face


def prediction_mask(labels: torch.Tensor, attention_mask: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """(B, T) labels -> (B, T - 1) bool: position t predicts a real token at t + 1, from a real
    token (with left padding, the first real token has a pad before it: not a prediction)."""
    valid = labels[:, 1:] != IGNORE
    if attention_mask is not None:
        valid &= attention_mask[:, :-1].bool()
    return valid


def next_token_pairs(features: torch.Tensor, labels: torch.Tensor,
                     attention_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer token features (L, B, T, D) and labels (B, T) -> features of the predicting
    positions (L, N, D) and their next tokens (N,), N = the tokens with a target. Selecting
    them before the head means padding costs no LM-head work."""
    valid = prediction_mask(labels, attention_mask)  # (B, T-1)
    return features[:, :, :-1][:, valid], labels[:, 1:][valid]
