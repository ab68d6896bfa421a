"""Early exit in an evaluation: each rule swept on val, its operating point chosen there and
reported on test (docs/method.md, "Early exit"); with ``early_exit.run``, also run for real at
that point and recorded beside the simulation."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from omegaconf import DictConfig

from aligned.analysis.layerwise_pass import LayerwiseOutputs
from aligned.analysis.token_pass import sequence_subset
from aligned.early_exit.decoding import system_logits
from aligned.early_exit.inference import EarlyExitClassifier
from aligned.early_exit.offline import early_exit_summary, measure, simulate
from aligned.early_exit.rules import make_rule
from aligned.early_exit.signals import (
    ExitSignals,
    collect_exit_signals,
    collect_token_signals,
    signals_of_outputs,
)
from aligned.evaluation.loading import SPLITS, LoadedCheckpoint, evaluation_dataloader
from aligned.training.system import LayerwiseClassifier

KV_NOTE = ("a causal LM's signals are teacher-forced from full-depth states: exact for "
           "early-exit decoding under kv=recompute")
LM_EXIT_RUN = ("early-exit decoding is aligned.early_exit.decoding, timed by "
               "benchmarks/decoding.py")


def early_exit_evaluation(
    loaded: LoadedCheckpoint, outputs: LayerwiseOutputs, cfg: DictConfig,
    max_sequences: int | None, autocast: Any,
) -> dict[str, Any]:
    """A summary's ``early_exit``: the analysed split's signals come from its pass (``outputs``),
    the other split's from a light pass of its own."""
    system, early_exit = loaded.system, cfg.get("early_exit") or {}
    signals = {cfg.split: signals_of_outputs(outputs, system.backbone.num_classes)}
    for split in SPLITS:
        if split not in signals:
            other = evaluation_dataloader(loaded.run_config, loaded.data_overrides, split)
            signals[split] = other_split_signals(system, other, max_sequences, autocast)
    summary = early_exit_summary(signals["val"], signals["test"], early_exit.get("max_drop", 0.01))
    if system.next_token:
        summary["kv_note"] = KV_NOTE
    if early_exit.get("run", False):
        test_loader = evaluation_dataloader(loaded.run_config, loaded.data_overrides, "test")
        run_at_operating_points(system, summary, signals["test"], test_loader, autocast)
    return summary


def other_split_signals(system: LayerwiseClassifier, loader: Any, max_sequences: int | None,
                        autocast: Any) -> ExitSignals:
    """The exit signals of the split the analysis did not read (val or test)."""
    if not system.next_token:
        return collect_exit_signals(system, loader, autocast=autocast)
    with autocast():  # blocks and heads (per-layer ones too); statistics widen to float32
        return collect_token_signals(system.backbone, sequence_subset(loader, max_sequences),
                                     system_logits(system))


def run_at_operating_points(
    system: LayerwiseClassifier, early_exit: dict, test: ExitSignals, loader: Any,
    autocast: Any = nullcontext,
) -> None:
    """Real early-exit inference at each rule's chosen operating point on test, recorded beside
    the simulation (``real``); in float32 a sample sitting on a threshold can flip (round-off)."""
    for name, entry in early_exit["rules"].items():
        if entry["chosen"] is None:
            continue
        rule = make_rule(name, entry["chosen"]["threshold"])
        real, labels = EarlyExitClassifier(system, rule, autocast).predict(loader)
        simulated = simulate(rule, test)
        entry["real"] = {
            **measure(real, labels.numpy(), test.num_layers),
            "same_predictions": float((real.predictions == simulated.predictions).double().mean()),
            "same_exit_layers": float((real.exit_layers == simulated.exit_layers).double().mean()),
            "equals_simulation": bool(torch.equal(real.predictions, simulated.predictions)
                                      and torch.equal(real.exit_layers, simulated.exit_layers)),
        }
