"""Offline early exit, for classifiers and causal LMs alike: every rule over its threshold grid,
simulated on the cached signals of every sample and layer (``ExitSignals``) through the loop the
real inference uses (``rules.exit_layer_by_layer``); each rule's operating point chosen on the
validation split and reported on test (MSDNet practice).

Costs are relative to the full-depth model: speed-up = L / mean exit layer, and the expected
FLOPs are approximated by the fraction of blocks run, mean exit layer / L. That leaves out the
embedding (paid by every sample) and the read-out + head at every layer a sample passes, small
next to a block for a classifier; an LM's head over its vocabulary is not (SmolLM2's 49,152 x
576 is 8 blocks' worth of weights), so every point also counts the head calls per sample.
For an LM the signals are teacher-forced from a full forward: exact for early-exit decoding
under ``kv="recompute"`` (``aligned.early_exit.decoding``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from aligned.config import ConfigError
from aligned.early_exit.rules import (
    RULES,
    ExitResult,
    ExitRule,
    LayerSignals,
    exit_layer_by_layer,
    first_read,
)
from aligned.early_exit.signals import ExitSignals

FLOPS_NOTE = (
    "relative FLOPs = mean exit layer / L (fraction of blocks run; embedding, per-layer read-out "
    "and head costs left out: see mean_head_calls)"
)
SELECTION = "smallest val mean exit layer with val accuracy >= full depth - max_drop"


def simulate(rule: ExitRule, signals: ExitSignals) -> ExitResult:
    """The rule applied to cached signals, through the same loop the real inference uses."""
    cosine = torch.from_numpy(signals.cosine)
    rows = torch.arange(len(signals))

    def signals_after(layer: int, keep: torch.Tensor | None, read: bool) -> LayerSignals | None:
        nonlocal rows
        if keep is not None:
            rows = rows[keep]
        if not read:
            return None
        return LayerSignals(statistics=signals.layer(layer, rows), cosine=cosine[rows, layer - 1])

    return exit_layer_by_layer(rule, signals.num_layers, len(signals), signals_after)


def measure(result: ExitResult, labels: np.ndarray, num_layers: int) -> dict[str, float]:
    """Accuracy and cost of one simulated (or real) early-exit run."""
    mean_exit = float(result.exit_layers.double().mean())
    return {
        "accuracy": float((result.predictions.numpy() == labels).mean()),
        "mean_exit_layer": mean_exit,
        "speedup": num_layers / mean_exit,
        "relative_flops": mean_exit / num_layers,
    }


def operating_point(rule: ExitRule, signals: ExitSignals) -> dict[str, float]:
    """``measure`` of the simulated rule, with how often its prediction is the full-depth one
    (agreement) and the mean number of head calls per sample: a rule that reads the head reads
    it at every layer from its first read to the exit; the state rule only at the exit (the
    decision loop computes a layer's logits on first use)."""
    result = simulate(rule, signals)
    point = measure(result, signals.labels, signals.num_layers)
    point["agreement"] = float((result.predictions.numpy() == signals.top1[:, -1]).mean())
    exits = result.exit_layers.double()
    point["mean_head_calls"] = (float((exits - first_read(rule, signals.num_layers) + 1).mean())
                                if rule.reads_head else 1.0)
    return point


def sweep(rule_name: str, signals: ExitSignals) -> list[dict[str, float]]:
    """One point per threshold of the rule's grid: threshold, accuracy, mean exit layer, ..."""
    rule_class = RULES[rule_name]
    return [{"threshold": threshold, **operating_point(rule_class(threshold), signals)}
            for threshold in rule_class.grid(signals.num_layers, signals.num_classes)]


def choose_threshold(
    val_curve: list[dict[str, float]], full_accuracy: float, max_drop: float
) -> float | None:
    """The threshold with the smallest mean exit layer whose validation accuracy is within
    ``max_drop`` of full depth's (ties: the more accurate); None when no threshold qualifies."""
    allowed = [p for p in val_curve if p["accuracy"] >= full_accuracy - max_drop - 1e-12]
    if not allowed:
        return None
    best = min(allowed, key=lambda p: (p["mean_exit_layer"], -p["accuracy"]))
    return best["threshold"]


def early_exit_summary(
    val: ExitSignals, test: ExitSignals, max_drop: float, rules: Iterable[str] = tuple(RULES)
) -> dict[str, Any]:
    """``evaluation.json``'s ``early_exit``: per rule the val and test curves and the operating
    point chosen on val, measured on test."""
    full_val, full_test = val.full_depth_accuracy(), test.full_depth_accuracy()
    summary = {}
    for name in rules:
        if name not in RULES:
            raise ConfigError(f"Unknown exit rule '{name}'; use one of {', '.join(RULES)}.")
        val_curve, test_curve = sweep(name, val), sweep(name, test)
        threshold = choose_threshold(val_curve, full_val, max_drop)
        chosen = None
        if threshold is not None:
            val_point = next(p for p in val_curve if p["threshold"] == threshold)
            test_point = next(p for p in test_curve if p["threshold"] == threshold)
            chosen = {"threshold": threshold, "val_accuracy": val_point["accuracy"],
                      "val_mean_exit_layer": val_point["mean_exit_layer"], **test_point}
        summary[name] = {"val_curve": val_curve, "test_curve": test_curve, "chosen": chosen}
    return {
        "max_drop": max_drop,
        "selection": SELECTION,
        "num_layers": test.num_layers,
        "samples": {"val": len(val), "test": len(test)},
        "full_depth_accuracy": {"val": full_val, "test": full_test},
        "flops_note": FLOPS_NOTE,
        "rules": summary,
    }


def accuracy_at_depth(curve: list[dict[str, float]], mean_exit_layer: float) -> float | None:
    """Accuracy of a curve at a given mean exit layer, linear between its points (the upper
    envelope: at each depth, the best point reachable); None outside the curve's range."""
    points = sorted((p["mean_exit_layer"], p["accuracy"]) for p in curve)
    depths = np.array([d for d, _ in points])
    best = np.maximum.accumulate(np.array([a for _, a in points]))
    if not depths[0] <= mean_exit_layer <= depths[-1]:
        return None
    return float(np.interp(mean_exit_layer, depths, best))


def matched_comparison(
    summary: dict[str, Any], reference: dict[str, Any], region: float = 0.02
) -> dict[str, Any]:
    """Test accuracy of ``summary``'s model minus ``reference``'s at matched mean exit layer, per
    rule, on the part of the curves where both are within ``region`` of their full-depth test
    accuracy (the paper's claim: one shared head on par with per-layer heads).

    Compared at every mean exit layer either curve has in that region, each curve read through
    its upper envelope (``accuracy_at_depth``).
    """
    rules = {}
    for name, entry in summary["rules"].items():
        if name not in reference["rules"]:
            continue
        curves = (entry["test_curve"], reference["rules"][name]["test_curve"])
        fulls = (summary["full_depth_accuracy"]["test"], reference["full_depth_accuracy"]["test"])
        depths = sorted({p["mean_exit_layer"] for curve in curves for p in curve})
        gaps = []
        for depth in depths:
            accuracies = [accuracy_at_depth(curve, depth) for curve in curves]
            if any(a is None or a < full - region
                   for a, full in zip(accuracies, fulls, strict=True)):
                continue
            gaps.append({"mean_exit_layer": depth, "accuracy": accuracies[0],
                         "reference_accuracy": accuracies[1],
                         "difference": accuracies[0] - accuracies[1]})
        differences = [g["difference"] for g in gaps]
        rules[name] = {
            "points": gaps,
            "min_difference": min(differences) if gaps else None,
            "max_difference": max(differences) if gaps else None,
            "max_abs_difference": max(map(abs, differences)) if gaps else None,
        }
    return {"region": region, "rules": rules,
            "note": "difference = this model's test accuracy - the reference's, at matched mean "
                    "exit layer, where both are within `region` of their full depth"}
