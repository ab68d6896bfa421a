"""Fit, test the best checkpoint, and write the run's results: what ``train.py`` runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, open_dict

from aligned.callbacks import EpochSeed, RunConfigInCheckpoint
from aligned.config import ConfigError, build
from aligned.results import format_table, layer_values, write_results
from aligned.system import LayerwiseClassifier, headline_key

log = logging.getLogger(__name__)


# Words of Lightning's errors about hardware, which get the accelerator/devices hint.
HARDWARE_WORDS = ("accelerator", "device", "gpu", "cuda", "mps", "tpu")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.loss``; returns the results dict.

    With ``cfg.resume`` (a run directory or a checkpoint file) training continues from that
    checkpoint and writes into the resumed run's directory.
    """
    resume_from = resume_checkpoint(cfg.get("resume"))
    run_dir = resume_from.parents[1] if resume_from else Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)  # loggers interpolate ${run_dir}
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

    # The best epoch by the headline val metric, and last.ckpt rewritten after every epoch: the
    # point a killed run resumes from. (Lightning's own save_last only follows top-k saves.)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor=headline_key("val", metrics[0]),
        mode="max",
    )
    latest = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False
    )
    logger = build(cfg.logger) if cfg.get("logger") else False
    callbacks = [checkpoint, latest, RunConfigInCheckpoint(cfg), EpochSeed(cfg.seed)]
    try:
        trainer: L.Trainer = build(
            cfg.trainer, surface=(MisconfigurationException,), default_root_dir=str(run_dir),
            logger=logger, callbacks=callbacks,
        )
    except MisconfigurationException as error:
        hardware = any(word in str(error).lower() for word in HARDWARE_WORDS)
        raise ConfigError(
            f"The trainer settings do not fit this machine: {error} Set trainer.accelerator and "
            "trainer.devices to what it has (e.g. trainer.accelerator=cpu trainer.devices=1)."
            if hardware else f"Invalid trainer settings: {error}"
        ) from None
    if logger:
        logger.log_hyperparams({"objective_extra_parameters": extra})

    start = time.perf_counter()
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=resume_from)
        train_time = time.perf_counter() - start
        results = evaluate_best(trainer, system, datamodule, checkpoint, cfg, metrics, train_time)
    finally:
        finish_wandb(logger)
    if trainer.is_global_zero:
        write_results(run_dir / "results.json", results)
        print(format_table(results))
    return results


def evaluate_best(trainer, system, datamodule, checkpoint, cfg, metrics, train_time) -> dict:
    """Validate and test the best checkpoint; the results.json dict."""
    best = checkpoint.best_model_path
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
    return results


def resume_checkpoint(resume: str | None) -> Path | None:
    """The checkpoint to resume from: ``<run dir>/checkpoints/last.ckpt`` or the given file."""
    if not resume:
        return None
    path = Path(resume).expanduser().resolve()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(
            f"Cannot resume: '{path}' does not exist. Pass resume=<run dir> (containing "
            "checkpoints/last.ckpt) or resume=<path to a .ckpt file>."
        )
    return path


def finish_wandb(logger: Any) -> None:
    """Close the W&B run so the next job of a multirun starts its own run (never merges)."""
    if type(logger).__name__ == "WandbLogger":
        import wandb

        wandb.finish()


def check_classes(system: LayerwiseClassifier, datamodule: Any) -> None:
    model_classes, data_classes = system.backbone.num_classes, datamodule.num_classes
    if model_classes != data_classes:
        raise ConfigError(
            f"The model predicts {model_classes} classes but the data has {data_classes}. "
            "Leave model.num_classes at its default, ${data.num_classes}."
        )
