"""What the shared head says at one layer, per sample (an input, or an LM's token): its top-1
class, that class's softmax probability (confidence) and the softmax entropy.

The layer-wise passes, the exit rules at inference and their offline simulation all compute them
here, so a simulated exit decides on the very numbers a real one does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class HeadStatistics(NamedTuple):
    top1: torch.Tensor  # (...,) the predicted class
    confidence: torch.Tensor  # (...,) its softmax probability
    entropy: torch.Tensor  # (...,) softmax entropy, nats

    def cpu(self) -> HeadStatistics:
        return HeadStatistics(*(values.cpu() for values in self))

    @staticmethod
    def cat(parts: list[HeadStatistics]) -> HeadStatistics:
        """Chunks of the same layer's samples, (n_i,) each, as one (sum n_i,)."""
        return HeadStatistics(*(torch.cat(values) for values in zip(*parts, strict=True)))

    @staticmethod
    def stack(layers: list[HeadStatistics]) -> HeadStatistics:
        """Every layer's (N,) as (N, L)."""
        return HeadStatistics(*(torch.stack(values, 1) for values in zip(*layers, strict=True)))


def head_statistics(logits: torch.Tensor) -> HeadStatistics:
    """(..., C) logits -> (...) each; softmax in at least float32 (bf16 logits under autocast are
    widened, float64 models stay exact); entropy = Σ -p·log p, with 0·log 0 = 0."""
    p = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)
    confidence, top1 = p.max(-1)
    return HeadStatistics(top1, confidence, torch.special.entr(p).sum(-1))
