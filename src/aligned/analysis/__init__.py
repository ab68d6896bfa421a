"""Analysis: layer-by-layer similarity (COS, CKA, and the measures peers use: CCA, SVCCA,
PWCCA, Procrustes, mutual k-NN; within one model or across two), the evaluation pass that
collects what every layer-wise read-out needs, and the read-outs themselves (docs/method.md,
"Similarity measures", "Layer-wise read-outs").

    from aligned.analysis import linear_cka, run_layerwise_pass, summarize
    from aligned.analysis import cross_similarity, similarity_matrix, MEASURES

The figures (``aligned.analysis.plots``, which selects matplotlib's file-only Agg backend),
``report.md`` (``aligned.analysis.report``) and W&B logging (``aligned.analysis.wandb_logging``)
are imported by their module names, so that importing this package changes no plotting backend.
"""

from aligned.analysis.cca import canonical_similarity, mean_squared_cca, pwcca, svcca
from aligned.analysis.cka import MinibatchCKA, linear_cka, minibatch_cka, rbf_cka
from aligned.analysis.covariance import CovarianceAccumulator
from aligned.analysis.head_statistics import HeadStatistics, head_statistics
from aligned.analysis.layerwise_pass import LayerwiseOutputs, run_layerwise_pass, summarize
from aligned.analysis.measures import MEASURES, cross_similarity, similarity_matrix
from aligned.analysis.mutual_knn import mutual_knn
from aligned.analysis.procrustes import procrustes_distance, procrustes_from_covariances
from aligned.analysis.readouts import (
    is_monotone,
    layer_accuracy,
    minimal_depth,
    saturation_layers,
    saturation_summary,
)
from aligned.analysis.similarity import (
    CosAccumulator,
    cos_similarity,
    reduce_tokens,
    sample_cosine,
)

__all__ = [
    "MEASURES", "CovarianceAccumulator", "canonical_similarity", "cross_similarity",
    "mean_squared_cca", "mutual_knn", "procrustes_distance", "procrustes_from_covariances",
    "pwcca", "similarity_matrix", "svcca",
    "CosAccumulator", "HeadStatistics", "LayerwiseOutputs", "MinibatchCKA",
    "cos_similarity", "head_statistics", "is_monotone", "layer_accuracy", "linear_cka",
    "minibatch_cka", "minimal_depth", "rbf_cka", "reduce_tokens", "run_layerwise_pass",
    "sample_cosine", "saturation_layers", "saturation_summary", "summarize",
]
