"""Sample-wise cosine similarity (COS) of all layer pairs, in one go or over minibatches
(docs/method.md, "Similarity measures").

COS(l, l') = mean over samples i of cos(h~_i^l, h~_i^l'), h~ the centred feature. Default
centring subtracts each layer's mean over samples; ``"features"`` subtracts each vector's own
mean (the authors' variant); ``"none"``. Across two models (``other``) the same formula pairs
model A's layer l with model B's layer l' on the same sample, so both need the same width D.

Streaming COS needs each layer's mean over *all* samples before it can normalise a single
vector, and the normalisation is not linear, so one pass cannot be exact. ``CosAccumulator``
therefore takes the means up front (``mean=``); ``layer_means`` is the cheap first pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F

from aligned.analysis.feature_stacks import (
    STACKS,
    check_equal_widths,
    check_features,
    check_inputs,
    check_pair,
    check_result,
    layer_list,
    power_of_two_scale,
    raise_constant,
    sample_chunks,
    varying_layers,
)
from aligned.config import ConfigError

Centering = Literal["samples", "features", "none"]


def layer_means(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Each layer's mean over all samples, (L, D) float64, from minibatches (L, B, D).

    The first of the two passes that streaming COS with ``centering="samples"`` needs.
    """
    total, count = None, 0
    for batch in batches:
        check_features(batch, 1, "layer_means")
        batch_sum = batch.sum(dim=1, dtype=torch.float64)  # (L, D)
        total = batch_sum if total is None else total + batch_sum
        count += batch.shape[1]
    if total is None:
        raise ConfigError("layer_means got no batches.")
    return total / count


class _StackState:
    """What COS tracks per stack: the first sample (to spot constant layers), whether each layer
    varies, and how many of its vectors are non-zero after centring."""

    def __init__(self, mean: torch.Tensor | None):
        self.mean = None if mean is None else mean.to(torch.float64)  # (L, D)
        self.reference: torch.Tensor | None = None  # (L, D)
        self.varies: torch.Tensor | None = None  # (L,) bool
        self.nonzero: torch.Tensor | None = None  # (L,) float64 count

    def observe(self, batch: torch.Tensor) -> None:
        if self.reference is None:
            self.reference = batch[:, 0].clone()
            self.varies = torch.zeros(batch.shape[0], dtype=torch.bool)
            self.nonzero = torch.zeros(batch.shape[0], dtype=torch.float64)
        self.varies |= varying_layers(batch, self.reference).cpu()


