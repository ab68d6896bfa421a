"""Centred kernel alignment (CKA) of all layer pairs (docs/method.md, "Similarity measures").

Every function takes ``features`` (L, N, D) and returns an (L, L) float64 matrix, or with a
second stack ``other`` (L_B, N, D_B) of another model on the same N inputs the (L, L_B) matrix
of every layer of A against every layer of B; widths and depths may differ. Options are
keyword-only. Layers are numbered 1..L in messages. No function modifies its inputs.

- ``linear_cka``: linear CKA (Kornblith et al. 2019), biased HSIC or unbiased HSIC
  (Song et al. 2012). ``rbf_cka``: RBF kernel, bandwidth from the median distance.
- ``MinibatchCKA`` / ``minibatch_cka``: Nguyen et al. 2021; each minibatch's unbiased HSIC,
  weighted by n(n-3) as in their reference code, summed over minibatches; memory independent of N.

All HSIC estimators are written in terms of three statistics of the Gram matrices K_a
(tr(K_a L_b), diagonals, row sums), so the same code serves linear kernels computed in feature
space (no N×N matrix), Gram matrices chunked over rows, and RBF Grams.

Precision: features are centred in float64 arithmetic and every statistic is summed in float64.
The one exception is the large products of ``linear_cka``'s feature route (N ≳ 0.4·L·D), which
run in float32 when an input is float32 or lower (as model features are): float64 there costs
1.5× the time for no information the float32 input holds. They run at full IEEE float32
precision whatever ``torch.set_float32_matmul_precision`` says (no TF32/bfloat16 shortcuts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

from aligned.analysis.feature_stacks import (
    MIN_SAMPLES_CKA,
    STACKS,
    centred_copy,
    check_inputs,
    check_result,
    full_float32_matmul,
    layer_list,
    layer_scales,
    product_dtype,
    raise_constant,
    raise_constant_stacks,
    sample_chunks,
    varying_layers,
)
from aligned.config import ConfigError

Bandwidth = Literal["median", "nonzero_median"]

__all__ = [
    "MIN_SAMPLES_CKA", "Bandwidth", "MinibatchCKA", "linear_cka", "minibatch_cka", "rbf_cka",
]


class _RowStats(NamedTuple):
    """Per-layer statistics of a stack's Gram matrices K_a: diag(K_a) and K_a 1, both (L, N)."""

    diag: torch.Tensor
    row_sums: torch.Tensor


def _hsic(
    cross: torch.Tensor, a: _RowStats, b: _RowStats, unbiased: bool, diagonal: bool = False
) -> torch.Tensor:
    """HSIC of every pair of Gram matrices (K_a of one stack, L_b of the other), (L_A, L_B).

    cross (L_A, L_B) = tr(K_a L_b). With ``diagonal=True`` a and b are the same stack and only
    the self-pairs are wanted: cross is (L,) = tr(K_a K_a) and the result (L,).
    Biased: tr(K H L H) / (n-1)^2. Unbiased (Song et al. 2012, eq. 5, with K~ = K - diag(K)):
    [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).
    """
    n = a.diag.shape[1]
    dot: Callable = (lambda u, v: (u * v).sum(-1)) if diagonal else (lambda u, v: u @ v.T)
    outer: Callable = torch.mul if diagonal else torch.outer
    if not unbiased:
        ta, tb = a.row_sums.sum(1), b.row_sums.sum(1)  # (L,) 1'K1
        centred = cross - 2 * dot(a.row_sums, b.row_sums) / n + outer(ta, tb) / n**2
        return centred / (n - 1) ** 2
    off_a, off_b = a.row_sums - a.diag, b.row_sums - b.diag  # (L, N) K~ 1
    trace = cross - dot(a.diag, b.diag)  # tr(K~ L~)
    middle = outer(off_a.sum(1), off_b.sum(1)) / ((n - 1) * (n - 2))
    right = 2 * dot(off_a, off_b) / (n - 2)
    return (trace + middle - right) / (n * (n - 3))


def _row_stats(x: torch.Tensor) -> _RowStats:
    """diag(K_a) and K_a 1 for K_a = X_a X_a' of every layer of centred x (L, N, D), float64;
    computed in x's precision, that of the products they enter the HSIC with."""
    column_sums = x.sum(1)[..., None]  # (L, D, 1): X' 1
    with full_float32_matmul():
        row_sums = (x @ column_sums).squeeze(-1)  # (L, N): K 1 = X (X' 1)
    diag = torch.linalg.vector_norm(x, dim=-1).square()  # (L, N), no (L, N, D) temporary
    return _RowStats(diag.to(torch.float64), row_sums.to(torch.float64))


