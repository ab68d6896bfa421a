"""The similarity measures of an evaluation pass, fed batch by batch: COS, minibatch CKA and the
other measures of ``similarity.measures`` (``ExtraMeasures``), within one model or across two.

The classifier pass (``layerwise_pass``), the causal-LM pass (``token_pass``: a sample is a
predicted token) and the cross-model pass (``cross_model_pass``) all feed one
``SimilarityAccumulators`` and keep only what differs.

- COS reads every sample. Centred over samples (the default) it needs each layer's mean over
  all samples before it can normalise a vector: within one model the accumulators sum the
  features as they go, and ``compute`` makes a second, feature-only pass once the means are
  known; across two models each model's means come from its own pass. Across models COS needs
  equal widths; with other widths it is left out (CKA compares any).
- Minibatch CKA and the extra measures read each batch's ``sample`` (all of it unless given; a
  causal LM's seeded token sample). Unbiased HSIC needs ``MIN_SAMPLES_CKA`` samples per minibatch:
  a smaller batch is left out of CKA, and a pass with no batch that large is one clear error.

The accumulators are float64 and, on a GPU, stay on the device until ``compute``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import torch

from aligned.analysis.cka import MIN_SAMPLES_CKA, MinibatchCKA
from aligned.analysis.measure_pass import ExtraMeasures
from aligned.analysis.similarity import CosAccumulator
from aligned.config import ConfigError


class Similarities(NamedTuple):
    cos: np.ndarray | None  # (L, L) or (L, L_B); None across models of other widths
    cka: np.ndarray  # (L, L) or (L, L_B)
    extra: dict[str, Any] | None  # ExtraMeasures.compute(), or None without extra measures


class SimilarityAccumulators:
    """``update`` per batch, then ``compute``. ``unit`` names a sample in the errors ("samples",
    "predicted tokens"). Across two models: ``other_layers`` (model B's L) and ``means``, each
    model's per-layer feature means (L, D) over the split, for COS centred over samples."""

    def __init__(self, num_layers: int, centering: str = "samples",
                 extra_measures: ExtraMeasures | None = None, unit: str = "samples",
                 other_layers: int | None = None,
                 means: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.across = other_layers is not None
        self.centering, self.means, self.unit = centering, means, unit
        self.cka = MinibatchCKA(num_layers, other_layers=other_layers)
        # Within one model, centring over samples waits for the means (the second pass).
        self.cos = None if self.across or centering == "samples" else CosAccumulator(centering)
        self.extra_measures = extra_measures
        self.widths: list[int] = []  # D (and D_B), from the first batch
        self.feature_sum: torch.Tensor | None = None  # (L, D) float64, within one model
        self.num_samples = 0
        self.cka_samples = 0  # samples CKA read, over all batches

    def update(self, features: torch.Tensor, other: torch.Tensor | None = None,
               sample: torch.Tensor | None = None) -> None:
        """One batch: ``features`` (L, B, D); across two models also ``other`` (L_B, B, D_B),
        model B's features of the same samples. CKA and the extra measures read the positions
        ``sample`` (B,) only, when given."""
        if not features.shape[1]:
            return  # an empty batch (a causal LM's batch of 1-token sequences)
        stacks = (features,) if other is None else (features, other)
        if not self.widths:
            self.widths = [stack.shape[-1] for stack in stacks]
            if self.across and self.widths[0] == self.widths[1]:
                self.cos = CosAccumulator(self.centering, *self._cos_means(features.device))
        self.num_samples += features.shape[1]
        if not self.across:  # the layer means, for COS's second pass
            batch_sum = features.sum(1, dtype=torch.float64)  # (L, D)
            self.feature_sum = (batch_sum if self.feature_sum is None
                                else self.feature_sum + batch_sum)
        if self.cos is not None:
            self.cos.update(*stacks)
        if sample is not None:
            stacks = tuple(stack[:, sample] for stack in stacks)
        if stacks[0].shape[1] >= MIN_SAMPLES_CKA:
            self.cka.update(*stacks)
            self.cka_samples += stacks[0].shape[1]
        if self.extra_measures is not None:
            self.extra_measures.update(*stacks)

    @property
    def layer_means(self) -> torch.Tensor:
        """Each layer's mean feature over the samples so far, (L, D) float64 (within one
        model)."""
        return self.feature_sum / self.num_samples

    def compute(self, second_pass: Callable[[], Iterable[torch.Tensor]] | None = None
                ) -> Similarities:
        """Within one model with COS centred over samples, ``second_pass()`` gives the features
        (L, B, D) again, batch by batch, for COS to read once the layer means are known."""
        if self.cka.num_batches == 0:
            raise ConfigError(
                f"Minibatch CKA needs batches of at least {MIN_SAMPLES_CKA} {self.unit}; this "
                f"split has {self.num_samples} in batches of fewer. Use a larger split or batch "
                f"size (data.batch_size=<N>)."
            )
        if self.cos is None and not self.across:
            self.cos = CosAccumulator("samples", mean=self.layer_means)
            for features in second_pass():
                if features.shape[1]:
                    self.cos.update(features)
        return Similarities(
            cos=None if self.cos is None else self.cos.compute().numpy(),
            cka=self.cka.compute().numpy(),
            extra=None if self.extra_measures is None else self.extra_measures.compute(),
        )

    def _cos_means(self, device: torch.device) -> tuple[torch.Tensor | None, ...]:
        if self.centering != "samples":
            return None, None
        return tuple(torch.as_tensor(mean, dtype=torch.float64, device=device)
                     for mean in self.means)
