"""COS and CKA across two models (L_A × L_B, any widths and depths) against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from similarity_references import (
    layered_features,
    nguyen_u_centred_gram,
    slow_hsic,
)

from aligned.analysis.cka import MinibatchCKA, linear_cka, minibatch_cka, rbf_cka
from aligned.analysis.similarity import CosAccumulator, cos_similarity, layer_means
from aligned.config import ConfigError


def two_models(num_samples: int, dims: tuple[int, int], layers=(3, 4), seed: int = 0):
    """Model A (L_A, N, D_A) and model B (L_B, N, D_B): B reads A's last layer through a random
    map plus noise, so cross similarities are neither 0 nor 1."""
    a = layered_features(layers[0], num_samples, dims[0], seed)
    generator = torch.Generator().manual_seed(seed + 1)
    start = a[-1] @ torch.randn(dims[0], dims[1], generator=generator) / dims[0] ** 0.5
    b = layered_features(layers[1], num_samples, dims[1], seed + 2) + 2 * start
    return a, b


def slow_cross_linear_cka(a: torch.Tensor, b: torch.Tensor, unbiased: bool) -> torch.Tensor:
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float64)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            xy = slow_hsic(x, y, unbiased)
            out[i, j] = xy / (slow_hsic(x, x, unbiased) * slow_hsic(y, y, unbiased)) ** 0.5
    return out


# (N, D_A, D_B): the Gram route (N small) and the feature route (N large).
ROUTES = pytest.mark.parametrize(
    "num_samples, dims", [(20, (30, 50)), (80, (5, 3))], ids=["gram", "feature"]
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_route_parameters_take_the_route_they_are_named_after(dtype):
    from aligned.analysis.cka import _gram_route

    for (num_samples, (dim_a, dim_b)), gram in (((20, (30, 50)), True), ((80, (5, 3)), False)):
        shapes = torch.Size((3, num_samples, dim_a)), torch.Size((4, num_samples, dim_b))
        assert _gram_route(*shapes, dtype) == gram


@ROUTES
@pytest.mark.parametrize("unbiased", [False, True])
def test_cross_linear_cka_matches_direct_formula(num_samples, dims, unbiased):
    a, b = (stack.double() for stack in two_models(num_samples, dims))
    cka = linear_cka(a, b, unbiased=unbiased)
    expected = slow_cross_linear_cka(a, b, unbiased)
    assert cka.shape == (3, 4) and cka.dtype == torch.float64
    assert torch.allclose(cka, expected, atol=1e-10)
    assert expected.min() > 0.05 and expected.max() < 0.99  # a non-trivial check


@ROUTES
def test_cross_linear_cka_of_float32_features_is_float32_accurate(num_samples, dims):
    a, b = two_models(num_samples, dims)
    expected = slow_cross_linear_cka(a.double(), b.double(), unbiased=False)
    assert torch.allclose(linear_cka(a, b), expected, atol=1e-6)


def test_cross_cka_of_a_stack_with_itself_is_its_within_matrix():
    a, _ = two_models(60, (6, 6))
    for measure in (linear_cka, rbf_cka):
        assert torch.allclose(measure(a, a), measure(a), atol=1e-12)


def test_cross_rbf_cka_matches_direct_formula():
    a, b = (stack.double() for stack in two_models(40, (6, 9)))

    def centred_rbf(x: np.ndarray) -> np.ndarray:
        dots = x @ x.T
        sq_dist = np.diag(dots)[:, None] + np.diag(dots)[None, :] - 2 * dots
        gram = np.exp(-sq_dist / (2 * 0.7**2 * np.median(sq_dist)))
        h = np.eye(len(x)) - 1 / len(x)
        return h @ gram @ h

    grams_a = [centred_rbf(x) for x in a.numpy()]
    grams_b = [centred_rbf(y) for y in b.numpy()]
    expected = torch.tensor(
        [[np.sum(ga * gb) / np.sqrt(np.sum(ga**2) * np.sum(gb**2)) for gb in grams_b]
         for ga in grams_a],
        dtype=torch.float64,
    )
    assert torch.allclose(rbf_cka(a, b, sigma_scale=0.7), expected, atol=1e-10)


def test_cross_minibatch_cka_matches_nguyen_update_state_across_models():
    """Their update_state_across_models: cross and self Gram inner products summed over batches,
    CKA = sum_ab / sqrt(sum_aa sum_bb); batches of unequal size on purpose."""
    a, b = two_models(130, (6, 4))
    sizes = [50, 50, 30]
    accumulator = MinibatchCKA(3, other_layers=4)
    cross, self_a, self_b = 0.0, 0.0, 0.0
    for batch_a, batch_b in zip(torch.split(a, sizes, 1), torch.split(b, sizes, 1), strict=True):
        accumulator.update(batch_a, batch_b)
        grams_a = np.stack([nguyen_u_centred_gram(x) for x in batch_a.double().numpy()])
        grams_b = np.stack([nguyen_u_centred_gram(y) for y in batch_b.double().numpy()])
        cross = cross + grams_a @ grams_b.T
        self_a = self_a + np.einsum("ij,ij->i", grams_a, grams_a)
        self_b = self_b + np.einsum("ij,ij->i", grams_b, grams_b)
    expected = torch.from_numpy(cross / np.sqrt(self_a)[:, None] / np.sqrt(self_b)[None, :])
    assert torch.allclose(accumulator.compute(), expected, atol=1e-10)


def test_cross_minibatch_cka_is_the_off_diagonal_block_of_the_joint_stack():
    """Nguyen et al.'s own test_CKA: across two models = the A×B block of one combined stack."""
    a, b = two_models(120, (5, 5))
    joint = minibatch_cka(torch.cat([a, b]), batch_size=40)
    assert torch.allclose(minibatch_cka(a, b, batch_size=40), joint[:3, 3:], atol=1e-12)


