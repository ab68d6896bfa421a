"""Fit, test the best checkpoint, and write the run's results: what ``train.py`` runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from aligned.config import ConfigError, build
from aligned.results import format_table, layer_accuracies, write_results
from aligned.system import LayerwiseClassifier

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.loss``; returns the results dict."""
    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data)
    system = LayerwiseClassifier(model=cfg.model, loss=cfg.loss, optim=cfg.optim)
    check_classes(system, datamodule)
    extra = system.objective.extra_parameters()
    log.info(
        "%d layers; shared head %d parameters; objective adds %d parameters",
        system.num_layers, system.backbone.head_parameters(), extra,
    )

    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor="val/acc",
        mode="max",
        save_last=True,
    )
    logger = build(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = build(
        cfg.trainer, default_root_dir=str(run_dir), logger=logger, callbacks=[checkpoint]
    )
    if logger:
        logger.log_hyperparams({"objective_extra_parameters": extra})

    start = time.perf_counter()
    trainer.fit(system, datamodule=datamodule)
    train_time = time.perf_counter() - start

    best = checkpoint.best_model_path or checkpoint.last_model_path
    val = trainer.validate(system, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test = trainer.test(system, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    layers = system.num_layers
    results = {
        "model": cfg.names.model,
        "data": cfg.names.data,
        "loss": cfg.names.loss,
        "seed": cfg.seed,
        "num_layers": layers,
        "layer_accuracy": {
            "val": layer_accuracies(val, "val", layers),
            "test": layer_accuracies(test, "test", layers),
        },
        "final_accuracy": {"val": float(val["val/acc"]), "test": float(test["test/acc"])},
        "train_time_s": round(train_time, 2),
        "checkpoint": str(Path(best).resolve()),
    }
    if trainer.is_global_zero:
        write_results(run_dir / "results.json", results)
        print(format_table(results))
    return results


def check_classes(system: LayerwiseClassifier, datamodule: Any) -> None:
    model_classes, data_classes = system.backbone.num_classes, datamodule.num_classes
    if model_classes != data_classes:
        raise ConfigError(
            f"The model predicts {model_classes} classes but the data has {data_classes}. "
            "Leave model.num_classes at its default, ${data.num_classes}."
        )
