"""The figures of an evaluation, one model or two drawn on each: what every evaluation draws,
then what only some have (causal LMs' perplexity or classifiers' class means, early exit, the
cross-model similarity of ``compare_to``)."""

from __future__ import annotations

from pathlib import Path

from aligned.analysis import plots
from aligned.evaluation.model_analysis import ModelAnalysis


def save_figures(run_dir: Path, analysed: dict[str, ModelAnalysis],
                 cross_similarity: dict | None = None) -> dict[str, Path]:
    """``analysed``: label -> analysis, the evaluated model first; figure name -> its PNG."""
    summaries = {label: model.summary for label, model in analysed.items()}
    figures = {
        "layer_accuracy": plots.accuracy_curve(summaries),
        "similarity": plots.similarity_heatmaps(summaries),
        "cos_to_last": plots.cos_to_last_curve(summaries),
        "saturation": plots.saturation_histogram(summaries),
    }
    if all("layer_perplexity" in summary for summary in summaries.values()):  # causal LMs
        # No class means: the "classes" are a vocabulary of tens of thousands of tokens.
        figures["layer_perplexity"] = plots.perplexity_curve(summaries)
    else:
        figures["class_mean_pca"] = plots.class_mean_pca(
            {label: model.outputs.class_means for label, model in analysed.items()}
        )
    if all("early_exit" in summary for summary in summaries.values()):
        figures["early_exit"] = plots.early_exit_curves(summaries)
    if cross_similarity is not None:
        figures["cross_similarity"] = plots.cross_similarity_heatmaps(cross_similarity,
                                                                      list(analysed))
    return {name: plots.save(fig, run_dir / f"{name}.png") for name, fig in figures.items()}