@pytest.mark.parametrize("centering", ["samples", "features", "none"])
def test_cross_cos_matches_direct_formula(centering: str):
    a, b = two_models(50, (7, 7))

    def centred(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        if centering == "samples":
            return x - x.mean(1, keepdim=True)
        return x - x.mean(2, keepdim=True) if centering == "features" else x

    ca, cb = centred(a), centred(b)
    expected = torch.tensor(
        [[F.cosine_similarity(x, y, dim=1).mean().item() for y in cb] for x in ca],
        dtype=torch.float64,
    )
    cos = cos_similarity(a, b, centering=centering)
    assert cos.shape == (3, 4)
    assert torch.allclose(cos, expected, atol=1e-10)


def test_cross_cos_accumulator_over_minibatches_equals_one_shot():
    a, b = two_models(103, (6, 6))
    batches = list(zip(torch.split(a, 20, 1), torch.split(b, 20, 1), strict=True))
    accumulator = CosAccumulator(
        "samples",
        mean=layer_means(batch for batch, _ in batches),
        other_mean=layer_means(batch for _, batch in batches),
    )
    for batch_a, batch_b in batches:
        accumulator.update(batch_a, batch_b)
    assert torch.allclose(accumulator.compute(), cos_similarity(a, b), atol=1e-12)


def test_cross_cos_needs_equal_widths():
    a, b = two_models(30, (6, 8))
    with pytest.raises(ConfigError, match=r"equal widths.*D = 6.*D = 8.*cka"):
        cos_similarity(a, b)


def test_cross_cos_accumulator_needs_model_b_means():
    a, b = two_models(30, (6, 6))
    accumulator = CosAccumulator("samples", mean=a.double().mean(1))
    with pytest.raises(ConfigError, match="other_mean"):
        accumulator.update(a, b)


@pytest.mark.parametrize("measure", [linear_cka, rbf_cka, cos_similarity])
def test_cross_measures_need_the_same_samples(measure):
    a, _ = two_models(30, (6, 6))
    _, b = two_models(31, (6, 6))
    with pytest.raises(ConfigError, match=r"N = 30 samples and model B N = 31"):
        measure(a, b)


def test_cross_errors_name_the_stack():
    a, b = two_models(30, (6, 5))
    b[2] = 1.5  # a constant layer in model B
    with pytest.raises(ConfigError, match=r"layer\(s\) \[3\] \(1\.\.L\) of other \(model B\)"):
        linear_cka(a, b)
    b = b.clone()
    b[2, 3, 1] = float("nan")
    with pytest.raises(ConfigError, match=r"layer\(s\) \[3\] .*of other \(model B\).*NaN"):
        minibatch_cka(a, b, batch_size=10)


def test_minibatch_cka_accumulator_insists_on_one_mode():
    a, b = two_models(30, (6, 5))
    with pytest.raises(ConfigError, match="exactly when it was built for two models"):
        MinibatchCKA(3).update(a, b)
    with pytest.raises(ConfigError, match="exactly when it was built for two models"):
        MinibatchCKA(3, other_layers=4).update(a)
    with pytest.raises(ConfigError, match="built for 5 layers of model B"):
        MinibatchCKA(3, other_layers=5).update(a, b)
