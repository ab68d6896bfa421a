"""Mutual k-nearest-neighbour alignment of all layer pairs (Huh et al. 2024, "The Platonic
Representation Hypothesis"; platonic-rep's ``AlignmentMetrics.mutual_knn``).

Each layer's vectors are scaled to unit length (platonic-rep's ``normalize=True``) and each
sample's k nearest other samples are found by inner product (cosine), the sample itself
excluded. The alignment of layers a and b is the mean over samples i of |N_a(i) ∩ N_b(i)| / k:
1 when both layers give every sample the same neighbours, about k / (N - 1) for unrelated ones.
Symmetric, 1 on the diagonal, any widths.

Cost and memory: N² D per layer for the neighbours, computed CHUNK_BYTES of similarity rows at
a time, so memory is O(N k) per layer plus one chunk, never N×N; N k² per pair. It needs every
sample of a layer at once (a neighbour can be any sample), so it does not stream over batches.
Ties between equally near neighbours (duplicate samples, all-zero vectors) are broken by
``torch.topk``, i.e. arbitrarily.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aligned.analysis.feature_stacks import (
    check_inputs,
    check_result,
    full_float32_matmul,
    power_of_two_scale,
    product_dtype,
    raise_constant_stacks,
    sample_chunks,
)
from aligned.config import ConfigError

DEFAULT_K = 10  # platonic-rep's --topk default


def nearest_neighbours(layer: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (N, k) of each sample's k most cosine-similar other samples in ``layer`` (N, D)."""
    num_samples = layer.shape[0]
    # a power of two (exact, no cosine changes) keeps norms of features near 1e±200 finite
    unit = F.normalize(layer * power_of_two_scale(layer.abs().amax()), dim=-1)  # (N, D)
    neighbours = torch.empty(num_samples, k, dtype=torch.long, device=layer.device)
    with full_float32_matmul():
        for rows in sample_chunks(num_samples, 8 * num_samples):
            similarity = unit[rows] @ unit.T  # (rows, N)
            own = torch.arange(rows.start, rows.stop, device=layer.device)
            similarity[own - rows.start, own] = -float("inf")  # never one's own neighbour
            neighbours[rows] = similarity.topk(k, dim=1).indices
    return neighbours


def _overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over samples of |N_a(i) ∩ N_b(i)| / k for neighbour lists (N, k) without repeats."""
    shared = (a[:, :, None] == b[:, None, :]).any(-1).sum(-1)  # (N,)
    return shared.to(torch.float64).mean() / a.shape[1]


def mutual_knn(
    features: torch.Tensor, other: torch.Tensor | None = None, *, k: int = DEFAULT_K
) -> torch.Tensor:
    """Mutual k-NN alignment of all layer pairs: (L, N, D) -> (L, L) float64 in [0, 1], or with
    ``other`` (L_B, N, D_B) of a second model on the same samples -> (L, L_B)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"mutual_knn k={k}; it is a number of neighbours, a positive int "
                          f"(Huh et al. use 10).")
    check_inputs(features, other, k + 1, "mutual_knn")  # k neighbours besides the sample
    raise_constant_stacks(features, other, "mutual_knn")  # its neighbours would be all ties

    def neighbour_lists(stack: torch.Tensor) -> list[torch.Tensor]:
        dtype = product_dtype(stack)
        return [nearest_neighbours(layer.to(dtype), k) for layer in stack]

    lists_a = neighbour_lists(features)
    lists_b = lists_a if other is None else neighbour_lists(other)
    out = torch.empty(len(lists_a), len(lists_b), dtype=torch.float64, device=features.device)
    for a, neighbours_a in enumerate(lists_a):
        for b, neighbours_b in enumerate(lists_b):
            if other is None and b < a:
                out[a, b] = out[b, a]
                continue
            out[a, b] = _overlap(neighbours_a, neighbours_b)
    return check_result(out, "mutual_knn")
