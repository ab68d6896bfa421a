"""The callbacks group: Lightning callbacks from the config, added to the project's own."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from aligned.training.fit import train


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_the_learning_rate_curve_is_logged_when_a_logger_is_on(tiny_train_cfg):
    cfg = tiny_train_cfg("logger=csv", "trainer.log_every_n_steps=1")
    train(cfg)
    rates = [float(row["lr-AdamW/pg1"]) for row in metrics_rows(Path(cfg.run_dir))
             if row.get("lr-AdamW/pg1")]  # pg2: the no-decay group
    # 3 steps: the peak rate (warm-up is under one step here), then the cosine decay.
    assert len(rates) == 3 and rates[0] == cfg.optim.lr and rates[0] > rates[1] > rates[2]


def test_without_a_logger_the_learning_rate_monitor_is_left_out(tiny_train_cfg):
    assert train(tiny_train_cfg("logger=none"))["num_layers"] == 2


def stopped_at(cfg) -> int:
    return torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=False)["epoch"]


def test_a_callback_of_the_group_is_added(tiny_train_cfg):
    # stopping_threshold 0: accuracy always reaches it, so training stops after epoch 1 of 3.
    cfg = tiny_train_cfg("callbacks=early_stopping", "trainer.max_epochs=3",
                         "+callbacks.early_stopping.stopping_threshold=0.0")
    train(cfg)
    assert stopped_at(cfg) == 0


def test_callbacks_given_under_trainer_are_added_not_replaced(tiny_train_cfg):
    stop = ("{_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: val/acc, mode: max, "
            "stopping_threshold: 0.0}")
    cfg = tiny_train_cfg("callbacks=none", "trainer.max_epochs=3", f"+trainer.callbacks=[{stop}]")
    results = train(cfg)
    assert stopped_at(cfg) == 0
    assert Path(results["checkpoint"]).is_file()  # the project's own checkpoints are still there
