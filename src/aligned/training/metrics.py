"""Per-layer task metrics: accuracy by default, the GLUE metrics where a task asks for them,
perplexity for causal LMs (whose "classes" are the vocabulary, one prediction per token)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassMatthewsCorrCoef,
)

from aligned.config import ConfigError

# Metric name -> short key used in logged names (`val/acc`, `val_layers/mcc_L03`).
METRIC_KEYS = {
    "accuracy": "acc",
    "f1": "f1",
    "matthews": "mcc",
    "pearson": "pearson",
    "spearman": "spearman",
    "perplexity": "ppl",
}
REGRESSION_METRICS = ("pearson", "spearman")


def build_metric(name: str, num_classes: int) -> Metric:
    if name not in METRIC_KEYS:
        raise ConfigError(f"Unknown metric '{name}'; known: {', '.join(METRIC_KEYS)}.")
    regression = num_classes == 1
    if regression != (name in REGRESSION_METRICS):
        kind = "regression (1 output)" if regression else f"classification ({num_classes} classes)"
        raise ConfigError(f"Metric '{name}' does not apply to {kind}.")
    if name == "accuracy":
        return MulticlassAccuracy(num_classes, average="micro")
    if name == "f1":
        if num_classes != 2:
            raise ConfigError(f"F1 is defined here for binary tasks; got {num_classes} classes.")
        return BinaryF1Score()
    if name == "matthews":
        return MatthewsCorrCoef(num_classes)
    if name == "perplexity":
        return Perplexity()
    return PearsonCorrCoef() if name == "pearson" else SpearmanCorrCoef()


class MatthewsCorrCoef(MulticlassMatthewsCorrCoef):
    """Matthews correlation as GLUE computes it (sklearn's ``matthews_corrcoef``), from the
    accumulated confusion matrix: 0 when a layer predicts one class for every sample, where
    torchmetrics 1.9 returns a non-zero value (e.g. -0.20) and would mislabel collapsed layers."""

    def compute(self) -> torch.Tensor:
        confmat = self.confmat.double()
        true, predicted = confmat.sum(1), confmat.sum(0)
        correct, total = confmat.trace(), confmat.sum()
        covariance = correct * total - true @ predicted
        scale = ((total**2 - true @ true) * (total**2 - predicted @ predicted)).sqrt()
        mcc = covariance / scale if scale > 0 else confmat.new_zeros(())
        return mcc.float()


class Perplexity(Metric):
    """exp(mean cross-entropy) over every prediction of the split (tokens, for an LM): the
    summed negative log-likelihood and the count accumulate, so batches of any size weigh by
    their tokens. Reads logits (N, C), not class ids; padding never reaches it (the system
    passes only the tokens with a target)."""

    reads_logits = True
    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.nll += F.cross_entropy(logits.float(), target, reduction="sum").double()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return (self.nll / self.count.clamp(min=1)).exp().float()


def metric_input(logits: torch.Tensor) -> torch.Tensor:
    """What the metrics read from one layer's logits (B, C): class ids, or the score if C == 1."""
    return logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)
