"""Covariances of one feature stack, or of two stacks and between them, in one go or accumulated
over minibatches: what CCA, SVCCA, PWCCA and Procrustes are computed from.

Both classes answer the same three questions, in float64 and normalised by N - 1:

- ``covariance(stack, layer)``: Σ_aa of one layer, (D, D); ``stack`` 0 is model A, 1 model B;
- ``cross_row(a, start)``: Σ_ab for layer a of A and layers ``start..L_B`` of B (within one
  stack: of the same stack), (L_B - start, D_A, D_B);
- ``num_samples``, ``layers`` (L_A, L_B), ``widths`` (D_A, D_B), ``within``, ``device``,
  ``eps`` (the machine epsilon of the least precise input, for numerical-rank decisions);
- ``check(what)``: one clear error when there are too few samples or a layer is constant;
- ``scale(stack, layer)``: every layer is multiplied by a power of two before its moments are
  taken (exact; ``feature_stacks.layer_scales``), so features near 1e±200 still give finite,
  non-zero covariances; the blocks above are of the scaled features, and this is the factor.

``FeatureCovariance`` holds centred float64 copies of the features and multiplies blocks on
demand: memory O(L N D), nothing N×N. ``CovarianceAccumulator`` adds minibatches to running
sums instead: memory independent of N, O((L D)^2) within one stack (12 layers of 768: 0.7 GB)
and O(L_A D_A L_B D_B) across two, exact up to round-off (sums are shifted by the first batch's
mean, so a large common offset does not cancel catastrophically).
"""

from __future__ import annotations

import torch

from aligned.analysis.feature_stacks import (
    STACKS,
    centred_copy,
    check_inputs,
    layer_scales,
    raise_constant,
    raise_constant_stacks,
    varying_layers,
)
from aligned.config import ConfigError


def _least_precise_eps(*stacks: torch.Tensor | None) -> float:
    return max(torch.finfo(stack.dtype).eps for stack in stacks
               if stack is not None and stack.is_floating_point())


class FeatureCovariance:
    """Covariance blocks of stacks held in memory, each computed when asked for."""

    def __init__(self, features: torch.Tensor, other: torch.Tensor | None = None,
                 what: str = "covariance", min_samples: int = 2):
        check_inputs(features, other, min_samples, what)
        raise_constant_stacks(features, other, what)
        self.within = other is None
        stacks = (features,) if other is None else (features, other)
        self.layers = tuple(stack.shape[0] for stack in stacks) * (2 if self.within else 1)
        self.widths = tuple(stack.shape[2] for stack in stacks) * (2 if self.within else 1)
        self.num_samples = features.shape[1]
        self.device = features.device
        self.eps = _least_precise_eps(features, other)
        # Each layer times a power of two (exact; see layer_scales), so covariances of features
        # near 1e±200 stay finite and non-zero; ``scales`` undoes it for euclidean Procrustes.
        self.scales = [layer_scales(stack) for stack in stacks]
        self._flat = [centred_copy(stack, torch.float64, scales).transpose(0, 1)
                      .reshape(self.num_samples, -1)
                      for stack, scales in zip(stacks, self.scales, strict=True)]  # (N, L*D)

    def check(self, what: str) -> None:
        """Nothing left to check: the constructor checked the features."""

    def scale(self, stack: int, layer: int) -> float:
        """The power of two layer ``layer``'s features were multiplied by."""
        return float(self.scales[0 if self.within else stack][layer])

    def _layer(self, stack: int, layer: int) -> torch.Tensor:
        flat = self._flat[0 if self.within else stack]
        dim = self.widths[stack]
        return flat[:, layer * dim : (layer + 1) * dim]  # (N, D)

    def covariance(self, stack: int, layer: int) -> torch.Tensor:
        x = self._layer(stack, layer)
        return x.T @ x / (self.num_samples - 1)  # (D, D)

    def cross_row(self, a: int, start: int = 0) -> torch.Tensor:
        da, db = self.widths
        others = self._flat[0 if self.within else 1][:, start * db :]  # (N, (L_B-start)*D_B)
        block = self._layer(0, a).T @ others / (self.num_samples - 1)  # (D_A, (L_B-start)*D_B)
        return block.view(da, self.layers[1] - start, db).permute(1, 0, 2)


