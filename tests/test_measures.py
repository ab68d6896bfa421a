"""CCA, SVCCA, PWCCA, Procrustes and mutual k-NN against direct float64 references, and the
registry's promise (one signature, within (L, L) and across (L_A, L_B), finite, inputs intact)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from similarity_references import layered_features

from aligned.analysis.cca import canonical_similarity, mean_squared_cca, pwcca, svcca
from aligned.analysis.covariance import CovarianceAccumulator, FeatureCovariance
from aligned.analysis.measures import MEASURES, cross_similarity, get_measure, similarity_matrix
from aligned.analysis.mutual_knn import mutual_knn
from aligned.analysis.procrustes import procrustes_distance, procrustes_from_covariances
from aligned.config import ConfigError

REFERENCE_TOLERANCE = 1e-8  # the bar for every measure against its reference, float64 features


def two_models(num_samples: int = 200, dims=(8, 5), layers=(3, 2), seed: int = 0):
    """float64 model A (L_A, N, D_A) and model B (L_B, N, D_B), B partly reading A."""
    a = layered_features(layers[0], num_samples, dims[0], seed).double()
    generator = torch.Generator().manual_seed(seed + 1)
    mix = torch.randn(dims[0], dims[1], generator=generator, dtype=torch.float64)
    b = layered_features(layers[1], num_samples, dims[1], seed + 2).double() + 0.5 * a[-1] @ mix
    return a, b


def pairwise(reference, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    stacks_b = a if b is None else b
    return torch.tensor([[reference(x.numpy(), y.numpy()) for y in stacks_b] for x in a],
                        dtype=torch.float64)


# --------------------------------------------------------------------------- references


def reference_cca(x: np.ndarray, y: np.ndarray, ridge: float = 0.0):
    """Canonical correlations and X-side weights from the eigenproblem
    Σxx^-1 Σxy Σyy^-1 Σyx w = ρ² w (np.linalg.eig, not the SVD route under test)."""
    x, y = x - x.mean(0), y - y.mean(0)
    n = len(x)
    sxx, syy, sxy = x.T @ x / (n - 1), y.T @ y / (n - 1), x.T @ y / (n - 1)
    sxx = sxx + ridge * np.trace(sxx) / len(sxx) * np.eye(len(sxx))
    syy = syy + ridge * np.trace(syy) / len(syy) * np.eye(len(syy))
    eigenvalues, vectors = np.linalg.eig(np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T))
    order = np.argsort(-eigenvalues.real)[: min(x.shape[1], y.shape[1])]
    return np.sqrt(np.clip(eigenvalues.real[order], 0, 1)), vectors.real[:, order]


def reference_mean_squared_cca(x, y, ridge: float = 0.0) -> float:
    return float(np.mean(reference_cca(x, y, ridge)[0] ** 2))


def reduce_by_svd(z: np.ndarray, variance: float = 0.99, keep: int | None = None) -> np.ndarray:
    """Raghu et al.'s SV step: the top singular directions of the centred layer."""
    z = z - z.mean(0)
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    if keep is None:
        explained = np.cumsum(singular**2) / np.sum(singular**2)
        keep = int(np.argmax(explained >= variance)) + 1
    return z @ vt[:keep].T


def reference_svcca(x, y, variance: float = 0.99, keep: int | None = None) -> float:
    return float(np.mean(reference_cca(reduce_by_svd(x, variance, keep),
                                       reduce_by_svd(y, variance, keep))[0]))


def reference_pwcca(x, y, ridge: float = 0.0) -> float:
    """Morcos et al.: canonical variates h_i = X w_i in sample space, normalised; α_i = Σ_j
    |<h_i, x_j>| over X's centred neurons; X = the layer with fewer neurons."""
    if x.shape[1] > y.shape[1]:
        x, y = y, x
    correlations, weights = reference_cca(x, y, ridge)
    centred = x - x.mean(0)
    variates = centred @ weights  # (N, m)
    variates /= np.linalg.norm(variates, axis=0)
    alpha = np.abs(variates.T @ centred).sum(1)
    return float(np.sum(alpha * correlations) / np.sum(alpha))


