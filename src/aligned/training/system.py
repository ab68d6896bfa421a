"""The one LightningModule: a layer-wise backbone trained with any objective."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from aligned.config import ConfigError, TrainingDiverged, build
from aligned.next_token import next_token_pairs
from aligned.training.metrics import METRIC_KEYS, build_metric, metric_input
from aligned.training.optim import adamw_with_warmup_cosine

SPLITS = ("val", "test")


def layer_key(split: str, layer: int, metric: str = "accuracy") -> str:
    """Logged key of one layer's metric, e.g. ``val_layers/acc_L03`` (layers 1..L)."""
    return f"{split}_layers/{METRIC_KEYS[metric]}_L{layer:02d}"


def headline_key(split: str, metric: str = "accuracy") -> str:
    """Logged key of the final layer's metric, e.g. ``val/acc``."""
    return f"{split}/{METRIC_KEYS[metric]}"


def _plain(node: Any) -> Any:
    """Configs are stored in checkpoints as plain containers, so they load without Hydra."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def require_classifier(system: LayerwiseClassifier, purpose: str) -> None:
    """Exit rules and the layer-wise analysis read class probabilities; a regression model
    (one output, e.g. STS-B) has none, and its "predictions" would be meaningless."""
    if system.backbone.num_classes == 1:
        raise ConfigError(f"{purpose} needs a classifier; this checkpoint is a regression model "
                          "(one output, e.g. GLUE STS-B).")


class LayerwiseClassifier(L.LightningModule):
    """Builds backbone and objective from their configs (so a checkpoint loads from its saved
    hyper-parameters alone), trains with the objective, and tracks every layer's metrics.

    ``metrics`` come from the data (accuracy by default; GLUE tasks name theirs); the first
    is the headline. A model with one output is a regression (STS-B).

    A causal LM backbone (``task == "causal_lm"``) predicts the next token at every position:
    each token with a target is one prediction (``next_token_pairs``), and the loss and the
    metrics take one layer's logits at a time, since all L layers' logits over the vocabulary
    would not fit in memory.
    """

    def __init__(
        self,
        model: dict,
        loss: dict,
        optim: dict | None = None,
        metrics: tuple[str, ...] | list[str] = ("accuracy",),
    ) -> None:
        super().__init__()
        model, loss, optim = _plain(model), _plain(loss), _plain(optim or {})
        self.metric_names = tuple(metrics)
        self.save_hyperparameters(
            {"model": model, "loss": loss, "optim": optim, "metrics": list(self.metric_names)}
        )
        self.backbone = build(model)
        self.objective = build(
            loss,
            num_layers=self.backbone.num_layers,
            feature_dim=self.backbone.feature_dim,
            num_classes=self.backbone.num_classes,
        )
        self.optim = optim
        self.next_token = getattr(self.backbone, "task", "classification") == "causal_lm"
        # One metric object per (split, metric, layer): Lightning computes, syncs across ranks
        # and resets them at the end of each epoch.
        self.layer_metrics = nn.ModuleDict({
            f"{split}_{name}": nn.ModuleList(
                build_metric(name, self.backbone.num_classes)
                for _ in range(self.backbone.num_layers)
            )
            for split in SPLITS
            for name in self.metric_names
        })

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    def forward(self, inputs: Any) -> torch.Tensor:
        """Per-layer logits (L, B, C); (L, B, T, V) for a causal LM."""
        features = self.backbone.layer_features(inputs)  # (L, B, D) or (L, B, T, D)
        return self.objective.layer_logits(features, self.backbone.head)

    def token_features(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A causal LM batch as predictions: features (L, N, D) of the N tokens with a target,
        and those targets, the next tokens (N,)."""
        inputs, labels = unpack(batch)
        features = self.backbone.layer_features(inputs)  # (L, B, T, D)
        return next_token_pairs(features, labels, inputs.get("attention_mask"))

    def layer_logits_and_target(self, batch: Any) -> tuple[Iterable[torch.Tensor], torch.Tensor]:
        """Each layer's logits, in order, and the target: (L, B, C) and (B,) for a classifier;
        for a causal LM, (N, V) logits computed one layer at a time, and the N next tokens."""
        if not self.next_token:
            inputs, target = unpack(batch)
            return self(inputs), target
        features, target = self.token_features(batch)
        head, layers = self.backbone.head, range(1, self.num_layers + 1)
        return (self.objective.logits_at(layer, features[layer - 1], head) for layer in layers
                ), target

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.next_token:
            features, target = self.token_features(batch)  # (L, N, D), (N,)
            loss = self.objective.feature_loss(features, self.backbone.head, target,
                                               step=self.global_step)
        else:
            inputs, target = unpack(batch)
            loss = self.objective(self(inputs), target, step=self.global_step)
        if not torch.isfinite(loss):  # stop before a NaN reaches the weights or a checkpoint
            lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else None
            raise TrainingDiverged(
                f"The training loss became {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step} (learning rate {lr:.3g}). Lower optim.lr or check the data; "
                "the checkpoints written so far are kept (resume=<run dir> continues from "
                "last.ckpt)."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(target))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: Any, split: str) -> None:
        layer_logits, target = self.layer_logits_and_target(batch)
        for layer, logits in enumerate(layer_logits, start=1):  # (B, C) or (N, V)
            prediction = metric_input(logits)
            for name in self.metric_names:
                metric = self.layer_metrics[f"{split}_{name}"][layer - 1]
                # Perplexity reads the logits; the other metrics the predicted class.
                metric.update(logits if getattr(metric, "reads_logits", False) else prediction,
                              target)
                self.log(layer_key(split, layer, name), metric, on_step=False, on_epoch=True)
        for name in self.metric_names:
            self.log(headline_key(split, name), self.layer_metrics[f"{split}_{name}"][-1],
                     on_step=False, on_epoch=True, prog_bar=name == self.metric_names[0])

    def configure_optimizers(self) -> dict:
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):  # max_epochs=-1 with no max_steps: Lightning's "forever"
            raise ConfigError("The learning-rate schedule (warm-up, decay) needs a finite "
                              "training length: set trainer.max_epochs >= 1 or trainer.max_steps "
                              f"(got {steps} steps).")
        return adamw_with_warmup_cosine(self, total_steps=int(steps), **self.optim)


def unpack(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, target) from an image batch ``(x, y)`` or a tokenised batch with ``labels``."""
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch["labels"]
    inputs, target = batch
    return inputs, target
