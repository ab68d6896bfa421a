"""Layer-wise read-outs of the shared head (docs/method.md, "Layer-wise read-outs"), as pure
functions over arrays.

Inputs are per-sample, per-layer arrays with layers 1..L along the last axis:
``predictions`` (N, L) top-1 class ids, ``confidences`` (N, L) top-1 softmax probability.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr


def layer_accuracy(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Accuracy of each layer, (L,)."""
    return (predictions == labels[:, None]).mean(axis=0)


def saturation_layers(predictions: np.ndarray) -> np.ndarray:
    """Each sample's saturation layer (1..L): the smallest l such that the top-1 prediction at
    every layer >= l equals the final layer's (agreement, not correctness)."""
    agrees = predictions == predictions[:, -1:]  # (N, L)
    # Walk back from the last layer: the run of agreeing layers ending at L.
    suffix_agrees = np.flip(np.cumprod(np.flip(agrees, axis=1), axis=1), axis=1)  # (N, L)
    num_layers = predictions.shape[1]
    return num_layers - suffix_agrees.sum(axis=1) + 1


def saturation_summary(predictions: np.ndarray) -> dict:
    """Histogram of saturation layers over 1..L and the fraction saturating before L."""
    layers = saturation_layers(predictions)
    num_layers = predictions.shape[1]
    histogram = np.bincount(layers, minlength=num_layers + 1)[1:]
    return {
        "histogram": histogram.tolist(),
        "early_fraction": float((layers < num_layers).mean()),
        "mean_layer": float(layers.mean()),
    }


def minimal_depth(accuracy: np.ndarray, epsilon: float = 0.01) -> int:
    """First layer (1-based) whose accuracy is within ``epsilon`` of the final layer's."""
    return int(np.argmax(accuracy >= accuracy[-1] - epsilon)) + 1


def is_monotone(accuracy: np.ndarray, tolerance: float = 0.005) -> bool:
    """Whether accuracy never drops by more than ``tolerance`` from one layer to the next."""
    return bool((np.diff(accuracy) >= -tolerance).all())


def correlation(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson and Spearman correlation of two per-layer curves (NaN when either is constant)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(pearsonr(x, y)[0]), "spearman": float(spearmanr(x, y)[0])}


def offdiagonal(matrix: np.ndarray) -> np.ndarray:
    """Entries above the diagonal of an (L, L) matrix, as a flat array."""
    return matrix[np.triu_indices(len(matrix), k=1)]