class CovarianceAccumulator:
    """Covariance blocks from minibatches: ``update(batch (L, B, D))`` for one model, or
    ``update(batch, other_batch)`` with model B's features of the same samples.

    Within one model every pair of layers is needed: the sums of products of all L*D columns,
    (L D)^2 floats. Across two models only each layer's own block and the A×B blocks are:
    L_A D_A^2 + L_B D_B^2 + L_A D_A L_B D_B floats (for 12 + 12 layers of 384 and 768, 0.4 GB
    rather than 1.5 GB for all columns of both), and a quarter of the products per batch.
    """

    def __init__(self) -> None:
        self.within: bool | None = None
        self.layers: tuple[int, ...] = ()
        self.widths: tuple[int, ...] = ()
        self.num_samples = 0
        self.device = torch.device("cpu")  # that of the first batch, once there is one
        self.eps = 0.0
        self.scales: list[torch.Tensor] = []  # (L,) per stack, fixed by the first batch
        self._shifts: list[torch.Tensor] = []  # (L*D,) per stack: the first batch's mean
        self._sums: list[torch.Tensor] = []  # (L*D,) per stack, of shifted scaled features
        self._own: list[torch.Tensor] = []  # across: (L, D, D) per stack; within: unused
        self._cross: torch.Tensor | None = None  # (L_A*D_A, L_B*D_B), or (L*D, L*D) within
        self._reference: list[torch.Tensor] = []  # (L, D) first sample of each stack
        self._varies: list[torch.Tensor] = []  # (L,) bool per stack

    def _start(self, stacks: list[torch.Tensor]) -> None:
        self.within = len(stacks) == 1
        self._shapes = tuple((stack.shape[0], stack.shape[2]) for stack in stacks)
        full = self._shapes * 2 if self.within else self._shapes
        self.layers = tuple(layers for layers, _ in full)
        self.widths = tuple(width for _, width in full)
        self.device = stacks[0].device
        self._reference = [stack[:, 0].clone() for stack in stacks]
        self._varies = [torch.zeros(stack.shape[0], dtype=torch.bool) for stack in stacks]
        # the first batch fixes the shifts and the per-layer powers of two (layer_scales)
        self.scales = [layer_scales(stack).to(torch.float64) for stack in stacks]
        self._shifts = [stack.mean(dim=1, dtype=torch.float64).flatten() for stack in stacks]
        self._sums = [torch.zeros_like(shift) for shift in self._shifts]
        options = {"dtype": torch.float64, "device": self.device}
        columns = [shift.numel() for shift in self._shifts]
        self._cross = torch.zeros(columns[0], columns[-1], **options)
        if not self.within:
            self._own = [torch.zeros(layers, width, width, **options)
                         for layers, width in self._shapes]

    def update(self, batch_features: torch.Tensor, other_features: torch.Tensor | None = None):
        check_inputs(batch_features, other_features, 1, "CovarianceAccumulator.update")
        stacks = [batch_features] if other_features is None else [batch_features, other_features]
        if self.within is None:
            self._start(stacks)
        elif tuple((stack.shape[0], stack.shape[2]) for stack in stacks) != self._shapes:
            shapes = tuple((stack.shape[0], stack.shape[2]) for stack in stacks)
            raise ConfigError(
                f"CovarianceAccumulator started with stacks of (layers, width) {self._shapes} "
                f"and now got {shapes}; every update must pass the same models' layers."
            )
        flats = []
        for index, stack in enumerate(stacks):
            self._varies[index] |= varying_layers(stack, self._reference[index]).cpu()
            scales = self.scales[index].to(stack.device).repeat_interleave(stack.shape[2])
            flat = stack.to(torch.float64).transpose(0, 1).reshape(stack.shape[1], -1)  # (B, LD)
            flat = (flat - self._shifts[index]) * scales
            self._sums[index] += flat.sum(0)
            flats.append(flat)
        self._cross += flats[0].T @ flats[-1]
        if not self.within:
            for flat, own, (layers, width) in zip(flats, self._own, self._shapes, strict=True):
                per_layer = flat.view(-1, layers, width).transpose(0, 1)  # (L, B, D)
                own += per_layer.transpose(1, 2) @ per_layer
        self.num_samples += batch_features.shape[1]
        self.eps = max(self.eps, _least_precise_eps(*stacks))

    def check(self, what: str) -> None:
        if self.num_samples < 2:
            raise ConfigError(
                f"{what}: the CovarianceAccumulator holds {self.num_samples} sample(s); a "
                f"covariance needs at least 2. Call update() with more data first."
            )
        names = ("",) if self.within else STACKS
        for varies, name in zip(self._varies, names, strict=True):
            raise_constant(~varies, what, name)

    def scale(self, stack: int, layer: int) -> float:
        """The power of two layer ``layer``'s features were multiplied by."""
        return float(self.scales[0 if self.within else stack][layer])

    def _centred(self, sums: torch.Tensor, mean_rows: torch.Tensor, mean_columns: torch.Tensor):
        """Sums of products of shifted features -> covariance: (S - n m m') / (n - 1)."""
        self.check("CovarianceAccumulator")
        n = self.num_samples
        return (sums - n * torch.outer(mean_rows, mean_columns)) / (n - 1)

    def _mean(self, stack: int, columns: slice) -> torch.Tensor:
        return self._sums[0 if self.within else stack][columns] / self.num_samples

    def covariance(self, stack: int, layer: int) -> torch.Tensor:
        dim = self.widths[stack]
        span = slice(layer * dim, (layer + 1) * dim)
        sums = self._cross[span, span] if self.within else self._own[stack][layer]
        return self._centred(sums, self._mean(stack, span), self._mean(stack, span))

    def cross_row(self, a: int, start: int = 0) -> torch.Tensor:
        da, db = self.widths
        rows, columns = slice(a * da, (a + 1) * da), slice(start * db, self.layers[1] * db)
        block = self._centred(self._cross[rows, columns], self._mean(0, rows),
                              self._mean(1, columns))  # (D_A, (L_B-start)*D_B)
        return block.reshape(da, self.layers[1] - start, db).permute(1, 0, 2)


Covariances = FeatureCovariance | CovarianceAccumulator
