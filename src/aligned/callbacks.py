"""Lightning callbacks that make runs reproducible, resumable and self-describing."""

from __future__ import annotations

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
    """Reseeds every RNG from (seed, epoch) before each epoch draws its shuffle order.

    The epoch's shuffling, augmentation and dropout then do not depend on what ran before, so
    a run resumed from an end-of-epoch checkpoint continues exactly as an uninterrupted one.
    Lightning creates the first epoch's data iterator (and draws its order) before
    ``on_train_epoch_start``, so the first epoch of a process is seeded at fit start, again
    after the sanity check (creating its val iterator draws from the global RNG).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.first_epoch = 0

    def _seed(self, epoch: int) -> None:
        L.seed_everything(self.seed + 1000 * epoch, workers=True, verbose=False)

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        self.first_epoch = checkpoint["epoch"] + 1  # checkpoints are written at epoch end

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._seed(self.first_epoch)

    def on_sanity_check_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._seed(self.first_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch > self.first_epoch:
            self._seed(trainer.current_epoch)
