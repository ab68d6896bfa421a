"""similarity.measures beyond COS and CKA, fed batch by batch (analysis.measure_pass): the same
matrices as the registry's functions on the whole stacks, within one model and across two."""

from __future__ import annotations

import pytest
import torch

from aligned.analysis.measure_pass import ExtraMeasures
from aligned.analysis.measures import similarity_matrix
from aligned.config import ConfigError


def stacks():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(60, 6, generator=generator, dtype=torch.float64)
    a = torch.stack([base @ torch.randn(6, 5, generator=generator, dtype=torch.float64)
                     + 0.1 * torch.randn(60, 5, generator=generator, dtype=torch.float64)
                     for _ in range(3)])  # (3, 60, 5): layers sharing a latent
    b = torch.stack([base @ torch.randn(6, 4, generator=generator, dtype=torch.float64)
                     for _ in range(2)])  # (2, 60, 4): another model, another width
    return a, b


@pytest.mark.parametrize("across", [False, True])
def test_batches_give_the_whole_stack_matrices(across):
    a, b = stacks()
    names = ["cos", "cka", "cca", "svcca", "pwcca", "procrustes", "mutual_knn", "rbf_cka"]
    extra = ExtraMeasures(names, max_samples=1000)
    assert extra.names == names[2:]  # COS and CKA come from the layer-wise pass itself
    for chunk in range(0, 60, 16):  # batches of 16, 16, 16 and 12
        rows = slice(chunk, chunk + 16)
        extra.update(a[:, rows], b[:, rows] if across else None)
    computed = extra.compute()
    for name in names[2:]:
        expected = similarity_matrix(name, a, b if across else None)
        torch.testing.assert_close(torch.tensor(computed["matrices"][name], dtype=torch.float64),
                                   expected, atol=1e-9, rtol=1e-9)
        assert computed["about"][name]["samples"] == 60
    assert computed["about"]["procrustes"]["kind"] == "distance"


def test_sample_based_measures_read_the_first_max_samples():
    a, _ = stacks()
    extra = ExtraMeasures(["mutual_knn"], max_samples=40)
    for chunk in range(0, 60, 16):
        extra.update(a[:, chunk:chunk + 16])
    computed = extra.compute()
    assert computed["about"]["mutual_knn"]["samples"] == 40
    torch.testing.assert_close(torch.tensor(computed["matrices"]["mutual_knn"],
                                            dtype=torch.float64),
                               similarity_matrix("mutual_knn", a[:, :40]))


@pytest.mark.parametrize("names, max_samples, message", [
    (["svcca", "cka2"], 100, "Unknown similarity measure 'cka2'; choose from cos, cka"),
    (["svcca"], 3, "similarity.max_samples must be an integer >= 4, got 3"),
])
def test_bad_settings_are_one_clear_error(names, max_samples, message):
    with pytest.raises(ConfigError, match=message):
        ExtraMeasures(names, max_samples)
