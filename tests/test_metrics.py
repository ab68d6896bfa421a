"""Per-layer task metrics agree with the reference implementations GLUE's numbers come from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from aligned.training.metrics import build_metric

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 3, 200)
CASES = {  # predictions that a layer may give: random, perfect, one class for every sample
    "random": RNG.integers(0, 3, 200),
    "perfect": LABELS,
    "constant": np.zeros(200, dtype=int),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("classes", [2, 3])
def test_classification_metrics_match_sklearn(case, classes):
    labels, predictions = LABELS % classes, CASES[case] % classes
    references = {"accuracy": accuracy_score, "matthews": matthews_corrcoef}
    if classes == 2:
        references["f1"] = f1_score
    for name, reference in references.items():
        metric = build_metric(name, classes)
        for part in np.array_split(np.arange(200), 3):  # accumulated over batches
            metric.update(torch.from_numpy(predictions[part]), torch.from_numpy(labels[part]))
        expected = reference(labels, predictions)
        assert float(metric.compute()) == pytest.approx(expected, abs=1e-6), (name, case)


def test_regression_metrics_match_scipy():
    scores, targets = RNG.normal(size=100), RNG.normal(size=100)
    for name, reference in (("pearson", pearsonr), ("spearman", spearmanr)):
        metric = build_metric(name, 1)
        metric.update(torch.from_numpy(scores).float(), torch.from_numpy(targets).float())
        assert float(metric.compute()) == pytest.approx(reference(scores, targets)[0], abs=1e-5)
