"""Analysis: layer-by-layer similarity (COS, CKA), the evaluation pass that collects what every
layer-wise read-out needs, and the read-outs themselves (METHOD.md §1–2).

    from aligned.analysis import linear_cka, run_layerwise_pass, summarize

The figures (``aligned.analysis.plots``, which selects matplotlib's file-only Agg backend),
``report.md`` (``aligned.analysis.report``) and W&B logging (``aligned.analysis.wandb_logging``)
are imported by their module names, so that importing this package changes no plotting backend.
"""

from aligned.analysis.layerwise_pass import (
    ExitSignalCache,
    LayerwiseOutputs,
    collect_exit_signals,
    run_layerwise_pass,
    summarize,
)
from aligned.analysis.readouts import (
    is_monotone,
    layer_accuracy,
    minimal_depth,
    saturation_layers,
    saturation_summary,
)
from aligned.analysis.similarity import (
    CosAccumulator,
    MinibatchCKA,
    cos_similarity,
    linear_cka,
    minibatch_cka,
    rbf_cka,
    reduce_tokens,
    sample_cosine,
)

__all__ = [
    "CosAccumulator", "ExitSignalCache", "LayerwiseOutputs", "MinibatchCKA",
    "collect_exit_signals", "cos_similarity", "is_monotone", "layer_accuracy", "linear_cka",
    "minibatch_cka", "minimal_depth", "rbf_cka", "reduce_tokens", "run_layerwise_pass",
    "sample_cosine", "saturation_layers", "saturation_summary", "summarize",
]
