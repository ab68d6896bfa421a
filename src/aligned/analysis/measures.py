"""The similarity measures by name, each one function with one signature:

    measure(features (L, N, D), other (L_B, N, D_B) | None = None, **options) -> Tensor

Within one stack (``other`` None) the result is the (L, L) matrix over its layer pairs; across
two stacks, model A and model B on the same N inputs in the same order, it is (L, L_B): row l is
model A's layer l against every layer of model B. float64, finite, never modifying the inputs.

    from aligned.analysis.measures import cross_similarity, similarity_matrix
    similarity_matrix("svcca", features)                  # (L, L)
    cross_similarity(features_a, features_b, "cka")       # (L_A, L_B)

``MEASURES[name]`` also says what a number means (``kind``: similarity, higher = more alike, or
distance), whether the matrix is symmetric, whether widths may differ, and how the measure runs
over minibatches when the features do not fit in memory (``streaming``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from aligned.analysis.cca import mean_squared_cca, pwcca, svcca
from aligned.analysis.cka import linear_cka, minibatch_cka, rbf_cka
from aligned.analysis.mutual_knn import mutual_knn
from aligned.analysis.procrustes import procrustes_distance
from aligned.analysis.similarity import cos_similarity
from aligned.config import ConfigError


def cka(
    features: torch.Tensor,
    other: torch.Tensor | None = None,
    *,
    unbiased: bool | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Linear CKA: biased HSIC by default (Kornblith et al.); ``unbiased=True`` for Song et al.'s
    estimator; ``batch_size=B`` for minibatch CKA (Nguyen et al.), which is always unbiased."""
    if batch_size is None:
        return linear_cka(features, other, unbiased=bool(unbiased))
    if unbiased is False:
        raise ConfigError("cka with batch_size= is minibatch CKA, which uses the unbiased HSIC "
                          "per batch; drop unbiased=False (or drop batch_size for biased CKA).")
    return minibatch_cka(features, other, batch_size=batch_size)


@dataclass(frozen=True)
class Measure:
    """One measure of the registry; ``compute`` has the signature in the module docstring."""

    name: str
    compute: Callable[..., torch.Tensor]
    kind: Literal["similarity", "distance"]
    symmetric: bool  # within one stack
    any_widths: bool  # across two stacks of different D
    streaming: str  # how to run it over minibatches
    source: str  # the definition followed


MEASURES: dict[str, Measure] = {
    measure.name: measure
    for measure in (
        Measure("cos", cos_similarity, "similarity", True, False,
                "CosAccumulator (means first: layer_means)",
                'sample-wise cosine, docs/method.md, "Similarity measures"'),
        Measure("cka", cka, "similarity", True, True, "MinibatchCKA (or batch_size=)",
                "Kornblith et al. 2019; Nguyen et al. 2021 for minibatches"),
        Measure("rbf_cka", rbf_cka, "similarity", True, True,
                "none: holds N×N Gram matrices per layer", "Kornblith et al. 2019, gram_rbf"),
        Measure("cca", mean_squared_cca, "similarity", True, True,
                "CovarianceAccumulator + canonical_similarity(acc, 'cca')",
                "mean squared CCA, R²_CCA (Kornblith et al. 2019)"),
        Measure("svcca", svcca, "similarity", True, True,
                "CovarianceAccumulator + canonical_similarity(acc, 'svcca', variance=0.99)",
                "Raghu et al. 2017"),
        Measure("pwcca", pwcca, "similarity", False, True,
                "CovarianceAccumulator + canonical_similarity(acc, 'pwcca')",
                "Morcos et al. 2018"),
        Measure("procrustes", procrustes_distance, "distance", True, True,
                "CovarianceAccumulator + procrustes_from_covariances(acc)",
                "Williams et al. 2021, netrep LinearMetric(alpha=1), angular"),
        Measure("mutual_knn", mutual_knn, "similarity", True, True,
                "none: needs all samples of a layer (memory O(N k), not N²)",
                "Huh et al. 2024, platonic-rep mutual_knn"),
    )
}


def get_measure(name: str) -> Measure:
    if name not in MEASURES:
        raise ConfigError(f"Unknown similarity measure '{name}'; choose from "
                          f"{', '.join(MEASURES)}.")
    return MEASURES[name]


def _options(measure: Measure) -> list[str]:
    parameters = inspect.signature(measure.compute).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def similarity_matrix(
    name: str, features: torch.Tensor, other: torch.Tensor | None = None, **options
) -> torch.Tensor:
    """Measure ``name`` over one stack -> (L, L), or across two stacks -> (L, L_B)."""
    measure = get_measure(name)
    unknown = sorted(set(options) - set(_options(measure)))
    if unknown:
        allowed = ", ".join(_options(measure)) or "none"
        raise ConfigError(f"Similarity measure '{name}' has no option(s) {unknown}; its options: "
                          f"{allowed}.")
    return measure.compute(features, other, **options)


def cross_similarity(
    features: torch.Tensor, other: torch.Tensor, measure: str = "cka", **options
) -> torch.Tensor:
    """Every layer of model A (L_A, N, D_A) against every layer of model B (L_B, N, D_B) on the
    same inputs: (L_A, L_B) float64. Any widths and depths; ``cos`` needs D_A = D_B."""
    if other is None:
        raise ConfigError("cross_similarity compares two models: pass model B's features as "
                          "other (for one model use similarity_matrix).")
    return similarity_matrix(measure, features, other, **options)
