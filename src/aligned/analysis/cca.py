"""Canonical correlation measures of all layer pairs: mean squared CCA, SVCCA and PWCCA.

For two layers X (N × D_A) and Y (N × D_B) on the same samples, centred, CCA finds directions
w_i, v_i whose projections X w_i, Y v_i are as correlated as possible, ρ_1 ≥ ρ_2 ≥ ... ≥ 0,
each pair uncorrelated with the others. Here they come from covariances: with the whitening
W_X = Λ^{-1/2} V' over the kept eigen-directions of Σ_XX, the ρ_i are the singular values of
T = W_X Σ_XY W_Y' (the square roots of the eigenvalues of Σ_XX^-1 Σ_XY Σ_YY^-1 Σ_YX).

- ``mean_squared_cca``: (1/m) Σ ρ_i², m = min(r_X, r_Y) correlations (R²_CCA of Kornblith et al.
  2019, Yanai's GCD). Symmetric; 1 on the diagonal.
- ``svcca`` (Raghu et al. 2017): each layer keeps its top singular directions that explain
  ``variance`` (99%) of its variance, or its top ``keep``; then the mean of the ρ_i over
  min(k_X, k_Y). Symmetric.
- ``pwcca`` (Morcos et al. 2018): Σ α_i ρ_i / Σ α_i with α_i = Σ_j |<h_i, x_j>|, h_i = X w_i
  / |X w_i| the canonical variates and x_j the centred neurons (columns) of the layer with fewer
  directions (X on a tie), which is how Google's ``pwcca.py`` picks the side. Not symmetric:
  entry (a, b) weights by layer a unless b has fewer directions. Google's code also leaves the
  whitening out of its canonical variates and reads model A's neurons on the B side; this is
  the paper's definition, with neither slip.

A direction counts when its singular value exceeds max(N, D)·eps·s_max (numpy's matrix_rank
rule, eps of the input's precision) and its variance 1e-12 of the largest (the most a float64
covariance resolves). The centred columns of X and Y span r_X + r_Y dimensions of an
(N - 1)-dimensional space, so for r_X + r_Y > N - 1 some directions are shared and have ρ = 1
whatever the data: an error, unless ``ridge`` > 0 regularises (Σ_XX + ridge·(tr Σ_XX / D)·I,
all directions kept). Below that bound CCA is still biased upward unless N ≫ D_A + D_B.

Cost: the covariance blocks (L_A L_B N D_A D_B for all pairs, as linear CKA's), one D³
eigendecomposition per layer and per pair a few r_X r_Y min(r_X, r_Y) products (and for SVCCA
and PWCCA one symmetric eigenproblem of size min(r_X, r_Y)). ``canonical_similarity(covariances,
...)`` runs any of the three on a ``CovarianceAccumulator`` filled batch by batch, so N is
unbounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

from aligned.analysis.covariance import Covariances, FeatureCovariance
from aligned.analysis.feature_stacks import check_result
from aligned.config import ConfigError

CanonicalMeasure = Literal["cca", "svcca", "pwcca"]
RELATIVE_VARIANCE_FLOOR = 1e-12  # of the largest eigenvalue: below it float64 eigh is noise


class _Whitening(NamedTuple):
    transform: torch.Tensor  # (r, D): rows λ_i^{-1/2} v_i' of the kept directions
    covariance: torch.Tensor  # (D, D) Σ of the layer


def _whiten(
    covariance: torch.Tensor,
    num_samples: int,
    eps: float,
    ridge: float,
    variance: float | None,
    keep: int | None,
) -> _Whitening:
    eigenvalues, vectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0), vectors.flip(1)  # descending
    dim = covariance.shape[0]
    if ridge > 0:
        regularised = eigenvalues + ridge * eigenvalues.sum() / dim
        return _Whitening((vectors / regularised.sqrt()).T, covariance)
    singular_tolerance = max(num_samples, dim) * eps  # relative to s_max; λ ∝ s²
    tolerance = eigenvalues[0] * max(singular_tolerance**2, RELATIVE_VARIANCE_FLOOR)
    count = int((eigenvalues > tolerance).sum())
    if keep is not None:
        count = min(count, keep)
    elif variance is not None:
        explained = eigenvalues.cumsum(0) / eigenvalues.sum()  # (D,)
        count = min(count, int(torch.searchsorted(explained, variance)) + 1)
    kept = slice(0, max(count, 1))
    return _Whitening((vectors[:, kept] / eigenvalues[kept].sqrt()).T, covariance)


def _mean_squared(t: torch.Tensor, a: _Whitening, b: _Whitening) -> torch.Tensor:
    return t.pow(2).sum() / min(t.shape)


def _squared_correlations(t: torch.Tensor, vectors: bool = False):
    """ρ_i² (descending) of T (r_A, r_B), from the symmetric eigenproblem of the smaller of
    T T' and T' T (the same ρ²; a fraction of an SVD's time), and with ``vectors`` that side's
    singular vectors (m, m) as columns."""
    small = t @ t.T if t.shape[0] <= t.shape[1] else t.T @ t  # (m, m)
    if not vectors:
        return torch.linalg.eigvalsh(small).flip(0).clamp(0, 1), None
    eigenvalues, eigenvectors = torch.linalg.eigh(small)
    return eigenvalues.flip(0).clamp(0, 1), eigenvectors.flip(1)


def _mean_correlation(t: torch.Tensor, a: _Whitening, b: _Whitening) -> torch.Tensor:
    return _squared_correlations(t)[0].sqrt().mean()


def _projection_weighted(t: torch.Tensor, a: _Whitening, b: _Whitening) -> torch.Tensor:
    squared, directions = _squared_correlations(t, vectors=True)  # (m,), (m, m)
    correlations = squared.sqrt()
    side = a if t.shape[0] <= t.shape[1] else b
    weights = side.transform.T @ directions  # (D, m): canonical weights w_i
    projections = side.covariance @ weights  # (D, m): Σ w_i ∝ <x_j, X w_i> over neurons j
    # α_i = Σ_j |<x_j, h_i>| with h_i = X w_i / |X w_i|; |X w_i|² ∝ w_i' Σ w_i (1 unless ridge)
    alpha = projections.abs().sum(0) / (weights * projections).sum(0).sqrt()  # (m,)
    return (alpha * correlations).sum() / alpha.sum()


VALUES: dict[str, tuple[Callable, bool]] = {  # measure -> (value of T, symmetric)
    "cca": (_mean_squared, True),
    "svcca": (_mean_correlation, True),
    "pwcca": (_projection_weighted, False),
}


def _check_options(measure: str, ridge: float, variance: float | None, keep: int | None):
    if measure not in VALUES:
        raise ConfigError(f"Unknown canonical measure '{measure}'; use one of {list(VALUES)}.")
    if measure != "svcca" and (variance is not None or keep is not None):
        raise ConfigError(f"{measure} uses every direction of each layer; variance= and keep= "
                          f"choose SVCCA's directions (use measure='svcca').")
    if isinstance(ridge, bool) or not isinstance(ridge, int | float):
        raise ConfigError(f"{measure} ridge={ridge!r}; it is a number (0: plain CCA).")
    if measure == "svcca" and ridge != 0:
        raise ConfigError("svcca keeps each layer's top directions instead of regularising; "
                          "drop ridge= (or use 'cca' / 'pwcca' with ridge).")
    if not (ridge >= 0 and ridge != float("inf")):
        raise ConfigError(f"{measure} ridge={ridge}; use 0 (plain CCA) or a small positive "
                          f"fraction of the mean variance such as 1e-3.")
    if variance is not None and not 0 < variance <= 1:
        raise ConfigError(f"svcca variance={variance}; it is the fraction of each layer's "
                          f"variance to keep, in (0, 1] (Raghu et al. keep 0.99).")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ConfigError(f"svcca keep={keep}; it is a number of directions, a positive int.")


def _check_samples(ranks: tuple[int, int], num_samples: int, pair: tuple[int, int], what: str):
    forced = sum(ranks) - num_samples + 1  # shared directions of the two column spaces
    if forced > 0:
        raise ConfigError(
            f"{what}: layers {pair} (1-based, A x B) keep {ranks[0]} + {ranks[1]} directions "
            f"but there are only N = {num_samples} samples, so at least {forced} canonical "
            f"correlation(s) are 1 whatever the data. Use more samples (N well above D_A + "
            f"D_B), svcca with a smaller variance= or keep=, or ridge > 0."
        )


def canonical_similarity(
    covariances: Covariances,
    measure: CanonicalMeasure = "cca",
    *,
    ridge: float = 0.0,
    variance: float | None = None,
    keep: int | None = None,
) -> torch.Tensor:
    """``measure`` of every layer pair from covariance blocks: (L_A, L_B) float64.

    ``covariances`` is a ``FeatureCovariance`` or a filled ``CovarianceAccumulator``.
    SVCCA's directions: the top ``keep`` if given, else those explaining ``variance`` (0.99 by
    default); ``ridge`` regularises CCA and PWCCA.
    """
    _check_options(measure, ridge, variance, keep)
    if measure == "svcca" and keep is None and variance is None:
        variance = 0.99  # Raghu et al.
    what = measure
    covariances.check(what)
    value, symmetric = VALUES[measure]
    n, eps = covariances.num_samples, covariances.eps

    def whitenings(stack: int) -> list[_Whitening]:
        return [_whiten(covariances.covariance(stack, layer), n, eps, ridge, variance, keep)
                for layer in range(covariances.layers[stack])]

    white_a = whitenings(0)
    white_b = white_a if covariances.within else whitenings(1)
    out = torch.empty(covariances.layers, dtype=torch.float64, device=covariances.device)
    for a, wa in enumerate(white_a):
        start = a if covariances.within and symmetric else 0
        for offset, block in enumerate(covariances.cross_row(a, start)):  # (D_A, D_B) each
            b = start + offset
            wb = white_b[b]
            ranks = (wa.transform.shape[0], wb.transform.shape[0])
            if ridge == 0 and not (covariances.within and a == b):
                _check_samples(ranks, n, (a + 1, b + 1), what)
            t = wa.transform @ block @ wb.transform.T  # (r_A, r_B)
            out[a, b] = value(t, wa, wb)
            if covariances.within and symmetric:
                out[b, a] = out[a, b]
    return check_result(out, what)


def mean_squared_cca(
    features: torch.Tensor, other: torch.Tensor | None = None, *, ridge: float = 0.0
) -> torch.Tensor:
    """Mean squared canonical correlation of all layer pairs: (L, N, D) -> (L, L), or with
    ``other`` (L_B, N, D_B) of a second model on the same samples -> (L, L_B)."""
    covariances = FeatureCovariance(features, other, "cca")
    return canonical_similarity(covariances, "cca", ridge=ridge)


def svcca(
    features: torch.Tensor,
    other: torch.Tensor | None = None,
    *,
    variance: float = 0.99,
    keep: int | None = None,
) -> torch.Tensor:
    """SVCCA of all layer pairs: (L, N, D) -> (L, L), or (L, L_B) with ``other``. Each layer
    keeps the top directions explaining ``variance`` of its variance, or exactly ``keep``."""
    covariances = FeatureCovariance(features, other, "svcca")
    return canonical_similarity(covariances, "svcca", variance=variance, keep=keep)


def pwcca(
    features: torch.Tensor, other: torch.Tensor | None = None, *, ridge: float = 0.0
) -> torch.Tensor:
    """Projection-weighted CCA of all layer pairs: (L, N, D) -> (L, L) (not symmetric), or
    (L, L_B) with ``other``."""
    covariances = FeatureCovariance(features, other, "pwcca")
    return canonical_similarity(covariances, "pwcca", ridge=ridge)


__all__ = ["canonical_similarity", "mean_squared_cca", "pwcca", "svcca"]
