"""evaluate.py end to end on tiny trained checkpoints, and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, compose_train
from entry_points import run_evaluate

from aligned.config import ConfigError
from aligned.evaluation import LoadedCheckpoint, check_comparable, evaluation_dataloader
from aligned.training.fit import train


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("runs")
    # The whole val/test split, so results.json and evaluate.py see the same 360 test images.
    overrides = [o for o in TINY if not o.startswith(("+trainer.limit_val", "+trainer.limit_test"))]
    return {
        loss: train(compose_train([*overrides, f"loss={loss}"], root / loss))["checkpoint"]
        for loss in ("aligned", "standard")
    }


@pytest.mark.slow
def test_evaluate_writes_json_figures_and_report(checkpoints, tmp_path):
    done = run_evaluate(f"ckpt_path={checkpoints['aligned']}",
                        f"compare_to={checkpoints['standard']}", "early_exit.run=true",
                        out=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    layers = 2
    assert evaluation["names"]["loss"] == "aligned"
    assert evaluation["num_samples"] == 360  # the digits test split
    assert len(evaluation["layer_accuracy"]) == layers
    for kind in ("cos", "cka"):
        matrix = np.asarray(evaluation["similarity"][kind])
        assert matrix.shape == (layers, layers)
        np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-6)
        np.testing.assert_allclose(matrix, matrix.T, atol=1e-9)
    assert evaluation["cos_to_last"][-1] == pytest.approx(1.0)
    saturation = evaluation["saturation"]
    assert sum(saturation["histogram"]) == 360 and 0 <= saturation["early_fraction"] <= 1
    assert 1 <= evaluation["minimal_depth"]["layer"] <= layers
    assert isinstance(evaluation["monotone"]["value"], bool)
    assert set(evaluation["cos_confidence_correlation"]) == {"pearson", "spearman"}
    assert evaluation["compare_to"]["names"]["loss"] == "standard"
    for model in (evaluation, evaluation["compare_to"]):
        early_exit = model["early_exit"]
        assert set(early_exit["rules"]) == {"confidence", "entropy", "patience", "state", "budget"}
        for entry in early_exit["rules"].values():
            assert entry["val_curve"] and entry["test_curve"]
            chosen = entry["chosen"]  # chosen on val (360 images), measured on test
            assert 1 <= chosen["mean_exit_layer"] <= layers
            assert chosen["speedup"] == pytest.approx(layers / chosen["mean_exit_layer"])
            assert entry["real"]["accuracy"] == pytest.approx(chosen["accuracy"], abs=0.01)
            assert entry["real"]["same_exit_layers"] >= 0.99  # float32 round-off at most
        assert model["parameters"]["per_layer_heads_extra"] == (layers - 1) * (10 * 32 + 10)
    assert "## Early exit" in (tmp_path / "report.md").read_text()
    matched = evaluation["early_exit_matched"]["rules"]
    assert set(matched) == {"confidence", "entropy", "patience", "state", "budget"}
    for entry in matched.values():
        for point in entry["points"]:
            assert point["difference"] == pytest.approx(
                point["accuracy"] - point["reference_accuracy"])
    assert "aligned vs standard at matched mean exit layer" in (tmp_path / "report.md").read_text()
    for figure in ("layer_accuracy", "similarity", "cos_to_last", "saturation", "class_mean_pca",
                   "early_exit"):
        assert (tmp_path / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"({figure}.png)" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_layer_accuracy_matches_the_trained_model(checkpoints, tmp_path):
    """evaluate.py's last-layer accuracy equals Lightning's test accuracy for the checkpoint."""
    from aligned.training.checkpoints import load_system, read_checkpoint

    done = run_evaluate(f"ckpt_path={checkpoints['aligned']}", out=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    results = json.loads((Path(checkpoints["aligned"]).parents[1] / "results.json").read_text())
    np.testing.assert_allclose(evaluation["layer_accuracy"], results["layer_accuracy"]["test"])
    system = load_system(read_checkpoint(checkpoints["aligned"]))
    assert not system.training


@pytest.mark.slow
def test_evaluate_logs_to_wandb_offline(checkpoints, tmp_path):
    done = run_evaluate(f"ckpt_path={checkpoints['aligned']}", "wandb=true", out=tmp_path,
                        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = {path.name for path in runs[0].rglob("*")}
    assert any(name.endswith(".wandb") for name in files)
    assert any(name.startswith("layer_accuracy") and name.endswith(".png") for name in files)


@pytest.mark.slow
def test_missing_truncated_and_foreign_checkpoints_are_clear_errors(checkpoints, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(Path(checkpoints["aligned"]).read_bytes()[:2000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    cases = {
        tmp_path / "missing.ckpt": "does not exist",
        truncated: "cannot be read",
        foreign: "not a checkpoint written by aligned",
    }
    for path, message in cases.items():
        done = run_evaluate(f"ckpt_path={path}", out=tmp_path / "out")
        assert done.returncode == 2, done.stderr[-2000:]
        assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    ([], "Give the checkpoint to analyse"),
    (["ckpt_path=x.ckpt", "early_exit.max_drop=-1"],
     "early_exit.max_drop must be a number in [0, 1)"),
    (["ckpt_path=x.ckpt", "minimal_depth_epsilon=abc"], "minimal_depth_epsilon must be a number"),
])
def test_missing_checkpoint_and_bad_max_drop_are_clear_errors(tmp_path, overrides, message):
    done = run_evaluate(*overrides, out=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr


def model_of(target: str, task: str | None, classes: int, layers: int) -> LoadedCheckpoint:
    run_config = {"data": {"_target_": target, "task": task}}
    system = SimpleNamespace(num_layers=layers, backbone=SimpleNamespace(num_classes=classes))
    return LoadedCheckpoint(f"{task}-{layers}.ckpt", run_config, system, {}, None)


@pytest.mark.parametrize("other, message", [
    (("aligned.data.glue.GlueDataModule", "sst2", 2, 6), "compare models of the same data set"),
    (("aligned.data.glue.GlueDataModule", "mnli", 3, 6), "compare models of the same data set"),
    (("aligned.data.glue.GlueDataModule", "qnli", 2, 3), "have 6 and 3 layers"),
])
def test_compare_to_needs_the_same_data_and_depth(other, message):
    first = model_of("aligned.data.glue.GlueDataModule", "qnli", 2, 6)
    with pytest.raises(ConfigError, match=message):
        check_comparable(first, model_of(*other), "test")
    check_comparable(first, first, "test")  # the same data and depth: fine
    # evaluate.py's figures and cross-model similarity take any depths (same_depth=False).
    check_comparable(first, model_of("aligned.data.glue.GlueDataModule", "qnli", 2, 3), "test",
                     same_depth=False)


@pytest.mark.slow
def test_a_model_override_the_checkpoint_has_no_key_for_is_a_clear_error(checkpoints, tmp_path):
    done = run_evaluate(f"ckpt_path={checkpoints['aligned']}", "model.name_or_path=/x",
                        out=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "model config has no name_or_path" in done.stderr and "Traceback" not in done.stderr


def test_the_evaluation_batch_size_override_reaches_digits_val_and_test_batches():
    # Digits keeps val/test batches (256) apart from training's; evaluate.py's data.batch_size
    # is about evaluation, so it must set them (an old checkpoint's config has no such key).
    run_config = {"data": {"_target_": "aligned.data.digits.DigitsDataModule", "batch_size": 64}}
    default = evaluation_dataloader(run_config, {}, "test")
    assert default.batch_size == 256 and len(default.dataset) == 360
    for split in ("val", "test"):
        loader = evaluation_dataloader(run_config, {"batch_size": 50}, split)
        assert [len(labels) for _, labels in loader][:2] == [50, 50]
    with pytest.raises(ConfigError, match="data.batch_size"):
        evaluation_dataloader(run_config, {"batch_size": 0}, "test")
    with pytest.raises(ConfigError, match="data.data_dir: this checkpoint.s data .Digits"):
        evaluation_dataloader(run_config, {"data_dir": "/elsewhere"}, "test")


def test_compare_to_needs_the_same_split():
    digits, cifar = "aligned.data.digits.DigitsDataModule", "aligned.data.cifar.CIFARDataModule"
    first, other = model_of(digits, None, 10, 6), model_of(digits, None, 10, 6)
    other.run_config["data"]["split_seed"] = 1  # other val and test images
    for split in ("val", "test"):
        with pytest.raises(ConfigError, match="test splits hold other samples .split_seed 0 vs 1"
                           .replace("test", split)):
            check_comparable(first, other, split)
    same = model_of(digits, None, 10, 6)
    same.run_config["data"]["split_seed"] = 0  # the default, written out
    check_comparable(first, same, "test")
    # CIFAR's test split is the official test set whatever the holdout seed; its val is not.
    first, other = model_of(cifar, None, 10, 6), model_of(cifar, None, 10, 6)
    other.run_config["data"]["split_seed"] = 1
    check_comparable(first, other, "test")
    with pytest.raises(ConfigError, match="val splits hold other samples"):
        check_comparable(first, other, "val")
