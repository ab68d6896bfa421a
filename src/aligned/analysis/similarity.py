"""Layer-by-layer similarity of per-layer features: COS and the token reduction, re-exported
(docs/method.md, "Similarity measures"); CKA is ``aligned.analysis.cka``.

Every function takes ``features`` of shape (L, N, D): L layers, N samples, D width, and returns
an (L, L) float64 matrix over all layer pairs at once. Given a second stack ``other`` (L_B, N,
D_B) of another model on the same N inputs, it returns the (L, L_B) matrix of every layer of A
against every layer of B instead; widths and depths may differ, except for COS, which compares
each sample's two vectors and so needs D = D_B. Options are keyword-only. Layers are numbered
1..L in messages. No function modifies its inputs.

- ``cos_similarity`` / ``CosAccumulator`` / ``layer_means`` (``aligned.analysis.cos``): COS.
- ``reduce_tokens`` (``aligned.analysis.tokens``): one vector per sample from token features.
"""

from __future__ import annotations

from aligned.analysis.cos import (
    Centering,
    CosAccumulator,
    cos_similarity,
    layer_means,
    sample_cosine,
)
from aligned.analysis.tokens import TokenMode, reduce_tokens

__all__ = [
    "Centering", "CosAccumulator", "TokenMode", "cos_similarity", "layer_means", "reduce_tokens",
    "sample_cosine",
]
