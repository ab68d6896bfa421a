"""The layer-wise analysis of one model on one split: its pass (samples, or a causal LM's
next-token positions), the read-outs summarised, and early exit when enabled."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from aligned.analysis.layerwise_pass import LayerwiseOutputs, run_layerwise_pass, summarize
from aligned.analysis.measure_pass import ExtraMeasures
from aligned.analysis.token_pass import run_token_pass, sequence_subset, token_summary
from aligned.config import ConfigError, positive_int
from aligned.data.split_overlap import training_overlap
from aligned.early_exit.parameter_count import parameter_summary
from aligned.evaluation.loading import LoadedCheckpoint, evaluation_dataloader
from aligned.evaluation.operating_points import LM_EXIT_RUN, early_exit_evaluation
from aligned.placement import Placement
from aligned.training.system import LayerwiseClassifier, require_classifier

log = logging.getLogger(__name__)


@dataclass
class ModelAnalysis:
    """What analysing one model gives: ``summary`` (its part of evaluation.json), ``outputs``
    (what the pass accumulated: class and layer means for the figures and the cross-model pass)
    and the ``run_config`` it was analysed with."""

    summary: dict[str, Any]
    outputs: LayerwiseOutputs
    run_config: dict


def analyse_checkpoint(
    loaded: LoadedCheckpoint, cfg: DictConfig, placement: Placement | None = None,
) -> ModelAnalysis:
    placement = placement or Placement()
    system, run_config, data_overrides = loaded.system, loaded.run_config, loaded.data_overrides
    require_classifier(system, "evaluate.py's layer-wise analysis")
    if system.next_token and (cfg.get("early_exit") or {}).get("run", False):
        raise ConfigError(f"early_exit.run=true runs a classifier's early-exit inference; for a "
                          f"causal LM, {LM_EXIT_RUN}. Leave early_exit.run=false.")
    system.to(placement.device)
    autocast = placement.autocast
    loader = evaluation_dataloader(run_config, data_overrides, cfg.split)
    max_sequences, max_tokens = language_model_limits(system, cfg)
    if system.next_token:  # a causal LM: each next-token position is a sample
        outputs = run_token_pass(system, sequence_subset(loader, max_sequences),
                                 cfg.cos_centering, max_tokens, autocast=autocast,
                                 extra_measures=extra_measures(cfg))
    else:
        outputs = run_layerwise_pass(system, loader, cfg.cos_centering,
                                     autocast=autocast, extra_measures=extra_measures(cfg))
    summary = summarize(outputs, cfg.minimal_depth_epsilon, cfg.monotone_tolerance)
    if system.next_token:
        summary |= token_summary(system, outputs, max_tokens, max_sequences)
    summary = {
        "checkpoint": str(Path(loaded.path).resolve()) if not loaded.pretrained else None,
        **({"pretrained": loaded.path} if loaded.pretrained else {}),
        "names": run_config.get("names", {}),
        "seed": run_config.get("seed"),
        "split": cfg.split,
        "data_overrides": {k: v for k, v in data_overrides.items() if v is not None},
        **placement.describe(),
        **summary,
        "parameters": parameter_summary(system.backbone),
    }
    if loaded.split_changes:  # allowed by allow_other_split: say how far from honest it is
        overlap = training_overlap(run_config["data"], summary["data_overrides"], cfg.split)
        summary["split_overlap"] = overlap
        if overlap["samples"] is not None:
            log.warning("The %s split evaluated (%s) holds %d of %d samples the checkpoint "
                        "trained on.", cfg.split, ", ".join(f"data.{k}={v}" for k, (_, v) in
                                                           loaded.split_changes.items()),
                        overlap["in_training_split"], overlap["samples"])
    if (cfg.get("early_exit") or {}).get("enabled", False):
        summary["early_exit"] = early_exit_evaluation(loaded, outputs, cfg, max_sequences,
                                                      autocast)
    return ModelAnalysis(summary, outputs, run_config)


def language_model_limits(system: LayerwiseClassifier, cfg: DictConfig
                          ) -> tuple[int | None, int]:
    """(max_sequences, similarity.max_tokens): the caps of a causal-LM evaluation; a ConfigError
    when max_sequences is set for a classifier, whose splits it does not cap."""
    max_sequences = cfg.get("max_sequences")
    max_tokens = (cfg.get("similarity") or {}).get("max_tokens", 256)
    if system.next_token:
        if max_sequences is not None:
            positive_int("max_sequences", max_sequences)
        return max_sequences, max_tokens
    if max_sequences is not None:
        raise ConfigError(f"max_sequences={max_sequences} caps the sequences of a causal-LM "
                          "evaluation; this model is a classifier, evaluated on its whole "
                          "split. Remove max_sequences.")
    return None, max_tokens


def extra_measures(cfg: DictConfig) -> ExtraMeasures | None:
    """similarity.measures beyond COS and CKA (which every evaluation computes), or None."""
    settings = cfg.get("similarity") or {}
    names = list(settings.get("measures") or [])
    extra = ExtraMeasures(names, settings.get("max_samples", 5000))
    return extra if extra.names else None
