"""What every similarity measure does with per-layer feature stacks before measuring: the
input checks, the final check of its result, chunking over samples and the precision of the
large products.

A stack is (L, N, D): L layers, N samples, D width. Two stacks compared with each other (model A
and model B on the same inputs) must hold the same N samples in the same order; their L and D may
differ. Layers are numbered 1..L in messages, and ``stack`` names which of two stacks is meant.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from aligned.config import ConfigError

MIN_SAMPLES_CKA = 4  # the unbiased HSIC estimator divides by n(n-3) and (n-2)
CHUNK_BYTES = 256 * 2**20  # float64 working memory per chunk of samples or Gram rows
STACKS = ("features (model A)", "other (model B)")  # how messages name two stacks


def sample_chunks(num_samples: int, row_bytes: int) -> Iterator[slice]:
    """Slices over samples so one chunk of ``row_bytes`` per sample stays within CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, num_samples, step):
        yield slice(start, min(start + step, num_samples))


@contextmanager
def full_float32_matmul() -> Iterator[None]:
    """IEEE float32 matmuls inside, whatever precision the user chose for training."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def product_dtype(*stacks: torch.Tensor | None) -> torch.dtype:
    """float64 products for float64 features; float32 when any is float32 or lower."""
    dtypes = {stack.dtype for stack in stacks if stack is not None}
    return torch.float64 if dtypes == {torch.float64} else torch.float32


def layer_scales(features: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """(L,) powers of two that bring each layer's largest centred |value| into [0.5, 1), or 1
    for an all-equal layer; ``mean`` (L, D) is the layer means if already computed.

    Multiplying by a power of two is exact, so every measure that a per-layer scale does not
    change (CKA, CCA, COS, angular Procrustes, k-NN) sees the same numbers, while squares of
    features near 1e±200 neither overflow nor underflow float64 (nor 1e±19 float32 products).
    """
    mean = features.mean(dim=1, dtype=torch.float64) if mean is None else mean  # (L, D)
    highest = (features.amax(dim=1).to(mean.dtype) - mean).abs()
    lowest = (features.amin(dim=1).to(mean.dtype) - mean).abs()
    return power_of_two_scale(torch.maximum(highest, lowest).amax(dim=-1))  # (L,)


def power_of_two_scale(peak: torch.Tensor) -> torch.Tensor:
    """2^-e with peak = m 2^e, m in [0.5, 1): brings ``peak`` into [0.5, 1); 1 where peak is 0
    or not finite (nothing to scale, or an error reported elsewhere)."""
    _, exponent = torch.frexp(peak)
    scale = torch.ldexp(torch.ones_like(peak), -exponent)
    return torch.where((peak > 0) & torch.isfinite(peak), scale, torch.ones_like(peak))


def centred_copy(
    features: torch.Tensor, dtype: torch.dtype, scales: torch.Tensor | None = None
) -> torch.Tensor:
    """A new (L, N, D) tensor of ``dtype``: each layer minus its mean over samples, times its
    ``scales`` entry (default ``layer_scales(features)``).

    A float64 result is centred in float64. A float32 one (the products of float32 features) is
    centred in float32, a chunk at a time: the float32 mean is off by about one rounding of the
    mean, a shift every HSIC, covariance and distance here removes exactly in its own formula,
    and x - mean is exact wherever x is close to the mean (Sterbenz), so nothing the input holds
    is lost, and no float64 copy of the features is made. Stored samples-major, (N, L, D) in
    memory, so all layers read as one (N, L*D) matrix without copying
    (``.transpose(0, 1).reshape(N, -1)`` is a view). Always a copy: callers' tensors stay as
    they were (an in-place centring once changed a float64 caller's features).
    """
    num_layers, num_samples, dim = features.shape
    work = torch.float64 if dtype == torch.float64 else torch.float32
    mean = features.mean(dim=1, dtype=work)  # (L, D)
    scales = layer_scales(features, mean) if scales is None else scales
    scales = scales.to(device=features.device, dtype=work)[:, None, None]  # (L, 1, 1)
    mean = mean[:, None]  # (L, 1, D)
    out = torch.empty(num_samples, num_layers, dim, dtype=dtype, device=features.device)
    item = torch.finfo(work).bits // 8
    for rows in sample_chunks(num_samples, item * num_layers * dim):
        out[rows] = ((features[:, rows].to(work) - mean) * scales).transpose(0, 1)
    return out.transpose(0, 1)


def layer_list(mask: torch.Tensor) -> list[int]:
    """1-based indices of the True entries of an (L,) mask."""
    return (torch.nonzero(mask).flatten() + 1).tolist()


def _of(stack: str) -> str:
    return f" of {stack}" if stack else ""


def check_features(
    features: torch.Tensor, min_samples: int, what: str, stack: str = ""
) -> None:
    """One clear error for a stack that is not (L, N, D), too short, or holds NaN/inf."""
    if not isinstance(features, torch.Tensor) or features.ndim != 3:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise ConfigError(
            f"{what} expects per-layer features{_of(stack)} of shape (L, N, D) = (layers, "
            f"samples, width), got {shape}. Stack the layers first (torch.stack(per_layer)); for "
            f"token features (L, N, T, D) choose a reduction with reduce_tokens(hidden, 'cls' | "
            f"'mean' | 'all')."
        )
    num_samples = features.shape[1]
    if num_samples < min_samples:
        why = (
            " (the unbiased HSIC estimator needs n >= 4, and fewer samples say nothing about "
            "similarity)"
            if min_samples == MIN_SAMPLES_CKA
            else ""
        )
        raise ConfigError(
            f"{what} got {num_samples} samples{_of(stack)}; it needs at least {min_samples}{why}. "
            f"Use more samples or a larger batch."
        )
    if features.is_floating_point():
        finite = torch.isfinite(features).flatten(1).all(1)  # (L,)
    else:
        finite = torch.ones(features.shape[0], dtype=torch.bool)
    if not finite.all():
        raise ConfigError(
            f"{what}: features of layer(s) {layer_list(~finite.cpu())} (1..L){_of(stack)} contain "
            f"NaN or inf. Check the model outputs (overflow in float16? a diverged checkpoint?) "
            f"before measuring similarity."
        )


def check_pair(
    features: torch.Tensor, other: torch.Tensor, min_samples: int, what: str
) -> None:
    """Both stacks valid, on one device, with the same samples (the same N)."""
    check_features(features, min_samples, what, STACKS[0])
    check_features(other, min_samples, what, STACKS[1])
    if features.shape[1] != other.shape[1]:
        raise ConfigError(
            f"{what} compares two stacks sample by sample, but model A has N = "
            f"{features.shape[1]} samples and model B N = {other.shape[1]}. Run both models on "
            f"the same inputs, in the same order."
        )
    if features.device != other.device:
        raise ConfigError(
            f"{what}: model A's features are on {features.device} and model B's on "
            f"{other.device}; move both to one device first (.to(device))."
        )


def check_inputs(
    features: torch.Tensor, other: torch.Tensor | None, min_samples: int, what: str
) -> None:
    """``check_features`` for one stack, ``check_pair`` for two."""
    if other is None:
        check_features(features, min_samples, what)
    else:
        check_pair(features, other, min_samples, what)


def check_equal_widths(features: torch.Tensor, other: torch.Tensor, what: str) -> None:
    if features.shape[2] != other.shape[2]:
        raise ConfigError(
            f"{what} compares each sample's two vectors directly, so it needs equal widths; "
            f"model A has D = {features.shape[2]} and model B D = {other.shape[2]}. Use a measure "
            f"that compares any widths (cka, rbf_cka, cca, svcca, pwcca, procrustes, mutual_knn)."
        )


def varying_layers(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(L,) bool: does any sample of the layer differ from the reference sample (L, D)?"""
    return (features != reference[:, None]).flatten(1).any(1)


def constant_layers(features: torch.Tensor) -> torch.Tensor:
    """(L,) bool on the CPU: every sample of the layer is the same vector (each feature's
    largest value is its smallest; two reductions, no (L, N, D) comparison)."""
    return (features.amax(dim=1) == features.amin(dim=1)).all(dim=-1).cpu()


def raise_constant(constant: torch.Tensor, what: str, stack: str = "") -> None:
    if constant.any():
        raise ConfigError(
            f"{what}: layer(s) {layer_list(constant)} (1..L){_of(stack)} have the same features "
            f"for every sample (zero variance), so their similarity to anything is undefined. "
            f"Drop those layers, or check that the features are read where the sample actually "
            f"varies (e.g. not a padding token or a frozen constant)."
        )


def raise_constant_stacks(features: torch.Tensor, other: torch.Tensor | None, what: str) -> None:
    """``raise_constant`` for each of one or two stacks."""
    if other is None:
        raise_constant(constant_layers(features), what)
        return
    for stack, name in zip((features, other), STACKS, strict=True):
        raise_constant(constant_layers(stack), what, name)


def check_result(matrix: torch.Tensor, what: str) -> torch.Tensor:
    """The last guard: a similarity matrix with a NaN or inf is an error, never a result."""
    bad = ~torch.isfinite(matrix)
    if bad.any():
        pairs = (torch.nonzero(bad.cpu())[:5] + 1).tolist()
        raise ConfigError(
            f"{what} produced a non-finite value for layer pair(s) {pairs} (1-based; first 5). "
            f"The features may be too close to degenerate for this measure (near-constant layers, "
            f"extreme magnitudes); try float64 features, or another measure."
        )
    return matrix
