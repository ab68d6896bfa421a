"""W&B dashboards, read back from the files of offline runs: the whole config, sweep grouping, a
resumed run continuing its W&B run, per-layer tables and charts, best-value summaries, the best
checkpoint's evaluation under its own keys, checkpoints as artifacts, evaluate.py's run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import CONF, TINY, compose_evaluate, compose_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict
from wandb_offline import offline_runs

from aligned.training.fit import train
from aligned.training.loggers import default_group, wandb_mode
from aligned.training.system import layer_key

LAYERS = 2  # TINY's model.depth
WANDB = ["logger=wandb", "logger.log_model=true", "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """Offline, quiet, and W&B's own folders (artifact staging, cache) inside the test's."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                            "WANDB_DATA_DIR": home / "data", "WANDB_CACHE_DIR": home / "cache",
                            "WANDB_CONFIG_DIR": home / "config"}.items():
            patch.setenv(name, str(value))
        patch.delenv("WANDB_API_KEY", raising=False)
        yield home


@pytest.fixture(scope="module")
def trained(wandb_env, tmp_path_factory):
    """``python train.py logger=wandb logger.log_model=true``, two epochs, tiny: its run
    directory, results and offline W&B run."""
    run_dir = tmp_path_factory.mktemp("wandb_train") / "run"
    cfg = compose_train([*TINY, *WANDB], run_dir)
    results = train(cfg)
    (run,) = offline_runs(run_dir)
    return {"run_dir": run_dir, "results": results, "run": run}


def test_run_config_holds_the_whole_resolved_config(trained):
    run = trained["run"]
    config = run.config
    for section in ("model", "data", "loss", "optim", "trainer", "names", "seed", "logger"):
        assert section in config, section
    assert config["data"]["_target_"] == "aligned.data.digits.DigitsDataModule"
    assert config["trainer"]["max_epochs"] == 2 and config["seed"] == 0
    assert config["names"] == {"model": "vit", "data": "digits", "loss": "aligned"}
    parameters = config["parameters"]
    assert parameters["shared_head"] == 32 * 10 + 10 and parameters["objective_extra"] == 0
    assert parameters["total"] > parameters["shared_head"]
    # The run's W&B identity: its own id, a group of its own (its directory), job type train.
    assert run.run.run_id == config["logger"]["id"] and len(run.run.run_id) == 8
    assert run.run.run_group == trained["run_dir"].name == config["logger"]["group"]
    assert run.run.job_type == "train"
    assert run.run.display_name == "vit-digits-aligned-seed0"


def test_per_layer_table_and_chart_at_every_validation(trained):
    run = trained["run"]
    charts = [row for row in run.history if "val_layers/by_layer_table" in row]
    assert len(charts) == 2  # one per epoch
    table = run.table("val_layers/by_layer_table")  # the last epoch's
    assert table["columns"] == ["epoch", "split", "layer", "acc"]
    assert [row[:3] for row in table["data"]] == [[1, "val", layer] for layer in (1, 2)]
    last_epoch = [row for row in run.history if "val/acc" in row][-1]
    assert [row[3] for row in table["data"]] == [
        last_epoch[layer_key("val", layer)] for layer in range(1, LAYERS + 1)]
    chart = run.config["_wandb"]["visualize"]["val_layers/by_layer"]["panel_config"]
    assert chart["fieldSettings"] == {"x": "layer", "y": "acc", "stroke": None}


def test_summaries_keep_each_layers_best_value(trained):
    run = trained["run"]
    epochs = [row for row in run.history if "val/acc" in row]
    for key in [layer_key("val", layer) for layer in range(1, LAYERS + 1)] + ["val/acc"]:
        assert run.metrics[key].summary.max  # defined by name: a glob would lose to Lightning's
        assert run.summary[key] == {"max": max(row[key] for row in epochs)}


def test_best_checkpoint_evaluation_has_its_own_keys_not_a_history_point(trained):
    run, results = trained["run"], trained["results"]
    # Two epochs, two validations in the history; the best checkpoint's validation and test
    # after fit add no point to any metric's curve.
    assert len([row for row in run.history if "val/acc" in row]) == 2
    assert not [key for row in run.history for key in row if key.startswith(("test", "best/v"))]
    summary = run.summary
    assert summary["best/val/acc"] == results["final_accuracy"]["val"]
    assert summary["best/test/acc"] == results["final_accuracy"]["test"]
    for split in ("val", "test"):
        for layer, value in enumerate(results["layer_accuracy"][split], start=1):
            assert summary[f"best/{layer_key(split, layer)}"] == value
    best_epoch = int(Path(results["checkpoint"]).stem.removeprefix("epoch"))
    assert summary["best/epoch"] == best_epoch
    # The figure of the method: L rows per split, one line per split against the layer.
    table = run.table("best/by_layer_table")
    assert table["columns"] == ["epoch", "split", "layer", "acc"]
    assert [row[:3] for row in table["data"]] == [
        [best_epoch, split, layer] for split in ("val", "test") for layer in (1, 2)]
    assert [row[3] for row in table["data"]] == [
        *results["layer_accuracy"]["val"], *results["layer_accuracy"]["test"]]
    chart = run.config["_wandb"]["visualize"]["best/by_layer"]["panel_config"]
    assert chart["fieldSettings"] == {"x": "layer", "y": "acc", "stroke": "split"}