class CosAccumulator:
    """Sample-wise cosine similarity accumulated over minibatches (L, B, D).

    COS(l, l') = mean over samples i of cos(h~_i^l, h~_i^l'). With ``centering="samples"`` the
    per-layer mean over all samples must be given as ``mean`` (L, D): compute it with
    ``layer_means`` in a first pass, or ``features.mean(1)`` when everything fits in memory.
    A vector that is zero after centring counts as cosine 0 with everything.

    Across two models, pass ``other_mean`` (L_B, D) as well and call ``update(batch, other)``
    with both models' features of the same samples; ``compute()`` is then (L, L_B).
    """

    def __init__(
        self,
        centering: Centering = "samples",
        mean: torch.Tensor | None = None,
        other_mean: torch.Tensor | None = None,
    ):
        if centering not in ("samples", "features", "none"):
            raise ConfigError(
                f"Unknown COS centering '{centering}'; use 'samples' (subtract each layer's mean "
                f"over samples, the default), 'features' (each vector's own mean) or 'none'."
            )
        if centering == "samples" and mean is None:
            raise ConfigError(
                "CosAccumulator(centering='samples') needs each layer's mean over ALL samples "
                "before the first update: pass mean=layer_means(batches) (a first pass over the "
                "data) or mean=features.mean(1)."
            )
        self.centering = centering
        self._means = (mean, other_mean)
        self.stacks: list[_StackState] | None = None  # one or two, fixed by the first update
        self.cos_sum: torch.Tensor | None = None  # (L, L_B) float64
        self.num_samples = 0

    @property
    def across(self) -> bool:
        return self.stacks is not None and len(self.stacks) == 2

    def _unit(self, x: torch.Tensor, state: _StackState) -> torch.Tensor:
        x = x.to(torch.float64)  # (L, B, D), a new tensor
        if self.centering == "samples":
            x = x - state.mean.to(x.device)[:, None]
        elif self.centering == "features":
            x = x - x.mean(dim=-1, keepdim=True)
        # A power of two per layer changes no cosine (it is exact) but keeps the squared norms
        # of features near 1e±200 from overflowing or underflowing to 0.
        x = x * power_of_two_scale(x.abs().amax(dim=(1, 2)))[:, None, None]
        unit = F.normalize(x, dim=-1)  # (L, B, D); zero vectors stay zero
        state.nonzero += unit.pow(2).sum((1, 2)).cpu()  # 1 per non-zero vector
        return unit

    def _start(self, num_stacks: int) -> None:
        if num_stacks == 2 and self.centering == "samples" and self._means[1] is None:
            raise ConfigError(
                "CosAccumulator across two models with centering='samples' needs model B's "
                "layer means too: pass other_mean=layer_means(batches of model B)."
            )
        if num_stacks == 1 and self._means[1] is not None:
            raise ConfigError(
                "CosAccumulator was given other_mean (model B's means) but update() got one "
                "stack; pass update(batch, other_batch) with both models' features."
            )
        self.stacks = [_StackState(mean) for mean in self._means[:num_stacks]]

    def update(
        self, batch_features: torch.Tensor, other_features: torch.Tensor | None = None
    ) -> None:
        batches = [batch_features] if other_features is None else [batch_features, other_features]
        if len(batches) == 2:
            check_pair(batch_features, other_features, 1, "CosAccumulator.update")
            check_equal_widths(batch_features, other_features, "COS across models")
        else:
            check_features(batch_features, 1, "CosAccumulator.update")
        if self.stacks is None:
            self._start(len(batches))
        elif len(batches) != len(self.stacks):
            raise ConfigError(
                f"CosAccumulator started with {len(self.stacks)} stack(s) per update and now got "
                f"{len(batches)}; pass the same models in every update."
            )
        for batch, state in zip(batches, self.stacks, strict=True):
            layers_and_width = (batch.shape[0], batch.shape[2])
            if state.mean is not None and tuple(state.mean.shape) != layers_and_width:
                raise ConfigError(
                    f"CosAccumulator mean has shape {tuple(state.mean.shape)} but the batch "
                    f"needs (L, D) = {layers_and_width}: one mean vector per layer."
                )
            state.observe(batch)
        num_layers = sum(batch.shape[0] for batch in batches)
        num_samples, dim = batch_features.shape[1:]  # both stacks: the same N and D
        for rows in sample_chunks(num_samples, 8 * num_layers * dim):
            units = [self._unit(batch[:, rows], state)
                     for batch, state in zip(batches, self.stacks, strict=True)]
            flat = [unit.flatten(1) for unit in units]  # (L, B*D): the sums are one matmul
            batch_sum = (flat[0] @ flat[-1].T).cpu()  # (L, L_B)
            self.cos_sum = batch_sum if self.cos_sum is None else self.cos_sum + batch_sum
        self.num_samples += num_samples

    def compute(self) -> torch.Tensor:
        if self.cos_sum is None:
            raise ConfigError("CosAccumulator.compute() called before any update().")
        names = STACKS if self.across else ("",)
        for state, name in zip(self.stacks, names, strict=True):
            if self.centering == "samples":
                raise_constant(~state.varies, "COS", name)
            empty = state.nonzero == 0
            if empty.any():
                of = f" of {name}" if name else ""
                raise ConfigError(
                    f"COS: every vector of layer(s) {layer_list(empty)} (1..L){of} is zero after "
                    f"centering='{self.centering}', so the cosine is undefined; try another "
                    f"centering or check the features."
                )
        cos = self.cos_sum / self.num_samples  # (L, L_B)
        return check_result(cos if self.across else (cos + cos.T) / 2, "COS")


def sample_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of each sample's two vectors, (..., D) x (..., D) -> (...) float64, uncentred (a
    single sample cannot be centred over samples); a zero vector gives 0, as in COS."""
    # eps as F.normalize's, which COS uses: norms below it are clamped, exact zeros give 0.
    return F.cosine_similarity(a.to(torch.float64), b.to(torch.float64), dim=-1, eps=1e-12)


def cosine_to_previous(previous: torch.Tensor | None, current: torch.Tensor) -> torch.Tensor:
    """Each sample's cosine between its features at the previous layer and this one, (B, D) x
    (B, D) -> (B,) float64 (what CALM's state rule reads); NaN without a previous layer (layer 1:
    the embeddings are not a layer)."""
    if previous is None:
        return torch.full(current.shape[:1], torch.nan, dtype=torch.float64,
                          device=current.device)
    return sample_cosine(previous, current)


def cos_similarity(
    features: torch.Tensor, other: torch.Tensor | None = None, *, centering: Centering = "samples"
) -> torch.Tensor:
    """Sample-wise cosine similarity of all layer pairs: (L, N, D) -> (L, L) float64, or with
    ``other`` (L_B, N, D) of a second model -> (L, L_B). Equal widths D only."""
    check_inputs(features, other, 2 if centering == "samples" else 1, "cos_similarity")
    if other is not None:
        check_equal_widths(features, other, "COS across models")

    def mean(x: torch.Tensor) -> torch.Tensor | None:
        return x.mean(dim=1, dtype=torch.float64) if centering == "samples" else None

    accumulator = CosAccumulator(
        centering, mean=mean(features), other_mean=None if other is None else mean(other)
    )
    accumulator.update(features, other)
    return accumulator.compute()