def _gram_route(x: torch.Size, y: torch.Size, product_dtype: torch.dtype) -> bool:
    """True when N×N Gram matrices (float64) are cheaper than D_A×D_B cross-covariances.

    For all pairs tr(K_a L_b) = ||X_a' Y_b||_F^2 costs ~L_A L_B N D_A D_B in feature space and
    ~N^2 (L_A D_A + L_B D_B) through the Gram matrices. Within one stack that is N < 0.5 L D by
    the cost ratio; on CPU with both routes in float64 the measured crossover was N ≈ 0.4 L D,
    hence the 0.8. Float32 feature-space products run twice as fast: measured on 2 busy cores
    (L = 12, D = 384 and 768) the crossovers were N ≈ 0.28 L D within and N ≈ 1100 across,
    hence 0.45 then.
    """
    (la, n, da), (lb, _, db) = x, y
    factor = 0.8 if product_dtype == torch.float64 else 0.45
    return n * (la * da + lb * db) < factor * la * lb * da * db


def _linear_cross(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """tr(K_a L_b) for K_a = X_a X_a', L_b = Y_b Y_b' of centred x (L_A, N, D_A) and y
    (L_B, N, D_B), (L_A, L_B) float64; within x alone (y None) each pair is computed once.

    x and y must be samples-major views (from ``centred_copy``) for the feature route's flat reads,
    and float64 where ``_gram_route`` holds. Neither route holds more than one chunk of N×N Gram
    rows.
    """
    within = y is None
    y = x if within else y
    (la, n, da), (lb, _, db) = x.shape, y.shape
    cross = torch.zeros(la, lb, dtype=torch.float64, device=x.device)
    if _gram_route(x.shape, y.shape, x.dtype):  # chunked over rows: L × rows × N at a time
        for rows in sample_chunks(n, 8 * (la + (0 if within else lb)) * n):
            grams_x = (x[:, rows] @ x.transpose(1, 2)).flatten(1)  # (L_A, rows*N)
            grams_y = grams_x if within else (y[:, rows] @ y.transpose(1, 2)).flatten(1)
            cross += grams_x @ grams_y.T
        return cross
    # Feature route: D_A × D_B cross-covariances of layer a with every layer of y (within: with
    # layers a..L only). Samples-major (N, L*D), so each layer meets all layers in one large
    # GEMM, which BLAS runs ~15% faster than the same work as L batched D×N×D products.
    flat_x = x.transpose(0, 1).reshape(n, la * da)  # a view of centred_copy's storage
    flat_y = flat_x if within else y.transpose(0, 1).reshape(n, lb * db)
    with full_float32_matmul():
        for a in range(la):
            first = a if within else 0
            blocks = flat_x[:, a * da : (a + 1) * da].T @ flat_y[:, first * db :]  # (D_A, *)
            squares = blocks.view(da, lb - first, db).to(torch.float64).pow(2)
            cross[a, first:] = squares.sum((0, 2))
    if within:
        cross = torch.triu(cross) + torch.triu(cross, 1).T
    return cross


def _linear_self(x: torch.Tensor) -> torch.Tensor:
    """tr(K_a K_a) = ||X_a' X_a||_F^2 of every layer of centred x (L, N, D), (L,) float64."""
    num_layers, n, dim = x.shape
    out = torch.empty(num_layers, dtype=torch.float64, device=x.device)
    with full_float32_matmul():
        for a in range(num_layers):
            layer = x[a]  # (N, D)
            product = layer @ layer.T if n < dim else layer.T @ layer  # the smaller square
            out[a] = product.to(torch.float64).pow(2).sum()
    return out


def _gram_stats(grams: torch.Tensor) -> tuple[torch.Tensor, _RowStats]:
    """tr(K_a K_b) of explicit Gram matrices (L, N, N), and their row statistics."""
    flat = grams.flatten(1)  # (L, N*N)
    return flat @ flat.T, _RowStats(grams.diagonal(dim1=1, dim2=2), grams.sum(-1))


def _raise_degenerate(self_hsic: torch.Tensor, what: str, stack: str = "") -> None:
    degenerate = ~(self_hsic > 0)
    if degenerate.any():
        of = f" of {stack}" if stack else ""
        raise ConfigError(
            f"{what}: HSIC of layer(s) {layer_list(degenerate.cpu())} (1..L){of} with itself is "
            f"not positive, so CKA is undefined (near-constant features, or too few samples per "
            f"batch for the unbiased estimator). Use more samples or drop those layers."
        )


def _cka_from_hsic(hsic: torch.Tensor, what: str) -> torch.Tensor:
    """Within one stack: HSIC (L, L) -> CKA, normalised by its own diagonal."""
    self_hsic = hsic.diagonal()  # (L,)
    _raise_degenerate(self_hsic, what)
    cka = hsic / torch.sqrt(torch.outer(self_hsic, self_hsic))
    return check_result((cka + cka.T) / 2, what)


def _cross_cka(
    hsic: torch.Tensor, self_a: torch.Tensor, self_b: torch.Tensor, what: str
) -> torch.Tensor:
    """Across two stacks: HSIC (L_A, L_B) normalised by each layer's HSIC with itself."""
    _raise_degenerate(self_a, what, STACKS[0])
    _raise_degenerate(self_b, what, STACKS[1])
    return check_result(hsic / torch.sqrt(torch.outer(self_a, self_b)), what)


def _linear_hsic(
    features: torch.Tensor,
    other: torch.Tensor | None,
    unbiased: bool,
    dtype: torch.dtype,
    scales: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Linear-kernel HSIC of all pairs, (L_A, L_B), with the self-HSIC of each stack when
    ``other`` is given (within one stack the self-HSIC is the diagonal). ``dtype`` is that of
    the feature route's products; the Gram route always runs in float64. Each layer is scaled
    by ``scales`` (L,), by default its own power of two (``centred_copy``): CKA does not change,
    squares neither overflow nor underflow."""
    if _gram_route(features.shape, (other if other is not None else features).shape, dtype):
        dtype = torch.float64
    x = centred_copy(features, dtype, scales[0])
    stats_x = _row_stats(x)
    if other is None:
        return _hsic(_linear_cross(x), stats_x, stats_x, unbiased), None, None
    y = centred_copy(other, dtype, scales[1])
    stats_y = _row_stats(y)
    hsic = _hsic(_linear_cross(x, y), stats_x, stats_y, unbiased)
    self_x = _hsic(_linear_self(x), stats_x, stats_x, unbiased, diagonal=True)
    self_y = _hsic(_linear_self(y), stats_y, stats_y, unbiased, diagonal=True)
    return hsic, self_x, self_y


def linear_cka(
    features: torch.Tensor, other: torch.Tensor | None = None, *, unbiased: bool = False
) -> torch.Tensor:
    """Linear CKA of all layer pairs: (L, N, D) -> (L, L) float64, or with ``other``
    (L_B, N, D_B) of a second model on the same samples -> (L, L_B)."""
    check_inputs(features, other, MIN_SAMPLES_CKA, "linear_cka")
    raise_constant_stacks(features, other, "linear_cka")
    hsic, self_x, self_y = _linear_hsic(features, other, unbiased, product_dtype(features, other))
    if other is None:
        return _cka_from_hsic(hsic, "linear_cka")
    return _cross_cka(hsic, self_x, self_y, "linear_cka")


def _median(values: torch.Tensor) -> torch.Tensor:
    """np.median (mean of the two middle values), as in Kornblith et al.'s code."""
    flat = values.flatten()
    count = flat.numel()
    low = flat.kthvalue((count + 1) // 2).values
    high = flat.kthvalue(count // 2 + 1).values
    return (low + high) / 2


def _rbf_grams(
    features: torch.Tensor, sigma_scale: float, bandwidth: Bandwidth, stack: str
) -> torch.Tensor:
    """RBF Gram matrices (L, N, N) of every layer, bandwidth from that layer's median.

    Squared distances come from |x|^2 + |y|^2 - 2 x.y (as in Kornblith et al.'s ``gram_rbf``),
    so two identical samples are 0 only up to round-off of |x|^2; anything below that level
    counts as an identical pair, both for the zero-median check and for "nonzero_median".
    """
    grams, zero_median = [], []
    for layer in centred_copy(features, torch.float64):  # (N, D) each, scaled
        sq_norms = layer.pow(2).sum(-1)  # (N,)
        sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2 * layer @ layer.T).clamp_min(0)
        identical = 1e3 * torch.finfo(torch.float64).eps * sq_norms.max()  # round-off level
        distances = sq_dist if bandwidth == "median" else sq_dist[sq_dist > identical]
        median = _median(distances) if distances.numel() else torch.zeros((), dtype=torch.float64)
        zero_median.append(bool(median <= identical))
        grams.append(torch.exp(-sq_dist / (2 * sigma_scale**2 * median)))
    if any(zero_median):
        of = f" of {stack}" if stack else ""
        raise ConfigError(
            f"rbf_cka: in layer(s) {layer_list(torch.tensor(zero_median))} (1..L){of} at least "
            f"half of all sample pairs are identical (e.g. many all-zero ReLU vectors), so the "
            f"median squared distance, the RBF bandwidth, is 0. Pass bandwidth='nonzero_median' "
            f"(the median over distinct pairs only), or use linear_cka."
        )
    return torch.stack(grams)


def rbf_cka(
    features: torch.Tensor,
    other: torch.Tensor | None = None,
    *,
    sigma_scale: float = 1.0,
    unbiased: bool = False,
    bandwidth: Bandwidth = "median",
) -> torch.Tensor:
    """RBF-kernel CKA of all layer pairs: (L, N, D) -> (L, L) float64, or (L, L_B) with ``other``.

    As in Kornblith et al.'s ``gram_rbf``: k(x, y) = exp(-|x-y|^2 / (2 s^2 m)) with s =
    ``sigma_scale`` and m the median of all N×N squared distances of that layer (diagonal
    included), i.e. bandwidth ≈ sigma_scale × median distance. When at least half the pairs are
    identical that median is 0: an error, unless ``bandwidth="nonzero_median"`` takes m over the
    non-zero distances only. Holds the N×N Gram matrices of every layer (both stacks).
    """
    if bandwidth not in ("median", "nonzero_median"):
        raise ConfigError(f"rbf_cka bandwidth='{bandwidth}'; use 'median' or 'nonzero_median'.")
    if not sigma_scale > 0:
        raise ConfigError(f"rbf_cka sigma_scale={sigma_scale}; it must be positive (1 is usual).")
    check_inputs(features, other, MIN_SAMPLES_CKA, "rbf_cka")
    raise_constant_stacks(features, other, "rbf_cka")
    grams_x = _rbf_grams(features, sigma_scale, bandwidth, "" if other is None else STACKS[0])
    cross_x, stats_x = _gram_stats(grams_x)
    if other is None:
        return _cka_from_hsic(_hsic(cross_x, stats_x, stats_x, unbiased), "rbf_cka")
    grams_y = _rbf_grams(other, sigma_scale, bandwidth, STACKS[1])
    cross_y, stats_y = _gram_stats(grams_y)
    hsic = _hsic(grams_x.flatten(1) @ grams_y.flatten(1).T, stats_x, stats_y, unbiased)
    self_x = _hsic(cross_x.diagonal(), stats_x, stats_x, unbiased, diagonal=True)
    self_y = _hsic(cross_y.diagonal(), stats_y, stats_y, unbiased, diagonal=True)
    return _cross_cka(hsic, self_x, self_y, "rbf_cka")


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen et al. 2021) of all layer pairs.

    Each ``update(batch (L, B, D))`` adds the unbiased HSIC of every layer pair on that batch,
    weighted by B(B-3), to a float64 (L, L) sum; ``compute()`` returns HSIC(a, b) /
    sqrt(HSIC(a, a) HSIC(b, b)) of the sums. The weight is Nguyen et al.'s reference code
    (``efficient_CKA.py`` sums inner products of U-centred Gram matrices, i.e. B(B-3) × HSIC):
    a short last batch counts for what it holds instead of as much as a full one. Memory is
    O(L B^2) or O(L D^2) per batch, never N^2. Batches need B >= 4.

    Across two models: ``MinibatchCKA(L, other_layers=L_B)`` and ``update(batch, other_batch)``
    with both models' features of the same samples; ``compute()`` is then (L, L_B).
    """

    def __init__(self, num_layers: int, other_layers: int | None = None):
        self.num_layers = num_layers
        self.other_layers = other_layers
        self.hsic_sum = torch.zeros(num_layers, other_layers or num_layers, dtype=torch.float64)
        self.self_sums = (
            None if other_layers is None
            else (torch.zeros(num_layers, dtype=torch.float64),
                  torch.zeros(other_layers, dtype=torch.float64))
        )
        self.weight_sum = 0.0  # Σ B(B-3) over batches
        self.num_batches = 0
        self.num_samples = 0
        self._constant: list[torch.Tensor | None] = [None, None]  # (L,) per stack
        self._reference: list[torch.Tensor | None] = [None, None]  # (L, D) first sample
        # (L,) per stack, from the first batch and then fixed: a scale per layer leaves CKA as
        # it is only when every batch's HSIC carries the same one
        self._scales: list[torch.Tensor | None] = [None, None]

    def _observe(self, index: int, batch: torch.Tensor, expected: int, name: str) -> None:
        if batch.shape[0] != expected:
            raise ConfigError(
                f"MinibatchCKA was built for {expected} layers{name} but got a batch with "
                f"{batch.shape[0]}; every batch must stack the same layers."
            )
        if self._reference[index] is None:
            self._reference[index] = batch[:, 0].clone()
            self._constant[index] = torch.ones(batch.shape[0], dtype=torch.bool)
            self._scales[index] = layer_scales(batch)
        self._constant[index] &= ~varying_layers(batch, self._reference[index]).cpu()

    def update(self, batch_features: torch.Tensor, other_features: torch.Tensor | None = None):
        if (other_features is None) != (self.other_layers is None):
            raise ConfigError(
                "MinibatchCKA: pass a second batch (update(batch, other_batch)) exactly when it "
                "was built for two models (MinibatchCKA(num_layers, other_layers=...))."
            )
        check_inputs(batch_features, other_features, MIN_SAMPLES_CKA, "MinibatchCKA.update")
        n = batch_features.shape[1]
        weight = n * (n - 3)
        if other_features is None:
            self._observe(0, batch_features, self.num_layers, "")
            hsic, _, _ = _linear_hsic(batch_features, None, True, torch.float64,
                                      (self._scales[0], None))
        else:
            self._observe(0, batch_features, self.num_layers, " of model A")
            self._observe(1, other_features, self.other_layers, " of model B")
            hsic, self_x, self_y = _linear_hsic(batch_features, other_features, True,
                                                torch.float64, tuple(self._scales))
            self.self_sums[0].add_(weight * self_x.cpu())
            self.self_sums[1].add_(weight * self_y.cpu())
        self.hsic_sum += weight * hsic.cpu()
        self.weight_sum += weight
        self.num_batches += 1
        self.num_samples += n

    def compute(self) -> torch.Tensor:
        if self.num_batches == 0:
            raise ConfigError("MinibatchCKA.compute() called before any update().")
        if self.self_sums is None:
            raise_constant(self._constant[0], "MinibatchCKA")
            return _cka_from_hsic(self.hsic_sum / self.weight_sum, "MinibatchCKA")
        for index, name in enumerate(STACKS):
            raise_constant(self._constant[index], "MinibatchCKA", name)
        self_x, self_y = (sums / self.weight_sum for sums in self.self_sums)
        return _cross_cka(self.hsic_sum / self.weight_sum, self_x, self_y, "MinibatchCKA")


def minibatch_cka(
    features: torch.Tensor, other: torch.Tensor | None = None, *, batch_size: int = 256
) -> torch.Tensor:
    """Minibatch CKA over consecutive batches of ``features`` (L, N, D) -> (L, L) float64, or
    of both stacks' same samples with ``other`` (L_B, N, D_B) -> (L, L_B).

    N is cut into N // batch_size nearly equal batches (each >= batch_size, none left short).
    """
    check_inputs(features, other, MIN_SAMPLES_CKA, "minibatch_cka")
    if batch_size < MIN_SAMPLES_CKA:
        raise ConfigError(
            f"minibatch_cka batch_size={batch_size}; the unbiased HSIC needs at least "
            f"{MIN_SAMPLES_CKA} samples per batch (a few hundred is usual)."
        )
    accumulator = MinibatchCKA(features.shape[0], None if other is None else other.shape[0])
    num_batches = max(1, features.shape[1] // batch_size)
    batches = torch.tensor_split(features, num_batches, dim=1)
    others = [None] * num_batches if other is None else torch.tensor_split(other, num_batches, 1)
    for batch, other_batch in zip(batches, others, strict=True):
        accumulator.update(batch, other_batch)
    return accumulator.compute()