def reference_procrustes(x, y, kind: str) -> float:
    """scipy's orthogonal_procrustes on centred, zero-padded layers, as netrep's LinearMetric."""
    x, y = x - x.mean(0), y - y.mean(0)
    width = max(x.shape[1], y.shape[1])
    x = np.pad(x, ((0, 0), (0, width - x.shape[1])))
    y = np.pad(y, ((0, 0), (0, width - y.shape[1])))
    rotation, _ = scipy.linalg.orthogonal_procrustes(x, y)
    aligned = x @ rotation
    if kind == "euclidean":
        return float(np.linalg.norm(aligned - y))
    cosine = np.sum(aligned * y) / (np.linalg.norm(x) * np.linalg.norm(y))
    return float(np.arccos(np.clip(cosine, -1, 1)))


def reference_mutual_knn(x, y, k: int) -> float:
    """Brute force: every sample's k most cosine-similar others as Python sets."""
    def neighbour_sets(z):
        unit = z / np.linalg.norm(z, axis=1, keepdims=True)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k]) for row in similarity]

    return float(np.mean([len(p & q) / k for p, q in zip(neighbour_sets(x), neighbour_sets(y),
                                                          strict=True)]))


# --------------------------------------------------------------------------- against references


@pytest.mark.parametrize("across", [False, True], ids=["within", "across"])
def test_mean_squared_cca_matches_the_eigenproblem(across: bool):
    a, b = two_models()
    other = b if across else None
    expected = pairwise(reference_mean_squared_cca, a, other)
    assert torch.allclose(mean_squared_cca(a, other), expected, atol=REFERENCE_TOLERANCE, rtol=0)
    ridged = pairwise(lambda x, y: reference_mean_squared_cca(x, y, 0.1), a, other)
    assert torch.allclose(mean_squared_cca(a, other, ridge=0.1), ridged,
                          atol=REFERENCE_TOLERANCE, rtol=0)
    assert 0.1 < expected.min() < expected.max() <= 1 + 1e-12


@pytest.mark.parametrize("across", [False, True], ids=["within", "across"])
def test_svcca_matches_svd_then_cca(across: bool):
    a, b = two_models()
    other = b if across else None
    for options, reference in (
        ({}, reference_svcca),
        ({"variance": 0.9}, lambda x, y: reference_svcca(x, y, variance=0.9)),
        ({"keep": 3}, lambda x, y: reference_svcca(x, y, keep=3)),
    ):
        expected = pairwise(reference, a, other)
        assert torch.allclose(svcca(a, other, **options), expected,
                              atol=REFERENCE_TOLERANCE, rtol=0), options
    # 0.9 keeps fewer directions than 0.99 on these features, so the numbers differ
    assert not torch.allclose(svcca(a, other), svcca(a, other, variance=0.9), atol=1e-3)


@pytest.mark.parametrize("across", [False, True], ids=["within", "across"])
def test_pwcca_matches_sample_space_projection_weighting(across: bool):
    a, b = two_models()
    other = b if across else None
    expected = pairwise(reference_pwcca, a, other)
    assert torch.allclose(pwcca(a, other), expected, atol=REFERENCE_TOLERANCE, rtol=0)
    ridged = pairwise(lambda x, y: reference_pwcca(x, y, 0.1), a, other)
    assert torch.allclose(pwcca(a, other, ridge=0.1), ridged, atol=REFERENCE_TOLERANCE, rtol=0)


def test_pwcca_weights_differ_from_the_plain_mean():
    a, b = two_models()
    mean_rho = pairwise(lambda x, y: float(np.mean(reference_cca(x, y)[0])), a, b)
    assert (pwcca(a, b) - mean_rho).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["angular", "euclidean"])
