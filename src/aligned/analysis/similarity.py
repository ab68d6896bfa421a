"""Layer-by-layer similarity of a stack of per-layer features (METHOD.md §1).

Every function takes ``features`` of shape (L, N, D): L layers, N samples, D width, and returns
an (L, L) float64 matrix over all layer pairs at once. Layers are numbered 1..L in messages.

- ``cos_similarity``: sample-wise cosine (COS). Default centring subtracts each layer's mean over
  samples; ``"features"`` subtracts each vector's own mean (the authors' variant); ``"none"``.
- ``linear_cka``: linear CKA (Kornblith et al. 2019), biased HSIC or unbiased HSIC
  (Song et al. 2012). ``rbf_cka``: RBF kernel, bandwidth from the median distance.
- ``MinibatchCKA`` / ``minibatch_cka``: Nguyen et al. 2021; unbiased HSIC per minibatch summed
  over minibatches, memory independent of N.
- ``reduce_tokens``: the explicit choice of one vector per sample (CLS, mean, or every token).

Streaming COS needs each layer's mean over *all* samples before it can normalise a single
vector, and the normalisation is not linear, so one pass cannot be exact. ``CosAccumulator``
therefore takes the means up front (``mean=``); ``layer_means`` is the cheap first pass.

All HSIC estimators are written in terms of three statistics of the Gram matrices K_a
(tr(K_a K_b), diagonals, row sums), so the same code serves linear kernels computed in feature
space (no N×N matrix), Gram matrices chunked over rows, and RBF Grams.

Precision: features are centred in float64 and every statistic is summed in float64. The one
exception is the large products of ``linear_cka``'s feature route (N ≳ 0.4·L·D), which run in the
input's own precision when that is float32 (as model features are): float64 there costs 1.5×
the time for no information the float32 input holds. They run at full IEEE float32 precision
whatever ``torch.set_float32_matmul_precision`` says (no TF32/bfloat16 shortcuts).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F

from aligned.config import ConfigError

Centering = Literal["samples", "features", "none"]
TokenMode = Literal["cls", "mean", "all"]

MIN_SAMPLES_CKA = 4  # the unbiased HSIC estimator divides by n(n-3) and (n-2)
CHUNK_BYTES = 256 * 2**20  # float64 working memory per chunk of samples or Gram rows


# --------------------------------------------------------------------------- input checks


def _check_features(features: torch.Tensor, min_samples: int, what: str) -> None:
    if not isinstance(features, torch.Tensor) or features.ndim != 3:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise ConfigError(
            f"{what} expects per-layer features of shape (L, N, D) = (layers, samples, width), "
            f"got {shape}. Stack the layers first (torch.stack(per_layer)); for token features "
            f"(L, N, T, D) choose a reduction with reduce_tokens(hidden, 'cls' | 'mean' | 'all')."
        )
    num_samples = features.shape[1]
    if num_samples < min_samples:
        why = (
            " (the unbiased HSIC estimator needs n >= 4, and fewer samples say nothing about "
            "similarity)"
            if min_samples >= MIN_SAMPLES_CKA
            else ""
        )
        raise ConfigError(
            f"{what} got {num_samples} samples; it needs at least {min_samples}{why}. "
            f"Use more samples or a larger batch."
        )
    finite = torch.isfinite(features).flatten(1).all(1)  # (L,)
    if not finite.all():
        layers = _layer_list(~finite)
        raise ConfigError(
            f"{what}: features of layer(s) {layers} (1..L) contain NaN or inf. Check the model "
            f"outputs (overflow in float16? a diverged checkpoint?) before measuring similarity."
        )


def _layer_list(mask: torch.Tensor) -> list[int]:
    return (torch.nonzero(mask).flatten() + 1).tolist()


def _varying_layers(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(L,) bool: does any sample of the layer differ from the reference sample (L, D)?"""
    return (features != reference[:, None]).flatten(1).any(1)


def _raise_constant(constant: torch.Tensor, what: str) -> None:
    if constant.any():
        raise ConfigError(
            f"{what}: layer(s) {_layer_list(constant)} (1..L) have the same features for every "
            f"sample (zero variance), so their similarity to anything is undefined. Drop those "
            f"layers, or check that the features are read where the sample actually varies "
            f"(e.g. not a padding token or a frozen constant)."
        )


