"""Fit, test the best checkpoint, and write the run's results: what ``train.py`` runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, open_dict

from aligned.config import ConfigError, build
from aligned.training.callbacks import EpochSeed, RunConfigInCheckpoint, TrainingTime
from aligned.training.results import format_table, layer_values, write_results
from aligned.training.resume import (
    RelocatableCheckpoint,
    check_same_settings,
    keep_csv_history,
    resume_checkpoint,
    run_dir_of,
)
from aligned.training.system import LayerwiseClassifier, headline_key

log = logging.getLogger(__name__)


# Words of Lightning's errors about hardware, which get the accelerator/devices hint.
HARDWARE_WORDS = ("accelerator", "device", "gpu", "cuda", "mps", "tpu")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.loss``; returns the results dict.

    With ``cfg.resume`` (a run directory or a checkpoint file) training continues from that
    checkpoint and writes into the resumed run's directory.
    """
    check_input_kinds(cfg)
    check_evaluation_batches(cfg)
    resume_from = resume_checkpoint(cfg.get("resume"))
    resumed = check_same_settings(cfg, resume_from) if resume_from else None
    run_dir = run_dir_of(resume_from) if resume_from else Path(cfg.run_dir).resolve()
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
    checkpoint = RelocatableCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor=headline_key("val", metrics[0]),
        mode="max",
    )
    latest = RelocatableCheckpoint(  # every epoch, validated or not (check_val_every_n_epoch)
        dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    logger = build(cfg.logger) if cfg.get("logger") else False
    timer = TrainingTime()
    callbacks = [checkpoint, latest, RunConfigInCheckpoint(cfg), EpochSeed(cfg.seed), timer]
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
        if resumed is not None:
            keep_csv_history(logger, resumed["epoch"], resumed["global_step"])
        logger.log_hyperparams({"objective_extra_parameters": extra})
    del resumed  # the weights load again in fit(); don't hold a second copy

    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=resume_from)
        train_time = timer.seconds
        best = best_checkpoint(checkpoint, latest)
        results = evaluate_best(trainer, system, datamodule, best, cfg, metrics, train_time)
    finally:
        finish_wandb(logger)
    if trainer.is_global_zero:
        write_results(run_dir / "results.json", results)
        print(format_table(results))
    return results


def best_checkpoint(checkpoint: ModelCheckpoint, latest: ModelCheckpoint) -> str:
    """The best epoch's file; the last one when no validation ran (e.g. trainer.max_steps ended
    training inside the first epoch, or check_val_every_n_epoch > max_epochs)."""
    if checkpoint.best_model_path:
        return checkpoint.best_model_path
    if latest.best_model_path:  # unmonitored: its only file, last.ckpt
        log.warning("No validation ran during training; evaluating the last checkpoint.")
        return latest.best_model_path
    raise ConfigError("Training ran no step, so there is nothing to evaluate (check "
                      "trainer.max_epochs and trainer.max_steps).")


def evaluate_best(trainer, system, datamodule, best, cfg, metrics, train_time) -> dict:
    """Validate and test the best checkpoint; the results.json dict."""
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


def check_input_kinds(cfg: DictConfig) -> None:
    """A text model on image data (or the reverse) would fail inside the first batch, or in an
    interpolation of the data config; say what to pair instead."""
    kinds = {}
    for group in ("model", "data"):
        try:
            kinds[group] = getattr(get_class(cfg[group]._target_), "inputs", None)
        except Exception:  # noqa: BLE001  (a bad target: building it reports that)
            return
    if None not in kinds.values() and kinds["model"] != kinds["data"]:
        raise ConfigError(
            f"model={cfg.names.model} reads {kinds['model']} but data={cfg.names.data} holds "
            f"{kinds['data']}: pair a text model (bert, minilm) with data=glue, and an image "
            "model (vit, vit_s, vit_b, deit_s, deit_b) with digits, cifar10, cifar100 or imagenet."
        )


def check_evaluation_batches(cfg: DictConfig) -> None:
    for split in ("val", "test"):
        if cfg.trainer.get(f"limit_{split}_batches") == 0:
            raise ConfigError(
                f"trainer.limit_{split}_batches=0 leaves no {split} batches, which the results "
                "need (val picks the best epoch); use a fraction or a count above 0."
            )


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
