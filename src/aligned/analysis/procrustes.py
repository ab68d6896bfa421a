"""Orthogonal Procrustes distance of all layer pairs (Williams et al. 2021, netrep's
``LinearMetric(alpha=1)``): how far one layer is from the other after the best rotation.

For centred X (N × D_A) and Y (N × D_B), the rotation Q minimising |X Q - Y|_F aligns them
(with D_A ≠ D_B the narrower one is zero-padded, as netrep does, which changes nothing below);
the residual depends only on the nuclear norm |X'Y|_* (the sum of X'Y's singular values):

- ``"angular"`` (netrep's default): arccos(|X'Y|_* / (|X|_F |Y|_F)), in [0, π/2]; a metric on
  shapes, invariant to rotations and to scaling either layer;
- ``"euclidean"``: |X Q - Y|_F = sqrt(|X|_F² + |Y|_F² - 2 |X'Y|_*), in the features' units,
  growing with sqrt(N) (netrep's score; no normalisation by N).

Both are distances: 0 on the diagonal and for layers equal up to a rotation. arccos near 1
resolves differences only down to ~sqrt(eps) ≈ 1e-8 rad, so the within-stack diagonal is set to
exactly 0 rather than computed. Computed from covariance blocks (``aligned.analysis.covariance``):
the same cost as CCA's without the whitening; ``procrustes_from_covariances`` runs on a
``CovarianceAccumulator`` filled batch by batch.
"""

from __future__ import annotations

from typing import Literal

import torch

from aligned.analysis.covariance import Covariances, FeatureCovariance
from aligned.analysis.feature_stacks import check_result
from aligned.config import ConfigError

ProcrustesKind = Literal["angular", "euclidean"]


def procrustes_from_covariances(
    covariances: Covariances, kind: ProcrustesKind = "angular"
) -> torch.Tensor:
    """Procrustes distance of every layer pair from covariance blocks: (L_A, L_B) float64."""
    if kind not in ("angular", "euclidean"):
        raise ConfigError(f"procrustes kind='{kind}'; use 'angular' (netrep's default, in "
                          f"radians) or 'euclidean' (in the features' units).")
    what = f"procrustes ({kind})"
    covariances.check(what)
    # Σ = X'X / (N - 1) of features scaled by a power of two per layer (covariance.py); the
    # angular distance ignores both factors, the euclidean one puts them back at the end.
    sums = covariances.num_samples - 1

    def squared_norms(stack: int) -> torch.Tensor:  # |X|_F² of each (scaled) layer, (L,)
        return torch.stack([covariances.covariance(stack, layer).trace()
                            for layer in range(covariances.layers[stack])])

    def inverse_scales(stack: int) -> torch.Tensor:
        return torch.tensor([1 / covariances.scale(stack, layer)
                             for layer in range(covariances.layers[stack])],
                            dtype=torch.float64, device=covariances.device)

    norms_a, unscale_a = squared_norms(0), inverse_scales(0)
    norms_b, unscale_b = ((norms_a, unscale_a) if covariances.within
                          else (squared_norms(1), inverse_scales(1)))
    out = torch.zeros(covariances.layers, dtype=torch.float64, device=covariances.device)
    for a in range(covariances.layers[0]):
        start = a + 1 if covariances.within else 0
        if start >= covariances.layers[1]:
            continue
        blocks = covariances.cross_row(a, start)  # (L_B - start, D_A, D_B)
        nuclear = torch.linalg.svdvals(blocks).sum(-1)  # |X'Y|_* per b, scaled
        if kind == "angular":
            cosine = nuclear / torch.sqrt(norms_a[a] * norms_b[start:])
            values = torch.arccos(cosine.clamp(-1.0, 1.0))
        else:  # sqrt(u²|X|² + v²|Y|² - 2uv|X'Y|_*), u, v the inverse scales, factored by max
            u, v = unscale_a[a], unscale_b[start:]
            top = torch.maximum(u, v)
            u, v = u / top, v / top
            squared = u**2 * norms_a[a] + v**2 * norms_b[start:] - 2 * u * v * nuclear
            values = top * (sums * squared.clamp_min(0)).sqrt()
        out[a, start:] = values
        if covariances.within:
            out[start:, a] = values
    return check_result(out, what)


def procrustes_distance(
    features: torch.Tensor,
    other: torch.Tensor | None = None,
    *,
    kind: ProcrustesKind = "angular",
) -> torch.Tensor:
    """Orthogonal Procrustes distance of all layer pairs: (L, N, D) -> (L, L) float64 (0 on the
    diagonal), or with ``other`` (L_B, N, D_B) of a second model -> (L, L_B). Any widths."""
    covariances = FeatureCovariance(features, other, f"procrustes ({kind})")
    return procrustes_from_covariances(covariances, kind)
