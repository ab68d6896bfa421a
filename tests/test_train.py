"""The real configs composed through Hydra and the real entry point, run end to end, tiny."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_train
from omegaconf import OmegaConf

from aligned.config import ConfigError
from aligned.training.fit import train
from aligned.training.system import LayerwiseClassifier

RESULT_KEYS = {
    "model", "data", "loss", "seed", "num_layers", "layer_accuracy", "final_accuracy",
    "train_time_s", "checkpoint",
}


@pytest.mark.parametrize("loss", ["aligned", "standard", "multiexit"])
def test_train_writes_results_for_every_objective(tiny_train_cfg, loss):
    cfg = tiny_train_cfg(f"loss={loss}")
    results = train(cfg)
    written = json.loads((Path(cfg.run_dir) / "results.json").read_text())
    assert written == results
    assert set(written) == RESULT_KEYS
    assert (written["model"], written["data"], written["loss"]) == ("vit", "digits", loss)
    assert written["num_layers"] == 2
    for split in ("val", "test"):
        layers = written["layer_accuracy"][split]
        assert len(layers) == 2 and all(0.0 <= a <= 1.0 for a in layers)
        assert written["final_accuracy"][split] == layers[-1]
    assert Path(written["checkpoint"]).is_file()


def test_checkpoint_loads_from_its_saved_config_alone(tiny_train_cfg):
    cfg = tiny_train_cfg("loss=multiexit")
    results = train(cfg)
    system = LayerwiseClassifier.load_from_checkpoint(results["checkpoint"]).eval()
    state = torch.load(results["checkpoint"], weights_only=False)["state_dict"]
    for name, tensor in system.state_dict().items():
        torch.testing.assert_close(tensor, state[name])
    assert system.objective.extra_parameters() == (2 - 1) * (10 * 32 + 10)
    logits = system(torch.randn(3, 1, 8, 8))
    assert logits.shape == (2, 3, 10)


def test_per_layer_metrics_are_logged_per_epoch(tiny_train_cfg):
    cfg = tiny_train_cfg("logger=csv", "trainer.max_epochs=2", "trainer.log_every_n_steps=1")
    train(cfg)
    with open(Path(cfg.run_dir) / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    keys = set(rows[0])
    assert {"val/acc", "val_layers/acc_L01", "val_layers/acc_L02", "train/loss"} <= keys
    # Per-layer values appear once per epoch (2 epochs, then the best checkpoint's final
    # validation), never at every step; the test split has its own section.
    assert sum(1 for row in rows if row["val_layers/acc_L01"]) == 3
    assert sum(1 for row in rows if row.get("test_layers/acc_L02")) == 1


def test_class_mismatch_between_model_and_data_is_a_clear_error(tiny_train_cfg):
    with pytest.raises(ConfigError, match="predicts 5 classes but the data has 10"):
        train(tiny_train_cfg("model.num_classes=5"))


@pytest.mark.parametrize("overrides, message", [
    (["model=minilm"], "model=minilm reads text but data=digits holds images"),
    (["data=glue", "data.data_dir=unused"], "model=vit reads images but data=glue holds text"),
])
def test_a_text_model_on_images_or_the_reverse_is_a_clear_error(tmp_path, overrides, message):
    # Caught before anything is built: otherwise a BERT repr inside a TypeError from the first
    # batch, or an interpolation error about model.name_or_path.
    with pytest.raises(ConfigError, match=message):
        train(compose_train(overrides, tmp_path / "run"))


def test_a_run_that_never_validated_evaluates_its_last_checkpoint(tiny_train_cfg):
    # max_steps ends training inside the first epoch, before any validation: there is no best
    # epoch, so the results come from last.ckpt instead of a crash after training.
    results = train(tiny_train_cfg("+trainer.max_steps=2"))
    assert Path(results["checkpoint"]).name == "last.ckpt"
    assert len(results["layer_accuracy"]["val"]) == 2
    with pytest.raises(ConfigError, match="Training ran no step"):
        train(tiny_train_cfg("trainer.max_epochs=0", "overwrite=true"))


def run_train_py(*overrides: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "train.py", *TINY, f"hydra.run.dir={tmp_path}/run", *overrides],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )


@pytest.mark.slow
def test_train_py_end_to_end(tmp_path):
    done = run_train_py(tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Layer-wise accuracy: model=vit data=digits loss=aligned seed=0" in done.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results) == RESULT_KEYS
    assert Path(results["checkpoint"]).parent == tmp_path / "run" / "checkpoints"


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.weighting=[1,2,3]", "loss.weighting has 3 weights but the model has 2 layers"),
        ("model.num_classes=5", "predicts 5 classes but the data has 10"),
        ("model=nonexistent", "Could not find 'model/nonexistent'"),
        ("trainer.accelerator=gpu", "The trainer settings do not fit this machine"),
        ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
        ("optim.lr=-1", "optim.lr must be a positive number, got -1"),
        ("optim.lr=abc", "optim.lr must be a number, got 'abc'"),
        ("model.depth=0", "has no blocks; set model.depth >= 1"),
        ("model.patch_size=3", "Patches of 3 pixels do not tile images of 8"),
        ("+data.foo=1", "DigitsDataModule has no setting 'foo' (its settings: batch_size"),
        ("model.embed_dim=33", "dim should be divisible by num_heads"),
        ("trainer.limit_val_batches=0", "trainer.limit_val_batches=0 leaves no val batches"),
        ("+trainer.val_check_interval=-1", "Invalid trainer settings: You have passed invalid"),
        ("trainer.max_epochs=-1", "needs a finite training length: set trainer.max_epochs"),
    ],
)
def test_user_errors_give_one_clear_message(tmp_path, override, message):
    done = run_train_py(override, tmp_path=tmp_path)
    assert done.returncode == (1 if override.startswith("model=") else 2)  # 1: Hydra's own error
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_build_surfaces_our_error_and_leaves_other_failures_as_they_are():
    from hydra.errors import InstantiationException

    from aligned.config import build

    glue = {"_target_": "aligned.data.glue.GlueDataModule", "task": "foo", "tokenizer": "x",
            "n": "${glue_num_labels:${task}}"}
    with pytest.raises(ConfigError, match="Unknown GLUE task 'foo'"):
        build(OmegaConf.create(glue))
    # A failure of its own while an earlier ConfigError is being handled stays that failure.
    try:
        raise ConfigError("an earlier, handled error")
    except ConfigError:
        with pytest.raises(InstantiationException, match="out_features"):
            build({"_target_": "torch.nn.Linear", "in_features": 2})


class CallsAHelperWrongly:
    """A target whose own code raises TypeError("... unexpected keyword argument ..."): a bug
    in the code, which must not be reported as a setting the user got wrong."""

    def __init__(self, size: int) -> None:
        def helper(a: int) -> int:
            return a

        helper(a=size, b=2)


class Outer:
    def __init__(self, inner: object) -> None:
        self.inner = inner


def test_a_setting_the_target_lacks_is_named_but_other_type_errors_are_left_alone():
    from hydra.errors import InstantiationException

    from aligned.config import build

    with pytest.raises(ConfigError, match="DigitsDataModule has no setting 'foo'"):
        build({"_target_": "aligned.data.digits.DigitsDataModule", "foo": 1})
    with pytest.raises(InstantiationException, match="unexpected keyword argument 'b'"):
        build({"_target_": f"{__name__}.CallsAHelperWrongly", "size": 1})
    nested = {"_target_": f"{__name__}.Outer",
              "inner": {"_target_": "aligned.data.digits.DigitsDataModule", "foo": 1}}
    # The inner target's own error, as Hydra raises it for the inner key, not "Outer has no ...".
    inner_error = (r"(?s)Error in call to target 'aligned\.data\.digits\.DigitsDataModule'.*"
                   r"DigitsDataModule\.__init__\(\) got an unexpected keyword argument 'foo'.*"
                   r"full_key: inner")
    with pytest.raises(InstantiationException, match=inner_error) as caught:
        build(nested)
    assert "Outer has no setting" not in str(caught.value)


def test_an_error_from_a_dataloader_worker_prints_as_its_own_message():
    from aligned.config import user_message

    wrapped = ConfigError("Caught ConfigError in DataLoader worker process 0.\nOriginal Traceback "
                          "(most recent call last):\n  File \"x.py\", line 1\naligned.config."
                          "ConfigError: /data/train/cat/1.png is not a readable image (x).\n")
    assert user_message(wrapped) == "/data/train/cat/1.png is not a readable image (x)."
    assert user_message(ConfigError("plain")) == "plain"
