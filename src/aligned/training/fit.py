"""Fit, test the best checkpoint, and write the run's results: what ``train.py`` runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, open_dict

from aligned.config import ConfigError, build
from aligned.training import run_directory
from aligned.training.atomic_files import AtomicCheckpointIO
from aligned.training.callbacks import EpochSeed, RunConfigInCheckpoint, TrainingTime
from aligned.training.hpc_checkpoints import discard_hpc_checkpoints
from aligned.training.interruption import Interrupted
from aligned.training.loggers import build_logger, logger_callbacks
from aligned.training.results import format_table, layer_values, write_results
from aligned.training.resume import (
    AUTO,
    RelocatableCheckpoint,
    check_same_settings,
    keep_csv_history,
    resume_checkpoint,
    run_dir_of,
)
from aligned.training.system import LayerwiseClassifier, headline_key
from aligned.training.time_limit import raise_if_cut_short
from aligned.typed_settings import TRAIN_KEYS, check_seed, check_settings

log = logging.getLogger(__name__)


# Words of Lightning's errors about hardware, which get the accelerator/devices hint.
HARDWARE_WORDS = ("accelerator", "device", "gpu", "cuda", "mps", "tpu")


def train(cfg: DictConfig) -> dict[str, Any] | None:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.loss``; returns the results dict.

    With ``cfg.resume`` (a run directory or a checkpoint file) training continues from that
    checkpoint and writes into the resumed run's directory. None after
    ``trainer.fast_dev_run``, which writes no results.
    """
    try:
        check_settings(cfg, TRAIN_KEYS, ("model", "data", "loss", "optim", "trainer", "logger"))
        check_seed(cfg)
        check_input_kinds(cfg)
        check_evaluation_batches(cfg)
        resume_from = resume_checkpoint(cfg.get("resume"), cfg.run_dir)
        run_dir = run_dir_of(resume_from) if resume_from else Path(cfg.run_dir).resolve()
        # resume=auto with nothing to resume (a requeued job stopped inside its first epoch)
        # starts afresh over what that attempt left.
        fresh_auto = cfg.get("resume") == AUTO and resume_from is None
        run_directory.claim(run_dir, resuming=resume_from is not None,
                            overwrite=cfg.get("overwrite") is True or fresh_auto)
        return train_in(cfg, run_dir, resume_from)
    finally:
        # A command refused or stopped before its run started leaves its directories as they
        # were (what the RunDirectoryGuard or claim set aside goes back); the next job of a
        # multirun may run in this process.
        run_directory.release_all()


def train_in(cfg: DictConfig, run_dir: Path, resume_from: Path | None
             ) -> dict[str, Any] | None:
    """``train`` in ``run_dir``, which this process holds."""
    resumed = check_same_settings(cfg, resume_from) if resume_from else None
    # Where the resumed run stopped; the checkpoint itself loads again in fit(), so it is not
    # held in memory meanwhile.
    resumed_at = (resumed["epoch"], resumed["global_step"]) if resumed else None
    resumed_logger = resumed["run_config"].get("logger") if resumed else None  # its W&B run id
    del resumed
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
    parameters = {"total": sum(p.numel() for p in system.parameters()),
                  "shared_head": system.backbone.head_parameters(), "objective_extra": extra}
    logger = build_logger(cfg, parameters, resumed_logger)  # before cfg is stored in checkpoints
    timer = TrainingTime()
    callbacks = [checkpoint, latest, RunConfigInCheckpoint(cfg), EpochSeed(cfg.seed), timer,
                 run_directory.CommitWhenTrainingStarts(run_directory.claimed()),
                 *user_callbacks(cfg, logger), *logger_callbacks(logger)]
    try:
        trainer: L.Trainer = build(
            cfg.trainer, surface=(MisconfigurationException,), default_root_dir=str(run_dir),
            logger=logger, callbacks=callbacks,
            **({} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}),
        )
    except MisconfigurationException as error:
        hardware = any(word in str(error).lower() for word in HARDWARE_WORDS)
        raise ConfigError(
            f"The trainer settings do not fit this machine: {error} Set trainer.accelerator and "
            "trainer.devices to what it has (e.g. trainer.accelerator=cpu trainer.devices=1)."
            if hardware else f"Invalid trainer settings: {error}"
        ) from None
    if logger:
        if resumed_at is not None:
            keep_csv_history(logger, *resumed_at)
        logger.log_hyperparams({"objective_extra_parameters": extra})
    discard_hpc_checkpoints(run_dir)  # mid-epoch: never what a run resumes from

    fitted = False
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=resume_from)
        fitted = True
        raise_if_cut_short(trainer, run_dir)  # callbacks=timer stopped it: no results, not done
        if trainer.fast_dev_run:  # Lightning's smoke test: no checkpoint, nothing to test
            print(f"trainer.fast_dev_run: {trainer.num_training_batches} training and "
                  f"{sum(trainer.num_val_batches)} validation batch(es) ran; a smoke test "
                  "saves no checkpoint and no results.json.")
            return None
        train_time = timer.seconds
        best = best_checkpoint(checkpoint, latest)
        results = evaluate_best(trainer, system, datamodule, best, cfg, metrics, train_time)
    except Interrupted as stop:  # say what is saved; train.py says how to resume
        stop.run_dir = run_dir
        stop.epoch = None if fitted else trainer.current_epoch + 1  # None: in the final tests
        stop.saved = Path(latest.best_model_path or run_dir / "checkpoints/last.ckpt").is_file()
        raise
    finally:
        finish_wandb(logger)
    run_directory.commit()  # as at the first step; a resumed run may have had none left to run
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
            f"{kinds['data']}: pair a text model (bert, minilm) with data=glue or bbc_news, a "
            "causal LM (gpt2, smollm2) with data=text, and an image model (vit, vit_s, vit_b, "
            "deit_s, deit_b) with digits, mnist, cifar10, cifar100 or imagenet."
        )


def check_evaluation_batches(cfg: DictConfig) -> None:
    for split in ("val", "test"):
        if cfg.trainer.get(f"limit_{split}_batches") == 0:
            raise ConfigError(
                f"trainer.limit_{split}_batches=0 leaves no {split} batches, which the results "
                "need (val picks the best epoch); use a fraction or a count above 0."
            )


def user_callbacks(cfg: DictConfig, logger: Any) -> list[Callback]:
    """The callbacks of the ``callbacks`` group and of ``trainer.callbacks``, added to the
    project's own (Hydra would otherwise replace a list given under trainer). Callbacks that
    log (the learning-rate monitor) are left out without a logger."""
    nodes = list((cfg.get("callbacks") or {}).values()) + list(cfg.trainer.get("callbacks") or [])
    built = [build(node) for node in nodes if node]
    if logger:
        return built
    return [callback for callback in built if not isinstance(callback, LearningRateMonitor)]


def finish_wandb(logger: Any) -> None:
    """Close the W&B run so the next job of a multirun starts its own run (never merges)."""
    if isinstance(logger, WandbLogger):
        import wandb

        wandb.finish()


def check_classes(system: LayerwiseClassifier, datamodule: Any) -> None:
    # A causal LM's classes are its vocabulary, which the text data does not fix (the model
    # checks the token ids it is given).
    model_classes = system.backbone.num_classes
    data_classes = getattr(datamodule, "num_classes", model_classes)
    if model_classes != data_classes:
        raise ConfigError(
            f"The model predicts {model_classes} classes but the data has {data_classes}. "
            "Leave model.num_classes at its default, ${data.num_classes}."
        )