@pytest.mark.parametrize("across", [False, True], ids=["within", "across"])
def test_procrustes_matches_scipy_orthogonal_procrustes(kind: str, across: bool):
    a, b = two_models()
    other = b if across else None
    expected = pairwise(lambda x, y: reference_procrustes(x, y, kind), a, other)
    if not across:
        expected.fill_diagonal_(0)  # arccos resolves ~1e-8 near 0; the diagonal is exactly 0
    assert torch.allclose(procrustes_distance(a, other, kind=kind), expected,
                          atol=REFERENCE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("across", [False, True], ids=["within", "across"])
def test_mutual_knn_matches_brute_force_sets(k: int, across: bool):
    a, b = two_models(num_samples=120)
    other = b if across else None
    expected = pairwise(lambda x, y: reference_mutual_knn(x, y, k), a, other)
    # the same neighbour sets give the same counts; only the averaging may round differently
    assert torch.allclose(mutual_knn(a, other, k=k), expected, atol=1e-14, rtol=0)
    assert 0 < expected.min() < expected.max() <= 1


def test_mutual_knn_neighbour_chunks_add_up(monkeypatch):
    from aligned.analysis import feature_stacks

    a, b = two_models(num_samples=90)
    whole = mutual_knn(a, b, k=4)
    monkeypatch.setattr(feature_stacks, "CHUNK_BYTES", 8 * 90 * 7)  # 7 similarity rows a chunk
    assert torch.equal(mutual_knn(a, b, k=4), whole)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("across", [False, True], ids=["within", "across"])
def test_accumulated_covariances_give_the_in_memory_numbers(across: bool):
    """Batches of unequal size, and a large common offset the shifted sums must survive."""
    a, b = two_models(num_samples=230)
    a, b = a + 1e4, b - 3e3
    accumulator = CovarianceAccumulator()
    for rows in (slice(0, 100), slice(100, 107), slice(107, 230)):
        accumulator.update(a[:, rows], b[:, rows] if across else None)
    in_memory = FeatureCovariance(a, b if across else None)
    for measure, options in (("cca", {}), ("svcca", {"variance": 0.99}), ("pwcca", {}),
                             ("cca", {"ridge": 0.05})):
        streamed = canonical_similarity(accumulator, measure, **options)
        assert torch.allclose(streamed, canonical_similarity(in_memory, measure, **options),
                              atol=1e-9, rtol=0), (measure, options)
    for kind in ("angular", "euclidean"):
        streamed = procrustes_from_covariances(accumulator, kind)
        direct = procrustes_from_covariances(in_memory, kind)
        assert torch.allclose(streamed, direct, atol=1e-7, rtol=1e-9), kind


def test_covariance_accumulator_errors():
    a, b = two_models(num_samples=40)
    accumulator = CovarianceAccumulator()
    accumulator.update(a[:, :20], b[:, :20])
    with pytest.raises(ConfigError, match="every update must pass the same models"):
        accumulator.update(a[:, 20:])
    empty = CovarianceAccumulator()
    with pytest.raises(ConfigError, match="0 sample"):
        canonical_similarity(empty, "cca")
    constant = CovarianceAccumulator()
    for rows in (slice(0, 20), slice(20, 40)):
        batch = a[:, rows].clone()
        batch[1] = 0.1
        constant.update(batch)
    with pytest.raises(ConfigError, match=r"layer\(s\) \[2\] .*zero variance"):
        procrustes_from_covariances(constant)


# --------------------------------------------------------------------------- properties


def test_cca_is_invariant_to_any_invertible_linear_map_and_procrustes_only_to_rotations():
    a, _ = two_models()
    generator = torch.Generator().manual_seed(5)
    general = torch.randn(8, 8, generator=generator, dtype=torch.float64) + 3 * torch.eye(8)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator, dtype=torch.float64))
    stretched = torch.stack([a[0], a[1], a[1] @ general])
    rotated = torch.stack([a[0], a[1], a[1] @ rotation])
    cca = mean_squared_cca(stretched)
    assert cca[0, 2] == pytest.approx(cca[0, 1].item(), abs=1e-10)
    assert cca[1, 2] == pytest.approx(1.0, abs=1e-10)
    assert procrustes_distance(rotated)[1, 2] == pytest.approx(0.0, abs=1e-7)
    assert procrustes_distance(stretched)[1, 2] > 1e-2  # a general map is not a rotation