def test_log_model_offline_logs_the_best_checkpoint_as_an_artifact(trained):
    models = [artifact for artifact in trained["run"].artifacts if artifact.type == "model"]
    best = Path(trained["results"]["checkpoint"])
    # The best epoch's file only: last.ckpt (an unmonitored callback's) is not uploaded twice.
    assert len(models) == 1
    assert set(models[0].aliases) == {"best", "latest"}
    assert json.loads(models[0].metadata)["original_filename"] == best.name
    (content,) = models[0].manifest.contents
    assert content.path == "model.ckpt" and content.size == best.stat().st_size


def test_a_resumed_run_continues_its_wandb_run(trained, tmp_path):
    run_dir = tmp_path / "moved"
    shutil.copytree(trained["run_dir"], run_dir)  # the trained run stays as the others read it
    train(compose_train([*TINY, *WANDB, "trainer.max_epochs=3", f"resume={run_dir}"],
                        tmp_path / "unused"))
    first, resumed = offline_runs(run_dir)
    # The same W&B run id (online, wandb.init(id=..., resume="allow") continues that run;
    # offline, the resumed session is a second folder of the same id, see docs/workflow.md).
    assert resumed.run.run_id == first.run.run_id == trained["run"].run.run_id
    assert resumed.run.run_group == first.run.run_group
    assert [row["epoch"] for row in resumed.history if "val/acc" in row] == [2]


def hydra_in_mode(mode: RunMode, sweep_dir: str) -> None:
    """Hydra's runtime config as train.py sees it, in a single run or a multirun job."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.sweep.dir={sweep_dir}"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = mode
    HydraConfig.instance().set_config(cfg)


def test_sweep_jobs_share_the_sweep_as_their_group(tmp_path):
    sweep = "multirun/2026-01-02_03-04-05_abc123"
    hydra_in_mode(RunMode.MULTIRUN, sweep)
    assert default_group(tmp_path / sweep / "3") == "2026-01-02_03-04-05_abc123"
    hydra_in_mode(RunMode.RUN, sweep)  # a single run: a group of its own, its directory
    assert default_group(tmp_path / "outputs/aligned/run7") == "run7"


def test_wandb_mode_follows_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"  # the user's choice, kept (not turned into offline)
    assert wandb_mode(offline=True) == "offline" and wandb_mode(offline=False) == "online"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.netrc: not logged in
    assert wandb_mode() == "offline"


def test_evaluate_joins_the_training_runs_group(trained, tmp_path):
    from aligned.evaluation import evaluate

    checkpoint = trained["results"]["checkpoint"]
    evaluation = evaluate(compose_evaluate(
        [f"ckpt_path={checkpoint}", f"compare_to={checkpoint}", "wandb=true",
         "early_exit.enabled=false"], tmp_path))
    (run,) = offline_runs(tmp_path)
    training = trained["run"].run
    assert (run.run.run_group, run.run.job_type) == (training.run_group, "evaluate")
    assert run.config["trained"]["id"] == training.run_id
    assert run.config["trained"]["names"]["loss"] == "aligned"
    # Keys that do not depend on the loss's name: a sweep's evaluations share their columns.
    for prefix in ("evaluate/", "evaluate/compare_to/"):
        assert run.summary[f"{prefix}final_accuracy"] == evaluation["layer_accuracy"][-1]
        assert f"{prefix}minimal_depth" in run.summary
    table = run.table("evaluate/by_layer_table")
    assert len(table["data"]) == 2 * LAYERS  # both checkpoints, every layer
    chart = run.config["_wandb"]["visualize"]["evaluate/by_layer"]["panel_config"]
    assert chart["fieldSettings"] == {"x": "layer", "y": "accuracy", "stroke": "model"}


def test_fast_dev_run_logs_no_layer_panels(wandb_env, tmp_path):
    # Lightning swaps the loggers for a dummy in a smoke test; the panels must not write to
    # the W&B run anyway (the run itself exists: the parameter counts were logged to it).
    assert train(compose_train([*TINY, "logger=wandb", "+trainer.fast_dev_run=true"],
                               tmp_path / "run")) is None
    (run,) = offline_runs(tmp_path / "run")
    assert not [key for row in run.history for key in row if "by_layer" in key]
    assert layer_key("val", 1) not in run.metrics
