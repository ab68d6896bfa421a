"""Figures of a layer-wise evaluation; each takes one entry per model (name -> numbers)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _layers(values: list) -> np.ndarray:
    return np.arange(1, len(values) + 1)


def _ticks(values: list | np.ndarray) -> np.ndarray:
    """Layer ticks of a heatmap: every layer up to 12, else 1 and every 5th (30 labels in a
    3.6-inch axis overlap)."""
    count = len(values)
    if count <= 12:
        return _layers(values)
    return np.unique([1, *range(5, count + 1, 5), count])


def _tokens(summaries: dict[str, dict]) -> bool:
    """Whether the samples are next-token predictions (a causal LM's evaluation)."""
    return all(summary.get("unit") == "tokens" for summary in summaries.values())


def accuracy_curve(summaries: dict[str, dict]) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, summary in summaries.items():
        accuracy = 100 * np.asarray(summary["layer_accuracy"])
        ax.plot(_layers(accuracy), accuracy, marker="o", label=name)
    what = "next-token accuracy" if _tokens(summaries) else "accuracy of the shared head"
    ax.set(xlabel="layer", ylabel=f"{what} (%)", title="Layer-wise accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def perplexity_curve(summaries: dict[str, dict]) -> Figure:
    """Next-token perplexity of the shared head at each layer, on a log scale (early layers of
    a standard LM are orders of magnitude above the last)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, summary in summaries.items():
        values = summary["layer_perplexity"]
        ax.plot(_layers(values), values, marker="o", label=name)
    ax.set(xlabel="layer", ylabel="perplexity", yscale="log", title="Layer-wise perplexity")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def similarity_heatmaps(summaries: dict[str, dict]) -> Figure:
    """One row per model, one heatmap per measure (COS, CKA, then similarity.measures' others;
    a distance such as procrustes on its own scale)."""
    rows = len(summaries)
    kinds = list(next(iter(summaries.values()))["similarity"])
    fig, axes = plt.subplots(rows, len(kinds), figsize=(4 * len(kinds), 3.6 * rows),
                             squeeze=False)
    for row, (name, summary) in enumerate(summaries.items()):
        distances = {k for k, about in summary.get("similarity_measures", {}).items()
                     if about["kind"] == "distance"}
        for col, kind in enumerate(kinds):
            matrix = np.asarray(summary["similarity"][kind])
            ax = axes[row, col]
            extent = (0.5, len(matrix) + 0.5, len(matrix) + 0.5, 0.5)
            low, high = ((matrix.min(), matrix.max()) if kind in distances
                         else (min(0.0, matrix.min()), 1.0))
            image = ax.imshow(matrix, vmin=low, vmax=high, cmap="viridis", extent=extent)
            ticks = _ticks(matrix)
            ax.set(title=f"{name}: {kind.upper()}", xlabel="layer", ylabel="layer",
                   xticks=ticks, yticks=ticks)
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def cos_to_last_curve(summaries: dict[str, dict]) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, summary in summaries.items():
        values = summary["cos_to_last"]
        ax.plot(_layers(values), values, marker="o", label=name)
    ax.set(xlabel="layer l", ylabel="COS(l, L)", title="Similarity to the last layer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def saturation_histogram(summaries: dict[str, dict]) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    width = 0.8 / len(summaries)
    for index, (name, summary) in enumerate(summaries.items()):
        counts = np.asarray(summary["saturation"]["histogram"], dtype=float)
        share = 100 * counts / counts.sum()
        early = 100 * summary["saturation"]["early_fraction"]
        ax.bar(_layers(counts) + (index - (len(summaries) - 1) / 2) * width, share, width,
               label=f"{name} (early: {early:.1f}%)")
    unit = "tokens" if _tokens(summaries) else "samples"
    ax.set(xlabel="saturation layer", ylabel=f"{unit} (%)", title="Saturation layers")
    ax.legend()
    fig.tight_layout()
    return fig


def class_mean_pca(class_means: dict[str, np.ndarray]) -> Figure:
    """Each layer's class-mean features on the last layer's first two principal axes.

    Shared axes show how far each layer's class geometry is from the final one (the paper's
    Fig. 1 a-b); features live in the same space at every depth, so the projection is defined.
    """
    rows = len(class_means)
    num_layers = max(means.shape[0] for means in class_means.values())  # models may differ
    fig, axes = plt.subplots(rows, num_layers, figsize=(1.9 * num_layers, 2.1 * rows),
                             squeeze=False)
    for row, (name, means) in enumerate(class_means.items()):
        last = means[-1] - means[-1].mean(0)  # (C, D)
        _, _, principal = np.linalg.svd(last, full_matrices=False)
        for layer in range(means.shape[0], num_layers):  # a shallower model: empty cells
            axes[row, layer].axis("off")
        for layer in range(means.shape[0]):
            centred = means[layer] - means[layer].mean(0)  # (C, D)
            points = centred @ principal[:2].T  # (C, 2)
            ax = axes[row, layer]
            ax.scatter(points[:, 0], points[:, 1], c=np.arange(len(points)), cmap="tab10", s=18)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"layer {layer + 1}", fontsize=8)
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("Class-mean features per layer, on the last layer's two principal axes",
                 fontsize=9)
    fig.tight_layout()
    return fig


def cross_similarity_heatmaps(cross: dict, names: list[str]) -> Figure:
    """CKA (and COS where the widths match) of every layer of model A (rows) against every
    layer of model B (columns)."""
    extra = list(cross.get("measures", {}))
    kinds = [kind for kind in ("cka", "cos", *extra) if cross.get(kind) is not None]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        matrix = np.asarray(cross[kind])  # (L_A, L_B)
        rows, cols = matrix.shape
        distance = cross.get("measures", {}).get(kind, {}).get("kind") == "distance"
        low, high = (matrix.min(), matrix.max()) if distance else (min(0.0, matrix.min()), 1.0)
        image = ax.imshow(matrix, vmin=low, vmax=high, cmap="viridis",
                          extent=(0.5, cols + 0.5, rows + 0.5, 0.5), aspect="auto")
        ax.set(title=f"{kind.upper()} across models", xlabel=f"layer of {names[1]}",
               ylabel=f"layer of {names[0]}", xticks=_ticks(matrix[0]), yticks=_ticks(matrix))
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def early_exit_curves(summaries: dict[str, dict]) -> Figure:
    """Test accuracy against speed-up (L / mean exit layer), one line per (model, rule); a star
    marks the operating point chosen on val. Colour = rule, line style = model."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    styles = ["-", "--", ":", "-."]
    for index, (name, summary) in enumerate(summaries.items()):
        for color, (rule, entry) in enumerate(summary["early_exit"]["rules"].items()):
            points = sorted((p["speedup"], 100 * p["accuracy"]) for p in entry["test_curve"])
            ax.plot(*zip(*points, strict=True), styles[index % len(styles)], color=f"C{color}",
                    marker=".", markersize=3, label=f"{name}: {rule}")
            if entry["chosen"] is not None:
                ax.plot(entry["chosen"]["speedup"], 100 * entry["chosen"]["accuracy"], "*",
                        color=f"C{color}", markersize=11, markeredgecolor="black")
    ax.set(xlabel="speed-up (L / mean exit layer)", ylabel="test accuracy (%)",
           title="Early exit (★ = operating point chosen on val)")
    chosen = [100 * entry["chosen"]["accuracy"] for summary in summaries.values()
              for entry in summary["early_exit"]["rules"].values() if entry["chosen"]]
    if chosen:  # the interesting region: near full-depth accuracy, not the 1-layer collapse
        ax.set_ylim(max(0, min(chosen) - 15), None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=len(summaries))
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
