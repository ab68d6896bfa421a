"""evaluate.py compare_to=B: similarity between every layer of A and every layer of B on the
same samples (cross_similarity, any widths and depths), checked against direct references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, compose_evaluate, compose_train

from aligned.analysis.cka import linear_cka
from aligned.analysis.cross_model_pass import run_cross_model_pass
from aligned.config import ConfigError
from aligned.evaluation import evaluate, evaluation_dataloader
from aligned.training.checkpoints import load_system, read_checkpoint
from aligned.training.fit import train

WHOLE_SPLITS = [o for o in TINY if not o.startswith(("+trainer.limit_val", "+trainer.limit_test"))]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    deeper = ["model.depth=3", "model.embed_dim=48"]  # another depth and width
    return {
        "small": train(compose_train(WHOLE_SPLITS, root / "small"))["checkpoint"],
        "deeper": train(compose_train([*WHOLE_SPLITS, *deeper, "loss=standard"],
                                      root / "deeper"))["checkpoint"],
    }


def layer_features(ckpt: str) -> torch.Tensor:
    """(L, N, D) features of the whole digits test split, the direct way."""
    checkpoint = read_checkpoint(ckpt)
    system = load_system(checkpoint).eval()
    loader = evaluation_dataloader(checkpoint["run_config"], {}, "test")
    with torch.no_grad():
        return torch.cat([system.backbone.layer_features(images) for images, _ in loader], 1)


def test_a_model_against_itself_gives_its_own_similarity_matrices(checkpoints, tmp_path):
    evaluation = evaluate(compose_evaluate(
        [f"ckpt_path={checkpoints['small']}", f"compare_to={checkpoints['small']}",
         "early_exit.enabled=false", "device=cpu"], tmp_path))
    cross = evaluation["cross_similarity"]
    assert cross["layers"] == [2, 2] and cross["widths"] == [32, 32]
    np.testing.assert_allclose(cross["cka"], evaluation["similarity"]["cka"], atol=1e-10)
    np.testing.assert_allclose(cross["cos"], evaluation["similarity"]["cos"], atol=1e-10)
    assert (tmp_path / "cross_similarity.png").read_bytes()[:4] == b"\x89PNG"
    assert "(cross_similarity.png)" in (tmp_path / "report.md").read_text()


def test_models_of_other_depths_and_widths_are_compared_layer_by_layer(checkpoints, tmp_path):
    """One evaluation batch of the whole split: minibatch CKA is then the unbiased linear CKA
    of the two stacks, computed here directly from the models' features."""
    evaluation = evaluate(compose_evaluate(
        [f"ckpt_path={checkpoints['small']}", f"compare_to={checkpoints['deeper']}",
         "data.batch_size=360", "device=cpu"], tmp_path))
    cross = evaluation["cross_similarity"]
    assert cross["layers"] == [2, 3] and cross["widths"] == [32, 48]
    reference = linear_cka(layer_features(checkpoints["small"]).double(),
                           layer_features(checkpoints["deeper"]).double(), unbiased=True)
    np.testing.assert_allclose(cross["cka"], reference.numpy(), atol=1e-5)
    assert cross["cos"] is None and "COS across models needs equal widths" in cross["cos_note"]
    assert "early_exit_matched" not in evaluation  # needs the same depth
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert written["compare_to"]["num_layers"] == 3
    report = (tmp_path / "report.md").read_text()
    assert "| 3 |" in report  # the deeper model's third layer has its row
    for figure in ("layer_accuracy", "similarity", "class_mean_pca", "cross_similarity"):
        assert (tmp_path / f"{figure}.png").is_file()


def test_loaders_that_disagree_on_the_samples_are_a_clear_error(checkpoints):
    systems = tuple(load_system(read_checkpoint(checkpoints[k])).eval()
                    for k in ("small", "deeper"))
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(8, 1, 8, 8, generator=generator)
    loader_a = [(batch, torch.arange(8) % 10)]
    loader_b = [(batch, torch.arange(8).flip(0) % 10)]
    means = (np.zeros((2, 32)), np.zeros((3, 48)))
    with pytest.raises(ConfigError, match="batch 1 of the two models' evaluation loaders holds "
                                          "other samples"):
        run_cross_model_pass(systems, (loader_a, loader_b), means, progress=False)
    with pytest.raises(ConfigError, match="different numbers of batches"):
        run_cross_model_pass(systems, (loader_a, loader_a * 2), means, progress=False)


def test_similarity_measures_are_chosen_in_evaluate_within_and_across(checkpoints, tmp_path):
    evaluation = evaluate(compose_evaluate(
        [f"ckpt_path={checkpoints['small']}", f"compare_to={checkpoints['deeper']}",
         "similarity.measures=[cos,cka,svcca,procrustes,mutual_knn]", "early_exit.enabled=false",
         "device=cpu"], tmp_path))
    for model, layers in ((evaluation, 2), (evaluation["compare_to"], 3)):
        for name in ("cos", "cka", "svcca", "procrustes", "mutual_knn"):
            assert np.asarray(model["similarity"][name]).shape == (layers, layers)
        assert model["similarity_measures"]["svcca"]["samples"] == 360
    cross = evaluation["cross_similarity"]
    for name in ("svcca", "procrustes", "mutual_knn"):
        assert np.asarray(cross[name]).shape == (2, 3) and np.isfinite(cross[name]).all()
    assert cross["measures"]["procrustes"]["kind"] == "distance"
    with pytest.raises(ConfigError, match="Unknown similarity measure 'ckaa'"):
        evaluate(compose_evaluate([f"ckpt_path={checkpoints['small']}",
                                   "similarity.measures=[ckaa]"], tmp_path / "bad"))
