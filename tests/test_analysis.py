"""Saturation, minimal depth and monotonicity on hand-made predictions."""

from __future__ import annotations

import numpy as np

from aligned.analysis.readouts import (
    correlation,
    is_monotone,
    layer_accuracy,
    minimal_depth,
    saturation_layers,
    saturation_summary,
)

# 4 samples x 4 layers
PREDICTIONS = np.array([
    [1, 1, 1, 1],  # saturates at layer 1
    [0, 2, 2, 2],  # layer 2
    [2, 2, 0, 2],  # disagrees at 3: only the last layer counts -> 4
    [3, 3, 3, 0],  # final layer changes its mind -> 4
])


def test_saturation_layer_is_start_of_final_agreement_run():
    assert saturation_layers(PREDICTIONS).tolist() == [1, 2, 4, 4]


def test_saturation_summary_histogram_and_early_fraction():
    summary = saturation_summary(PREDICTIONS)
    assert summary["histogram"] == [1, 1, 0, 2]
    assert summary["early_fraction"] == 0.5
    assert summary["mean_layer"] == 2.75


def test_layer_accuracy_per_layer():
    labels = np.array([1, 2, 2, 0])
    np.testing.assert_allclose(layer_accuracy(PREDICTIONS, labels), [0.5, 0.75, 0.5, 1.0])


def test_minimal_depth_uses_epsilon():
    accuracy = np.array([0.5, 0.90, 0.955, 0.96])
    assert minimal_depth(accuracy, epsilon=0.01) == 3
    assert minimal_depth(accuracy, epsilon=0.1) == 2
    assert minimal_depth(accuracy, epsilon=0.0) == 4


def test_monotone_with_tolerance():
    assert is_monotone(np.array([0.5, 0.7, 0.698, 0.9]), tolerance=0.005)
    assert not is_monotone(np.array([0.5, 0.7, 0.6, 0.9]), tolerance=0.005)


def test_correlation_of_curves():
    x = np.array([0.1, 0.3, 0.5, 0.9])
    assert correlation(x, 2 * x + 1)["pearson"] == 1.0
    assert correlation(x, -x)["spearman"] == -1.0
    assert np.isnan(correlation(x, np.ones(4))["pearson"])
