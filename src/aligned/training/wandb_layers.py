"""W&B panels of the per-layer picture, the figure the method is about: at every validation a
table (epoch, split, layer, metrics) and a line chart of the headline metric against the layer;
per-layer summaries that keep each layer's best value; the evaluation of the best checkpoint
after fit under ``best/`` keys (summary, table, chart) rather than as a last history point."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from aligned.training.metrics import METRIC_KEYS
from aligned.training.system import headline_key, layer_key

STEP = "trainer/global_step"  # the x axis Lightning's WandbLogger defines for every key
BEST = "best/"  # prefix of the keys of the checkpoint evaluated after fit


class WandbLayerPanels(Callback):
    def __init__(self, logger: WandbLogger) -> None:  # loggers.LayerwiseWandbLogger
        self.logger = logger
        self.defined = False
        self.best_rows: list[list[Any]] = []  # val, then test rows of the evaluated checkpoint
        self.checkpoint_epoch: int | None = None

    def logs(self, trainer: L.Trainer) -> bool:
        """Rank 0 of a trainer that logs to this run (trainer.fast_dev_run swaps the loggers
        for a dummy: then no W&B run is created)."""
        return trainer.is_global_zero and any(each is self.logger for each in trainer.loggers)

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self.defined or not self.logs(trainer):
            return
        run = self.logger.experiment
        # Names are defined one by one: W&B applies the first definition whose glob matches a
        # key, and Lightning has already defined "*" (for the x axis) without a summary.
        for name in module.metric_names:
            best = best_summary(module, name)
            run.define_metric(headline_key("val", name), step_metric=STEP, summary=best)
            for layer in range(1, module.num_layers + 1):
                run.define_metric(layer_key("val", layer, name), step_metric=STEP, summary=best)
        self.defined = True

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # trainer.validate() after fit: the best checkpoint, not another epoch of training.
        self.logger.summary_prefix = None if trainer.state.fn == TrainerFn.FITTING else BEST

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.logger.summary_prefix = BEST

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # After Lightning has logged the epoch's metrics, so callback_metrics holds them.
        if not trainer.sanity_checking:
            self.log_layers(trainer, module, "val")
        self.logger.summary_prefix = None

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.log_layers(trainer, module, "test")
        self.logger.summary_prefix = None

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # The evaluated checkpoint's own epoch (its file's epochNNN). Lightning counts a
        # restored end-of-epoch checkpoint as the next epoch and logs that as "epoch".
        self.checkpoint_epoch = checkpoint.get("epoch")

    def log_layers(self, trainer: L.Trainer, module: L.LightningModule, split: str) -> None:
        """The chart of the headline metric against the layer, drawn from a table of every
        metric of every layer (W&B keeps that table beside the chart, as ``<key>_table``)."""
        if not self.logs(trainer):
            return
        import wandb

        training = self.logger.summary_prefix is None
        epoch = trainer.current_epoch if training else self.checkpoint_epoch
        rows = layer_rows(trainer.callback_metrics, module, split, epoch)
        columns = ["epoch", "split", "layer", *(METRIC_KEYS[name] for name in module.metric_names)]
        headline = METRIC_KEYS[module.metric_names[0]]
        run = self.logger.experiment
        if training:
            table = wandb.Table(columns=columns, data=rows)
            chart = wandb.plot.line(table, "layer", headline,
                                    title=f"{split} {headline} by layer (latest epoch)")
            run.log({f"{split}_layers/by_layer": chart, STEP: trainer.global_step})
            return
        # The evaluated checkpoint: one table of its val and test rows, a line per split.
        self.best_rows += rows
        table = wandb.Table(columns=columns, data=self.best_rows)
        chart = wandb.plot.line(table, "layer", headline, stroke="split",
                                title=f"{headline} by layer (best checkpoint, epoch {epoch})")
        run.summary[f"{BEST}epoch"] = epoch
        run.log({f"{BEST}by_layer": chart, STEP: trainer.global_step})


def best_summary(module: L.LightningModule, name: str) -> str:
    """W&B's summary that keeps a metric's best value: "min" for one that is better lower
    (perplexity), else "max" (accuracy, F1, MCC, correlations; torchmetrics leaves Pearson's
    direction unset)."""
    metric = module.layer_metrics[f"val_{name}"][0]
    return "min" if getattr(metric, "higher_is_better", None) is False else "max"


def layer_rows(logged: dict[str, Any], module: L.LightningModule, split: str,
               epoch: int | None) -> list[list[Any]]:
    """One row per layer 1..L: epoch, split, layer, then each metric's value."""
    return [
        [epoch, split, layer,
         *(float(logged[layer_key(split, layer, name)]) for name in module.metric_names)]
        for layer in range(1, module.num_layers + 1)
    ]
