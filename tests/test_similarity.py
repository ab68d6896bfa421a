"""Layer similarity (COS, linear/RBF/minibatch CKA) against slow, direct float64 formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from similarity_references import (
    layered_features,
    nguyen_minibatch_cka,
    slow_linear_cka,
)

from aligned.analysis import feature_stacks
from aligned.analysis.cka import MinibatchCKA, linear_cka, minibatch_cka, rbf_cka
from aligned.analysis.similarity import (
    CosAccumulator,
    cos_similarity,
    layer_means,
    reduce_tokens,
)
from aligned.config import ConfigError

# --------------------------------------------------------------------------- slow references


def slow_cos(features: torch.Tensor, centering: str) -> torch.Tensor:
    x = features.double()
    if centering == "samples":
        x = x - x.mean(dim=1, keepdim=True)
    elif centering == "features":
        x = x - x.mean(dim=2, keepdim=True)
    num_layers = x.shape[0]
    out = torch.empty(num_layers, num_layers, dtype=torch.float64)
    for a in range(num_layers):
        for b in range(num_layers):
            out[a, b] = F.cosine_similarity(x[a], x[b], dim=1).mean()
    return out


def slow_rbf_cka(features: torch.Tensor, sigma_scale: float) -> torch.Tensor:
    """Kornblith et al.'s gram_rbf + biased CKA, in numpy."""

    def gram_rbf(x: np.ndarray) -> np.ndarray:
        dots = x @ x.T
        sq_norms = np.diag(dots)
        sq_dist = -2 * dots + sq_norms[:, None] + sq_norms[None, :]
        return np.exp(-sq_dist / (2 * sigma_scale**2 * np.median(sq_dist)))

    def centred(gram: np.ndarray) -> np.ndarray:
        n = gram.shape[0]
        h = np.eye(n) - 1.0 / n
        return h @ gram @ h

    grams = [centred(gram_rbf(layer)) for layer in features.double().numpy()]
    num_layers = len(grams)
    out = torch.empty(num_layers, num_layers, dtype=torch.float64)
    for a in range(num_layers):
        for b in range(num_layers):
            out[a, b] = float(
                np.sum(grams[a] * grams[b])
                / np.sqrt(np.sum(grams[a] ** 2) * np.sum(grams[b] ** 2))
            )
    return out


# --------------------------------------------------------------------------- CKA


