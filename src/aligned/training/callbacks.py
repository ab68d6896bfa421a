"""Lightning callbacks that make runs reproducible, resumable and self-describing."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf


class RunConfigInCheckpoint(Callback):
    """Stores the run's resolved config (data, names, seed, ...) in every checkpoint, so
    ``evaluate.py`` can rebuild the data from a checkpoint file alone."""

    def __init__(self, cfg: DictConfig) -> None:
        run = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        self.run_config = OmegaConf.to_container(run, resolve=True)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict):
        checkpoint["run_config"] = self.run_config


class EpochSeed(Callback):
    """Reseeds every RNG from (seed, epoch) at the start of each training epoch.

    An epoch's augmentation and dropout then do not depend on what ran before (sanity check,
    a resumed run's restart bookkeeping), so a run resumed from an end-of-epoch checkpoint
    continues exactly as an uninterrupted one. The shuffle order comes from
    ``EpochShuffleSampler``, which depends on (seed, epoch) alone.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        L.seed_everything(self.seed + 1000 * trainer.current_epoch, workers=True, verbose=False)


class TrainingTime(Callback):
    """Seconds of ``fit``, summed over a run and its resumptions: the total is stored in every
    checkpoint, so a resumed run's results.json counts the epochs trained before the kill."""

    def __init__(self) -> None:
        self.before = 0.0  # from the checkpoint resumed
        self.start: float | None = None
        self.trained = False  # a finished run "resumed" trains no step and adds no time

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.trained = True

    @property
    def seconds(self) -> float:
        if self.start is None or not self.trained:
            return self.before
        return self.before + time.perf_counter() - self.start

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.before = state_dict["seconds"]
