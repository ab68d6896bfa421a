"""Fit, test the best checkpoint, and write the run's results: what ``train.py`` runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from aligned.config import ConfigError, build
from aligned.results import format_table, layer_values, write_results
from aligned.system import LayerwiseClassifier, headline_key

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.loss``; returns the results dict."""
    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data)
    metrics = tuple(getattr(datamodule, "metrics", ("accuracy",)))
    system = LayerwiseClassifier(model=cfg.model, loss=cfg.loss, optim=cfg.optim, metrics=metrics)
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
        monitor=headline_key("val", metrics[0]),
        mode="max",
        save_last=True,
    )
    logger = build(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = build(
        cfg.trainer,
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=[checkpoint, RunConfigInCheckpoint(cfg)],
    )
    if logger:
        logger.log_hyperparams({"objective_extra_parameters": extra})

    start = time.perf_counter()
    trainer.fit(system, datamodule=datamodule)
    train_time = time.perf_counter() - start

    best = checkpoint.best_model_path or checkpoint.last_model_path
    val = trainer.validate(system, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test = trainer.test(system, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    layers, headline = system.num_layers, metrics[0]
    results = {
        "model": cfg.names.model,
        "data": cfg.names.data,
        "loss": cfg.names.loss,
        "seed": cfg.seed,
        "num_layers": layers,
        # The data set's headline metric: accuracy, or e.g. Matthews correlation for CoLA.
        "layer_accuracy": {
            "val": layer_values(val, "val", layers, headline),
            "test": layer_values(test, "test", layers, headline),
        },
        "final_accuracy": {
            "val": float(val[headline_key("val", headline)]),
            "test": float(test[headline_key("test", headline)]),
        },
        "train_time_s": round(train_time, 2),
        "checkpoint": str(Path(best).resolve()),
    }
    if metrics != ("accuracy",):  # GLUE tasks: say which metric, and give all of them
        results["metric"] = headline
        results["layer_metrics"] = {
            name: {split: layer_values(logged, split, layers, name)
                   for split, logged in (("val", val), ("test", test))}
            for name in metrics
        }
    if trainer.is_global_zero:
        write_results(run_dir / "results.json", results)
        print(format_table(results))
    return results


class RunConfigInCheckpoint(Callback):
    """Stores the run's resolved config (data, names, seed, ...) in every checkpoint, so
    ``evaluate.py`` can rebuild the data from a checkpoint file alone."""

    def __init__(self, cfg: DictConfig) -> None:
        run = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        self.run_config = OmegaConf.to_container(run, resolve=True)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict):
        checkpoint["run_config"] = self.run_config


def check_classes(system: LayerwiseClassifier, datamodule: Any) -> None:
    model_classes, data_classes = system.backbone.num_classes, datamodule.num_classes
    if model_classes != data_classes:
        raise ConfigError(
            f"The model predicts {model_classes} classes but the data has {data_classes}. "
            "Leave model.num_classes at its default, ${data.num_classes}."
        )