# (N, D) chosen so both routes of the linear statistics run: Gram (small N) and feature space.
ROUTES = pytest.mark.parametrize("num_samples, dim", [(24, 40), (60, 6)], ids=["gram", "feature"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_route_parameters_take_the_route_they_are_named_after(dtype):
    from aligned.analysis.cka import _gram_route

    for (num_samples, dim), gram in (((24, 40), True), ((60, 6), False)):
        shape = torch.Size((4, num_samples, dim))
        assert _gram_route(shape, shape, dtype) == gram


@ROUTES
@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_matches_direct_formula(num_samples: int, dim: int, unbiased: bool):
    features = layered_features(4, num_samples, dim).double()  # float64 end to end
    expected = slow_linear_cka(features, unbiased)
    assert torch.allclose(linear_cka(features, unbiased=unbiased), expected, atol=1e-10)
    off_diagonal = expected[~torch.eye(4, dtype=torch.bool)]
    assert off_diagonal.max() < 0.99 and off_diagonal.min() > 0.05  # a non-trivial check


@ROUTES
@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_of_float32_features_is_float32_accurate(num_samples, dim, unbiased):
    """The feature route multiplies float32 input in float32 (summing in float64)."""
    features = layered_features(4, num_samples, dim)  # float32
    cka = linear_cka(features, unbiased=unbiased)
    assert cka.dtype == torch.float64
    assert torch.allclose(cka, slow_linear_cka(features.double(), unbiased), atol=1e-6)


def test_float32_products_ignore_a_lowered_matmul_precision(monkeypatch):
    """Training code often sets 'medium' (TF32/bfloat16 matmuls); CKA must not inherit it, and
    must leave the user's setting as it found it."""
    features = layered_features(3, 60, 6)
    exact = linear_cka(features)
    seen = []
    original = torch.Tensor.__matmul__

    def spy(a, b):
        if a.dtype == torch.float32:
            seen.append(torch.get_float32_matmul_precision())
        return original(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        assert torch.equal(linear_cka(features), exact)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen and set(seen) == {"highest"}


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_gram_chunks_add_up(monkeypatch, unbiased: bool):
    features = layered_features(3, 30, 40)
    whole = linear_cka(features, unbiased=unbiased)
    monkeypatch.setattr(feature_stacks, "CHUNK_BYTES", 8 * 3 * 30 * 7)  # 7 Gram rows per chunk
    assert torch.allclose(linear_cka(features, unbiased=unbiased), whole, atol=1e-12)


def cka_variants():
    return {
        "linear": lambda f: linear_cka(f),
        "linear_unbiased": lambda f: linear_cka(f, unbiased=True),
        "rbf": lambda f: rbf_cka(f),
        "rbf_unbiased": lambda f: rbf_cka(f, unbiased=True),
        "minibatch": lambda f: minibatch_cka(f, batch_size=25),
    }


@pytest.mark.parametrize("variant", list(cka_variants()))
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_cka_of_a_layer_with_itself_is_one_and_matrix_symmetric(variant, dtype, tolerance):
    base = layered_features(3, 100, 8).to(dtype)
    features = torch.cat([base, base[:1]])  # layer 4 is a copy of layer 1
    cka = cka_variants()[variant](features)
    assert cka.shape == (4, 4) and cka.dtype == torch.float64
    assert torch.allclose(cka.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert cka[0, 3] == pytest.approx(1.0, abs=tolerance)
    assert torch.equal(cka, cka.T)
    assert cka[0, 1] < 0.99  # different layers are not all 1


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_invariant_to_orthogonal_transform_and_scaling(unbiased: bool):
    features = layered_features(2, 80, 10)
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(1)))
    rotated_scaled = 3.7 * features[1] @ rotation  # (N, D)
    cka = linear_cka(torch.stack([features[0], features[1], rotated_scaled]), unbiased=unbiased)
    assert cka[0, 2] == pytest.approx(cka[0, 1].item(), abs=1e-6)  # float32 input
    assert cka[1, 2] == pytest.approx(1.0, abs=1e-6)


def test_linear_cka_is_not_invariant_to_a_general_linear_map():
    """The invariance test above would pass for a metric blind to everything; this one not."""
    features = layered_features(2, 80, 10)
    squash = torch.diag(torch.linspace(0.05, 5.0, 10))  # anisotropic scaling
    cka = linear_cka(torch.stack([features[0], features[1], features[1] @ squash]))
    assert abs(cka[0, 2] - cka[0, 1]) > 1e-2


def test_rbf_cka_matches_kornblith_and_lies_in_unit_interval():
    features = layered_features(3, 50, 6)
    for sigma_scale in (0.5, 1.0, 2.0):
        cka = rbf_cka(features, sigma_scale=sigma_scale)
        assert torch.allclose(cka, slow_rbf_cka(features, sigma_scale), atol=1e-10)
        assert cka.min() >= 0 and cka.max() <= 1 + 1e-12
    narrow, wide = rbf_cka(features, sigma_scale=0.5), rbf_cka(features, sigma_scale=2.0)
    assert not torch.allclose(narrow, wide, atol=1e-3)


def test_minibatch_cka_with_one_batch_is_full_unbiased_cka():
    features = layered_features(4, 90, 12)
    assert torch.allclose(
        minibatch_cka(features, batch_size=90), linear_cka(features, unbiased=True), atol=1e-12
    )


def test_minibatch_cka_close_to_full_unbiased_cka():
    # Per-batch unbiased HSIC averaged over 10 batches of 200 has more variance than one
    # estimate on 2000 samples; on these features the gap is 1e-3 to 3.5e-3 over seeds,
    # so 1e-2 is a loose but meaningful bound.
    features = layered_features(6, 2000, 32)
    full = linear_cka(features, unbiased=True)
    batched = minibatch_cka(features, batch_size=200)
    assert (batched - full).abs().max() < 1e-2
    assert (full[0] - full[0, 0]).abs().max() > 0.1  # the values are far from constant


def test_minibatch_accumulator_equals_convenience_and_ignores_batch_offsets():
    features = layered_features(3, 120, 8)
    accumulator = MinibatchCKA(3)
    for batch in torch.tensor_split(features, 4, dim=1):
        accumulator.update(batch + torch.randn(3, 1, 8))  # unbiased HSIC is shift-invariant
    assert torch.allclose(accumulator.compute(), minibatch_cka(features, batch_size=30), atol=1e-10)


def test_minibatch_cka_never_leaves_a_short_batch():
    features = layered_features(2, 203, 5)  # 203 = 2 × 100 + 3: a last batch of 3 is too small
    assert minibatch_cka(features, batch_size=100).shape == (2, 2)


# --------------------------------------------------------------------------- COS


@pytest.mark.parametrize("centering", ["samples", "features", "none"])
def test_cos_matches_direct_formula(centering: str):
    features = layered_features(4, 50, 7)
    cos = cos_similarity(features, centering=centering)
    assert torch.allclose(cos, slow_cos(features, centering), atol=1e-10)
    assert torch.allclose(cos.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert torch.equal(cos, cos.T)


def test_cos_centerings_differ():
    features = layered_features(3, 50, 7)
    by_samples = cos_similarity(features, centering="samples")
    assert not torch.allclose(by_samples, cos_similarity(features, centering="none"), atol=1e-2)
    assert not torch.allclose(by_samples, cos_similarity(features, centering="features"), atol=1e-2)


@pytest.mark.parametrize("centering", ["samples", "features", "none"])
def test_cos_accumulator_over_minibatches_equals_one_shot(centering: str):
    features = layered_features(4, 103, 9)
    batches = torch.split(features, 20, dim=1)
    mean = layer_means(batches) if centering == "samples" else None
    accumulator = CosAccumulator(centering, mean=mean)
    for batch in batches:
        accumulator.update(batch)
    one_shot = cos_similarity(features, centering=centering)
    assert torch.allclose(accumulator.compute(), one_shot, atol=1e-12)


def test_cos_accumulator_with_samples_centering_requires_the_means():
    with pytest.raises(ConfigError, match="layer_means"):
        CosAccumulator("samples")
    accumulator = CosAccumulator("samples", mean=torch.zeros(3, 5))
    with pytest.raises(ConfigError, match=r"\(L, D\) = \(3, 4\)"):
        accumulator.update(torch.randn(3, 10, 4))


# --------------------------------------------------------------------------- tokens


def test_reduce_tokens_modes_and_mask():
    hidden = torch.randn(3, 4, 5, 6)  # (L, N, T, D)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])

    assert torch.equal(reduce_tokens(hidden, "cls"), hidden[:, :, 0])
    assert torch.allclose(reduce_tokens(hidden, "mean"), hidden.mean(2))
    masked_mean = reduce_tokens(hidden, "mean", mask)
    assert torch.allclose(masked_mean[:, 1], hidden[:, 1, :2].mean(1))
    assert torch.allclose(masked_mean[:, 2], hidden[:, 2, 0])

    assert reduce_tokens(hidden, "all").shape == (3, 20, 6)
    every_valid = reduce_tokens(hidden, "all", mask)  # (L, 11, D), sample-major
    assert every_valid.shape == (3, int(mask.sum()), 6)
    assert torch.equal(every_valid[:, 5:7], hidden[:, 1, :2])
    assert torch.equal(every_valid[:, 7], hidden[:, 2, 0])

    assert torch.equal(reduce_tokens(hidden[0], "mean", mask), masked_mean[0])  # (N, T, D)


def test_reduce_tokens_errors():
    hidden = torch.randn(2, 3, 4, 5)
    with pytest.raises(ConfigError, match="no valid token"):
        reduce_tokens(hidden, "mean", torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]))
    with pytest.raises(ConfigError, match=r"\(N, T\)"):
        reduce_tokens(hidden, "mean", torch.ones(3, 5))
    with pytest.raises(ConfigError, match="'cls', 'mean' or 'all'"):
        reduce_tokens(hidden, "max")


# --------------------------------------------------------------------------- errors


ALL_MEASURES = {
    "cos": lambda f: cos_similarity(f),
    "linear_cka": lambda f: linear_cka(f),
    "rbf_cka": lambda f: rbf_cka(f),
    "minibatch_cka": lambda f: minibatch_cka(f, batch_size=10),
}


@pytest.mark.parametrize("measure", ["linear_cka", "rbf_cka", "minibatch_cka"])
def test_fewer_than_four_samples_is_an_error(measure: str):
    with pytest.raises(ConfigError, match="n >= 4"):
        ALL_MEASURES[measure](torch.randn(2, 3, 5))


@pytest.mark.parametrize("measure", list(ALL_MEASURES))
def test_non_finite_features_name_the_layer(measure: str):
    features = layered_features(3, 20, 4)
    features[1, 5, 2] = float("nan")
    with pytest.raises(ConfigError, match=r"layer\(s\) \[2\] .*NaN or inf"):
        ALL_MEASURES[measure](features)
    features[1, 5, 2] = float("inf")
    with pytest.raises(ConfigError, match=r"layer\(s\) \[2\]"):
        ALL_MEASURES[measure](features)


@pytest.mark.parametrize("measure", list(ALL_MEASURES))
def test_constant_layer_is_named(measure: str):
    features = layered_features(3, 20, 4)
    features[2] = 0.1  # 0.1 is inexact in binary: centring leaves round-off, not zeros
    with pytest.raises(ConfigError, match=r"layer\(s\) \[3\] .*zero variance.*Drop those layers"):
        ALL_MEASURES[measure](features)


def test_streaming_accumulators_spot_a_layer_constant_across_batches():
    features = layered_features(2, 40, 4)
    features[0] = torch.arange(4.0)  # every sample equal, batch by batch
    cka = MinibatchCKA(2)
    cos = CosAccumulator("samples", mean=features.double().mean(1))
    for batch in torch.split(features, 10, dim=1):
        cka.update(batch)
        cos.update(batch)
    for accumulator in (cka, cos):
        with pytest.raises(ConfigError, match=r"layer\(s\) \[1\]"):
            accumulator.compute()


@pytest.mark.parametrize("measure", list(ALL_MEASURES))
def test_wrong_ndim_is_an_error(measure: str):
    with pytest.raises(ConfigError, match=r"\(L, N, D\).*reduce_tokens"):
        ALL_MEASURES[measure](torch.randn(2, 8, 3, 5))


def test_minibatch_cka_rejects_a_batch_with_other_layers():
    accumulator = MinibatchCKA(3)
    with pytest.raises(ConfigError, match="built for 3 layers"):
        accumulator.update(torch.randn(2, 10, 4))


# ------------------------------------------------- defects fixed (docs/analysis.md, Three fixes)


def every_similarity_call():
    """Each public entry point once, as a callable of a float64 stack."""
    def accumulate(features):
        accumulator = MinibatchCKA(features.shape[0])
        for batch in torch.split(features, 30, dim=1):
            accumulator.update(batch)
        return accumulator.compute()

    return {
        "linear_cka": lambda f: linear_cka(f),
        "linear_cka_unbiased": lambda f: linear_cka(f, unbiased=True),
        "rbf_cka": lambda f: rbf_cka(f),
        "minibatch_cka": lambda f: minibatch_cka(f, batch_size=30),
        "MinibatchCKA.update": accumulate,
        "cos": lambda f: cos_similarity(f),
        "linear_cka_across": lambda f: linear_cka(f, f[:2, :, :3]),
        "minibatch_cka_across": lambda f: minibatch_cka(f, f[:2], batch_size=30),
    }


@pytest.mark.parametrize("call", list(every_similarity_call()))
@pytest.mark.parametrize("layout", ["layers-major", "samples-major", "one layer"])
def test_no_similarity_function_modifies_its_input(call: str, layout: str):
    """Defect 1: the float64 features were centred in place (float32 input was copied)."""
    base = layered_features(3, 120, 6).double()
    if layout == "samples-major":  # as a (N, L, D) buffer viewed as (L, N, D)
        base = base.transpose(0, 1).contiguous().transpose(0, 1)
    features = base[:1] if layout == "one layer" else base
    before = features.clone()
    every_similarity_call()[call](features)
    assert torch.equal(features, before)


def test_minibatch_cka_then_linear_cka_gives_the_same_number():
    """The defect as found: after minibatch_cka(f, 100), linear_cka(f, unbiased=True) changed."""
    features = layered_features(3, 400, 6).double()
    first = linear_cka(features, unbiased=True)
    minibatch_cka(features, batch_size=100)
    assert torch.equal(linear_cka(features, unbiased=True), first)


def features_with_many_zero_vectors() -> torch.Tensor:
    """Layer 2: 30 of 40 samples are all-zero (dead ReLU), so over half of all pairs are equal."""
    features = layered_features(2, 40, 5).double()
    features[1] = features[1].relu()
    features[1, :30] = 0
    return features


def test_rbf_cka_with_a_zero_median_distance_is_a_clear_error():
    """Defect 2: the median squared distance was 0 and rbf_cka returned NaN without an error."""
    with pytest.raises(ConfigError, match=r"layer\(s\) \[2\] .*median.*bandwidth='nonzero_median'"):
        rbf_cka(features_with_many_zero_vectors())


def test_rbf_cka_nonzero_median_bandwidth_matches_its_reference():
    features = features_with_many_zero_vectors()
    cka = rbf_cka(features, bandwidth="nonzero_median")

    def gram(x: np.ndarray) -> np.ndarray:  # gram_rbf with the median over distinct pairs
        dots = x @ x.T
        sq_dist = np.diag(dots)[:, None] + np.diag(dots)[None, :] - 2 * dots
        return np.exp(-sq_dist / (2 * np.median(sq_dist[sq_dist > 1e-9])))

    grams = []
    for layer in features.numpy():
        centred = np.eye(40) - 1 / 40
        grams.append(centred @ gram(layer) @ centred)
    expected = np.sum(grams[0] * grams[1]) / np.sqrt(np.sum(grams[0] ** 2) * np.sum(grams[1] ** 2))
    assert torch.isfinite(cka).all()
    assert cka[0, 1].item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("sizes", [(256, 103), (256, 8), (100, 100, 21)], ids=str)
def test_minibatch_cka_weights_each_batch_as_nguyen_et_al(sizes: tuple[int, ...]):
    """Defect 3: a short last batch counted as much as a full one. Their reference code sums the
    inner products of U-centred Grams, i.e. weights each batch's unbiased HSIC by n(n-3)."""
    features = layered_features(3, sum(sizes), 6)
    batches = torch.split(features, list(sizes), dim=1)
    accumulator = MinibatchCKA(3)
    for batch in batches:
        accumulator.update(batch)
    assert torch.allclose(accumulator.compute(), nguyen_minibatch_cka(batches), atol=1e-10)


@pytest.mark.parametrize("call", list(every_similarity_call()))
def test_extreme_magnitudes_give_finite_values_or_a_clear_error(call: str):
    """No similarity function returns NaN or inf silently (squares of 1e200 overflow)."""
    features = layered_features(3, 60, 4).double() * 1e200
    try:
        result = every_similarity_call()[call](features)
    except ConfigError:
        return
    assert torch.isfinite(result).all()