def _sample_chunks(features: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Split (L, N, D) over samples so one float64 chunk stays within CHUNK_BYTES."""
    num_layers, num_samples, dim = features.shape
    per_chunk = max(1, CHUNK_BYTES // (8 * num_layers * dim))
    return torch.split(features, per_chunk, dim=1)


# --------------------------------------------------------------------------- COS


def layer_means(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Each layer's mean over all samples, (L, D) float64, from minibatches (L, B, D).

    The first of the two passes that streaming COS with ``centering="samples"`` needs.
    """
    total, count = None, 0
    for batch in batches:
        _check_features(batch, 1, "layer_means")
        batch_sum = batch.sum(dim=1, dtype=torch.float64)  # (L, D)
        total = batch_sum if total is None else total + batch_sum
        count += batch.shape[1]
    if total is None:
        raise ConfigError("layer_means got no batches.")
    return total / count


class CosAccumulator:
    """Sample-wise cosine similarity accumulated over minibatches (L, B, D).

    COS(l, l') = mean over samples i of cos(h~_i^l, h~_i^l'). With ``centering="samples"`` the
    per-layer mean over all samples must be given as ``mean`` (L, D): compute it with
    ``layer_means`` in a first pass, or ``features.mean(1)`` when everything fits in memory.
    A vector that is zero after centring counts as cosine 0 with everything.
    """

    def __init__(self, centering: Centering = "samples", mean: torch.Tensor | None = None):
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
        self.mean = None if mean is None else mean.to(torch.float64)  # (L, D)
        self.cos_sum: torch.Tensor | None = None  # (L, L) float64
        self.num_samples = 0
        self._reference: torch.Tensor | None = None  # (L, D) first sample, to spot constants
        self._varies: torch.Tensor | None = None  # (L,) bool

    def update(self, batch_features: torch.Tensor) -> None:
        _check_features(batch_features, 1, "CosAccumulator.update")
        layers_and_width = (batch_features.shape[0], batch_features.shape[2])
        if self.mean is not None and tuple(self.mean.shape) != layers_and_width:
            raise ConfigError(
                f"CosAccumulator mean has shape {tuple(self.mean.shape)} but the batch needs "
                f"(L, D) = {layers_and_width}: one mean vector per layer."
            )
        if self._reference is None:
            self._reference = batch_features[:, 0].clone()
            self._varies = torch.zeros(batch_features.shape[0], dtype=torch.bool)
        self._varies |= _varying_layers(batch_features, self._reference).cpu()
        for chunk in _sample_chunks(batch_features):
            x = chunk.to(torch.float64)  # (L, B, D)
            if self.centering == "samples":
                x = x - self.mean.to(x.device)[:, None]
            elif self.centering == "features":
                x = x - x.mean(dim=-1, keepdim=True)
            unit = F.normalize(x, dim=-1)  # (L, B, D); zero vectors stay zero
            flat = unit.flatten(1)  # (L, B*D): the sum over samples and width is one matmul
            batch_sum = (flat @ flat.T).cpu()  # (L, L)
            self.cos_sum = batch_sum if self.cos_sum is None else self.cos_sum + batch_sum
            self.num_samples += x.shape[1]

    def compute(self) -> torch.Tensor:
        if self.cos_sum is None:
            raise ConfigError("CosAccumulator.compute() called before any update().")
        if self.centering == "samples":
            _raise_constant(~self._varies, "COS")
        cos = self.cos_sum / self.num_samples  # (L, L)
        empty = cos.diagonal() == 0
        if empty.any():
            raise ConfigError(
                f"COS: every vector of layer(s) {_layer_list(empty)} (1..L) is zero after "
                f"centering='{self.centering}', so the cosine is undefined; try another centering "
                f"or check the features."
            )
        return (cos + cos.T) / 2


def sample_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of each sample's two vectors, (..., D) x (..., D) -> (...) float64, uncentred (a
    single sample cannot be centred over samples); a zero vector gives 0, as in COS."""
    # eps as F.normalize's, which COS uses: norms below it are clamped, exact zeros give 0.
    return F.cosine_similarity(a.to(torch.float64), b.to(torch.float64), dim=-1, eps=1e-12)


def cos_similarity(features: torch.Tensor, centering: Centering = "samples") -> torch.Tensor:
    """Sample-wise cosine similarity of all layer pairs: (L, N, D) -> (L, L) float64."""
    _check_features(features, 2 if centering == "samples" else 1, "cos_similarity")
    mean = features.mean(dim=1, dtype=torch.float64) if centering == "samples" else None
    accumulator = CosAccumulator(centering, mean=mean)
    accumulator.update(features)
    return accumulator.compute()


# --------------------------------------------------------------------------- HSIC and CKA


def _hsic(
    cross: torch.Tensor, diag: torch.Tensor, row_sums: torch.Tensor, unbiased: bool
) -> torch.Tensor:
    """HSIC of every pair of Gram matrices from their statistics, (L, L) float64.

    cross (L, L) = tr(K_a K_b); diag (L, N) = diag(K_a); row_sums (L, N) = K_a 1.
    Biased: tr(K H L H) / (n-1)^2. Unbiased (Song et al. 2012, eq. 5, with K~ = K - diag(K)):
    [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).
    """
    n = diag.shape[1]
    if not unbiased:
        totals = row_sums.sum(1)  # (L,) 1'K1
        centred = cross - 2 * (row_sums @ row_sums.T) / n + torch.outer(totals, totals) / n**2
        return centred / (n - 1) ** 2
    off_rows = row_sums - diag  # (L, N) K~ 1
    off_totals = off_rows.sum(1)  # (L,) 1'K~1
    trace = cross - diag @ diag.T  # tr(K~ L~)
    middle = torch.outer(off_totals, off_totals) / ((n - 1) * (n - 2))
    right = 2 * (off_rows @ off_rows.T) / (n - 2)
    return (trace + middle - right) / (n * (n - 3))


@contextmanager
def _full_float32_matmul() -> Iterator[None]:
    """IEEE float32 matmuls inside, whatever precision the user chose for training."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _product_dtype(features: torch.Tensor) -> torch.dtype:
    """float64 products for float64 features; float32 for float32 and lower precisions."""
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def _linear_gram_stats(
    x: torch.Tensor, product_dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Statistics of K_a = X_a X_a' for all layers of x (L, N, D) float64, never holding L N×N.

    tr(K_a K_b) = ||X_a' X_b||_F^2 costs ~L^2 N D^2 / 2 for all pairs in feature space and
    ~L N^2 D through the Gram matrices; the Gram route wins below N ≈ 0.4 L D (measured on CPU,
    float64; the cost ratio alone would say 0.5 L D).
    """
    num_layers, n, dim = x.shape
    diag = torch.linalg.vector_norm(x, dim=-1).square()  # (L, N)
    row_sums = (x @ x.sum(1)[..., None]).squeeze(-1)  # (L, N): K 1 = X (X' 1)
    cross = torch.zeros(num_layers, num_layers, dtype=torch.float64, device=x.device)
    if n < 0.4 * num_layers * dim:  # Gram route, chunked over rows: L × rows × N at a time
        rows_per_chunk = max(1, CHUNK_BYTES // (8 * num_layers * n))
        for rows in torch.split(torch.arange(n, device=x.device), rows_per_chunk):
            grams = x[:, rows] @ x.transpose(1, 2)  # (L, rows, N)
            flat = grams.flatten(1)  # (L, rows*N)
            cross += flat @ flat.T
    else:  # feature route: D×D cross-covariances of layer a with layers a..L
        # Samples-major (N, L*D), so each layer meets all later layers in one large GEMM, which
        # BLAS runs ~15% faster than the same work as L-a batched D×N×D products.
        flat = x.transpose(0, 1).reshape(n, num_layers * dim)  # a view for _centred_float64's x
        flat = flat.to(product_dtype)
        with _full_float32_matmul():
            for a in range(num_layers):
                blocks = flat[:, a * dim : (a + 1) * dim].T @ flat[:, a * dim :]  # (D, (L-a)*D)
                squares = blocks.view(dim, num_layers - a, dim).to(torch.float64).pow(2)
                cross[a, a:] = squares.sum((0, 2))
        cross = torch.triu(cross) + torch.triu(cross, 1).T
    return cross, diag, row_sums


def _gram_stats(grams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Statistics of explicit Gram matrices (L, N, N)."""
    flat = grams.flatten(1)  # (L, N*N)
    return flat @ flat.T, grams.diagonal(dim1=1, dim2=2), grams.sum(-1)


def _cka_from_hsic(hsic: torch.Tensor, what: str) -> torch.Tensor:
    self_hsic = hsic.diagonal()  # (L,)
    degenerate = self_hsic <= 0
    if degenerate.any():
        raise ConfigError(
            f"{what}: HSIC of layer(s) {_layer_list(degenerate)} (1..L) with itself is not "
            f"positive, so CKA is undefined (near-constant features, or too few samples per "
            f"batch for the unbiased estimator). Use more samples or drop those layers."
        )
    cka = hsic / torch.sqrt(torch.outer(self_hsic, self_hsic))
    return (cka + cka.T) / 2


def _centred_float64(features: torch.Tensor) -> torch.Tensor:
    """Float64 copy centred over samples: HSIC is shift-invariant, centring avoids cancellation."""
    # Stored samples-major, (N, L, D) in memory, so the feature route of the linear statistics
    # reads all layers as one (N, L*D) matrix without copying; returned as an (L, N, D) view.
    x = features.transpose(0, 1).to(torch.float64, memory_format=torch.contiguous_format)
    x -= x.mean(dim=0, keepdim=True)
    return x.transpose(0, 1)


def linear_cka(features: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Linear CKA of all layer pairs: (L, N, D) -> (L, L) float64."""
    _check_features(features, MIN_SAMPLES_CKA, "linear_cka")
    _raise_constant(~_varying_layers(features, features[:, 0]), "linear_cka")
    stats = _linear_gram_stats(_centred_float64(features), _product_dtype(features))
    return _cka_from_hsic(_hsic(*stats, unbiased=unbiased), "linear_cka")


def _median(values: torch.Tensor) -> torch.Tensor:
    """np.median (mean of the two middle values), as in Kornblith et al.'s code."""
    flat = values.flatten()
    count = flat.numel()
    low = flat.kthvalue((count + 1) // 2).values
    high = flat.kthvalue(count // 2 + 1).values
    return (low + high) / 2


def rbf_cka(
    features: torch.Tensor, sigma_scale: float = 1.0, unbiased: bool = False
) -> torch.Tensor:
    """RBF-kernel CKA of all layer pairs: (L, N, D) -> (L, L) float64.

    As in Kornblith et al.'s ``gram_rbf``: k(x, y) = exp(-|x-y|^2 / (2 s^2 m)) with s =
    ``sigma_scale`` and m the median of all N×N squared distances of that layer (diagonal
    included), i.e. bandwidth ≈ sigma_scale × median distance. Holds the L N×N Gram matrices.
    """
    _check_features(features, MIN_SAMPLES_CKA, "rbf_cka")
    _raise_constant(~_varying_layers(features, features[:, 0]), "rbf_cka")
    x = _centred_float64(features)  # (L, N, D)
    grams = []
    for layer in x:
        sq_dist = torch.cdist(layer, layer).pow(2)  # (N, N)
        grams.append(torch.exp(-sq_dist / (2 * sigma_scale**2 * _median(sq_dist))))
    hsic = _hsic(*_gram_stats(torch.stack(grams)), unbiased=unbiased)  # grams: (L, N, N)
    return _cka_from_hsic(hsic, "rbf_cka")


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen et al. 2021) of all layer pairs.

    Each ``update(batch (L, B, D))`` adds the unbiased HSIC of every layer pair on that batch to
    a float64 (L, L) sum; ``compute()`` returns HSIC(a, b) / sqrt(HSIC(a, a) HSIC(b, b)). Memory
    is O(L B^2) or O(L D^2) per batch, never N^2. Batches need B >= 4.
    """

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.hsic_sum = torch.zeros(num_layers, num_layers, dtype=torch.float64)
        self.num_batches = 0
        self._reference: torch.Tensor | None = None  # (L, D) first sample, to spot constants
        self._varies = torch.zeros(num_layers, dtype=torch.bool)

    def update(self, batch_features: torch.Tensor) -> None:
        _check_features(batch_features, MIN_SAMPLES_CKA, "MinibatchCKA.update")
        if batch_features.shape[0] != self.num_layers:
            raise ConfigError(
                f"MinibatchCKA was built for {self.num_layers} layers but got a batch with "
                f"{batch_features.shape[0]}; every batch must stack the same layers."
            )
        if self._reference is None:
            self._reference = batch_features[:, 0].clone()
        self._varies |= _varying_layers(batch_features, self._reference).cpu()
        stats = _linear_gram_stats(_centred_float64(batch_features))
        self.hsic_sum += _hsic(*stats, unbiased=True).cpu()
        self.num_batches += 1

    def compute(self) -> torch.Tensor:
        if self.num_batches == 0:
            raise ConfigError("MinibatchCKA.compute() called before any update().")
        _raise_constant(~self._varies, "MinibatchCKA")
        return _cka_from_hsic(self.hsic_sum / self.num_batches, "MinibatchCKA")


def minibatch_cka(features: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Minibatch CKA over consecutive batches of ``features`` (L, N, D) -> (L, L) float64.

    N is cut into N // batch_size nearly equal batches (each >= batch_size, none left short).
    """
    _check_features(features, MIN_SAMPLES_CKA, "minibatch_cka")
    if batch_size < MIN_SAMPLES_CKA:
        raise ConfigError(
            f"minibatch_cka batch_size={batch_size}; the unbiased HSIC needs at least "
            f"{MIN_SAMPLES_CKA} samples per batch (a few hundred is usual)."
        )
    accumulator = MinibatchCKA(features.shape[0])
    num_batches = max(1, features.shape[1] // batch_size)
    for batch in torch.tensor_split(features, num_batches, dim=1):
        accumulator.update(batch)
    return accumulator.compute()


# --------------------------------------------------------------------------- tokens


def reduce_tokens(
    hidden: torch.Tensor, mode: TokenMode, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """One vector per sample from token features (L, N, T, D) or (N, T, D).

    - ``"cls"``: token 0 -> (L, N, D); the mask is not consulted (token 0 is always real).
    - ``"mean"``: mean over valid tokens (``attention_mask`` (N, T), 1 = real token; all tokens
      when None) -> (L, N, D).
    - ``"all"``: every valid token becomes a sample -> (L, N*T, D), or (L, M, D) with M valid
      tokens when masked, in sample-major order.
    The leading L is dropped again for (N, T, D) input.
    """
    if hidden.ndim not in (3, 4):
        raise ConfigError(
            f"reduce_tokens expects (L, N, T, D) or (N, T, D) token features, got "
            f"{tuple(hidden.shape)}."
        )
    single_layer = hidden.ndim == 3
    tokens = hidden[None] if single_layer else hidden  # (L, N, T, D)
    num_samples, num_tokens = tokens.shape[1:3]
    if attention_mask is not None and attention_mask.shape != (num_samples, num_tokens):
        raise ConfigError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected (N, T) = "
            f"({num_samples}, {num_tokens}) to match the token features."
        )
    valid = None if attention_mask is None else attention_mask.to(tokens.device).bool()  # (N, T)

    if mode == "cls":
        reduced = tokens[:, :, 0]  # (L, N, D)
    elif mode == "mean":
        if valid is None:
            reduced = tokens.mean(dim=2)  # (L, N, D)
        else:
            counts = valid.sum(dim=1)  # (N,)
            if (counts == 0).any():
                empty = (torch.nonzero(counts == 0).flatten()).tolist()
                raise ConfigError(
                    f"reduce_tokens('mean'): samples {empty[:10]} have no valid token in "
                    f"attention_mask; mean pooling is undefined for them."
                )
            weights = valid.to(tokens.dtype)[None, :, :, None]  # (1, N, T, 1)
            reduced = (tokens * weights).sum(dim=2) / counts.to(tokens.dtype)[None, :, None]
    elif mode == "all":
        # (L, N*T, D), or (L, M, D) with M valid tokens
        reduced = tokens.flatten(1, 2) if valid is None else tokens[:, valid]
    else:
        raise ConfigError(f"Unknown token reduction '{mode}'; use 'cls', 'mean' or 'all'.")
    return reduced[0] if single_layer else reduced