def test_cca_with_too_few_samples_is_an_error_unless_regularised():
    a, b = two_models(num_samples=12)  # 8 + 5 directions > 11
    with pytest.raises(ConfigError, match=r"8 \+ 5 directions .*N = 12 .*ridge > 0"):
        mean_squared_cca(a, b)
    with pytest.raises(ConfigError, match="N = 12"):
        pwcca(a, b)
    assert torch.isfinite(mean_squared_cca(a, b, ridge=0.1)).all()
    assert torch.isfinite(svcca(a, b, keep=2)).all()  # 2 + 2 directions fit


def test_rank_deficient_layers_count_their_directions_only():
    """A layer with dead (all-zero) units has fewer directions than its width; CCA averages
    over the directions it has, as the eigenproblem on its live units does."""
    a, b = two_models()
    a[1, :, 5:] = 0  # 3 dead units in layer 2 of model A
    live = lambda x, y: reference_mean_squared_cca(x[:, np.abs(x).sum(0) > 0], y)  # noqa: E731
    assert torch.allclose(mean_squared_cca(a, b), pairwise(live, a, b),
                          atol=REFERENCE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("options, match", [
    ({"variance": 1.5}, r"variance=1\.5.*\(0, 1\]"),
    ({"keep": 0}, "keep=0"),
])
def test_svcca_option_errors(options, match):
    a, _ = two_models()
    with pytest.raises(ConfigError, match=match):
        svcca(a, **options)


def test_canonical_similarity_options_belong_to_their_measure():
    a, _ = two_models()
    covariances = FeatureCovariance(a)
    assert torch.equal(canonical_similarity(covariances, "svcca"), svcca(a))  # 0.99 default
    with pytest.raises(ConfigError, match="variance= and keep= choose SVCCA's directions"):
        canonical_similarity(covariances, "cca", variance=0.9)
    with pytest.raises(ConfigError, match="drop ridge="):
        canonical_similarity(covariances, "svcca", ridge=0.1)
    with pytest.raises(ConfigError, match="Unknown canonical measure 'cka'"):
        canonical_similarity(covariances, "cka")


def test_mutual_knn_needs_more_samples_than_neighbours():
    a, _ = two_models(num_samples=10)
    with pytest.raises(ConfigError, match="at least 11"):
        mutual_knn(a, k=10)
    with pytest.raises(ConfigError, match="k=0"):
        mutual_knn(a, k=0)


# --------------------------------------------------------------------------- the registry


def test_registry_names_every_measure_offered():
    assert set(MEASURES) == {"cos", "cka", "rbf_cka", "cca", "svcca", "pwcca", "procrustes",
                             "mutual_knn"}


@pytest.mark.parametrize("name", list(MEASURES))
def test_every_measure_within_and_across(name: str):
    measure = get_measure(name)
    a, b = two_models(num_samples=150, dims=(8, 8 if name == "cos" else 5))
    within = similarity_matrix(name, a)
    across = cross_similarity(a, b, name)
    assert within.shape == (3, 3) and across.shape == (3, 2)
    assert within.dtype == across.dtype == torch.float64
    assert torch.isfinite(within).all() and torch.isfinite(across).all()
    assert torch.allclose(within.diagonal(), torch.full((3,), 1.0 if measure.kind == "similarity"
                                                        else 0.0, dtype=torch.float64), atol=1e-10)
    assert torch.equal(within, within.T) == measure.symmetric
    # A stack across itself is its within matrix (procrustes: arccos's ~1e-8 on the diagonal)
    assert torch.allclose(cross_similarity(a, a, name), within, atol=1e-7)


@pytest.mark.parametrize("name", [name for name, m in MEASURES.items() if m.any_widths])
def test_measures_for_any_widths_take_different_widths(name: str):
    a, b = two_models(num_samples=150, dims=(8, 5))
    assert cross_similarity(a, b, name).shape == (3, 2)


def test_cos_across_models_needs_equal_widths():
    a, b = two_models(dims=(8, 5))
    with pytest.raises(ConfigError, match="equal widths"):
        cross_similarity(a, b, "cos")


def test_registry_errors_name_the_choices():
    a, _ = two_models()
    with pytest.raises(ConfigError, match="Unknown similarity measure 'cka2'.*svcca"):
        similarity_matrix("cka2", a)
    with pytest.raises(ConfigError, match=r"'svcca' has no option\(s\) \['k'\].*variance, keep"):
        similarity_matrix("svcca", a, k=3)
    with pytest.raises(ConfigError, match="drop unbiased=False"):
        similarity_matrix("cka", a, batch_size=50, unbiased=False)
    with pytest.raises(ConfigError, match="pass model B's features"):
        cross_similarity(a, None)


def test_registry_cka_options_select_the_estimator():
    a, b = two_models()
    from aligned.analysis.cka import linear_cka, minibatch_cka

    assert torch.equal(similarity_matrix("cka", a, b), linear_cka(a, b))
    assert torch.equal(similarity_matrix("cka", a, unbiased=True), linear_cka(a, unbiased=True))
    assert torch.equal(similarity_matrix("cka", a, b, batch_size=50),
                       minibatch_cka(a, b, batch_size=50))


@pytest.mark.parametrize("name", list(MEASURES))
def test_every_measure_leaves_its_inputs_as_they_were(name: str):
    a, b = two_models(num_samples=150, dims=(8, 8))
    copies = a.clone(), b.clone()
    similarity_matrix(name, a)
    cross_similarity(a, b, name)
    assert torch.equal(a, copies[0]) and torch.equal(b, copies[1])


@pytest.mark.parametrize("name", list(MEASURES))
def test_every_measure_names_bad_layers(name: str):
    a, b = two_models(num_samples=150, dims=(8, 8))
    b[1, 4, 2] = float("nan")
    with pytest.raises(ConfigError, match=r"layer\(s\) \[2\] .*of other \(model B\).*NaN"):
        cross_similarity(a, b, name)
    a[2] = 0.25
    with pytest.raises(ConfigError, match=r"layer\(s\) \[3\] .*zero variance"):
        similarity_matrix(name, a)


@pytest.mark.parametrize("name", list(MEASURES))
@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_every_measure_gives_the_same_numbers_at_extreme_magnitudes(name: str, scale: float):
    """Squares of 1e±200 leave float64; every registry measure ignores a layer's scale, so it
    must give the same matrix (each measure scales layers by exact powers of two inside)."""
    a, b = two_models(num_samples=150, dims=(8, 8))
    assert torch.allclose(similarity_matrix(name, a * scale), similarity_matrix(name, a),
                          atol=1e-12, rtol=0)
    assert torch.allclose(cross_similarity(a * scale, b, name), cross_similarity(a, b, name),
                          atol=1e-12, rtol=0)


def test_euclidean_procrustes_scales_with_the_features():
    a, b = two_models()
    base = procrustes_distance(a, b, kind="euclidean")
    assert torch.allclose(procrustes_distance(a * 1e200, b * 1e200, kind="euclidean") / 1e200,
                          base, rtol=1e-12, atol=0)
    assert torch.allclose(procrustes_distance(a * 1e-200, b * 1e-200, kind="euclidean") * 1e200,
                          base, rtol=1e-12, atol=0)
