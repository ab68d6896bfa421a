"""``compare_to=``: a second model evaluated beside the first. Both must be comparable (the same
data and split; the same depth for the matched early-exit comparison); beside each model's own
analysis, every layer of one is compared with every layer of the other."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig

from aligned.analysis.cross_model_pass import run_cross_model_pass
from aligned.analysis.layerwise_pass import feature_batches
from aligned.analysis.token_pass import sampled_token_batches, sequence_subset
from aligned.config import ConfigError, with_defaults
from aligned.early_exit.offline import matched_comparison
from aligned.evaluation.loading import LoadedCheckpoint, evaluation_dataloader, load_for_evaluation
from aligned.evaluation.model_analysis import ModelAnalysis, extra_measures, language_model_limits
from aligned.placement import Placement

log = logging.getLogger(__name__)


def load_comparison(first: LoadedCheckpoint, cfg: DictConfig) -> LoadedCheckpoint:
    """The ``compare_to`` checkpoint, checked comparable with ``first`` on every split read."""
    second = load_for_evaluation(cfg.compare_to, cfg, moved_from=first.model_path,
                                 key="compare_to")
    # The figures are on cfg.split; the matched early-exit comparison is on test.
    early_exit = (cfg.get("early_exit") or {}).get("enabled", False)  # as in the pass
    for split in {cfg.split, "test"} if early_exit else {cfg.split}:
        check_comparable(first, second, split, same_depth=False)
    return second


def compare(loaded: list[LoadedCheckpoint], analysed: list[ModelAnalysis], cfg: DictConfig,
            placement: Placement) -> dict[str, Any]:
    """evaluation.json's entries on the second model: its summary (``compare_to``), the
    cross-model similarity and, at equal depths, the matched early-exit comparison."""
    first, second = (model.system for model in loaded)
    entries = {"compare_to": analysed[1].summary,
               "cross_similarity": cross_similarity(loaded, analysed, cfg, placement)}
    same_depth = first.num_layers == second.num_layers
    if not same_depth:
        log.info("compare_to: the models have %d and %d layers; the matched early-exit "
                 "comparison needs the same depth and is left out.",
                 first.num_layers, second.num_layers)
    if same_depth and all("early_exit" in model.summary for model in analysed):
        # Each rule's test curve against the other model's at matched mean exit layer.
        entries["early_exit_matched"] = matched_comparison(
            analysed[0].summary["early_exit"], analysed[1].summary["early_exit"]
        )
    return entries


def cross_similarity(loaded: list[LoadedCheckpoint], analysed: list[ModelAnalysis],
                     cfg: DictConfig, placement: Placement) -> dict[str, Any]:
    """Every layer of model A against every layer of model B on the split's samples (causal
    LMs: on the token sample CKA reads within each model, the same positions for both)."""
    loaders = tuple(evaluation_dataloader(c.run_config, c.data_overrides, cfg.split)
                    for c in loaded)
    means = tuple(model.outputs.layer_means for model in analysed)
    systems = (loaded[0].system, loaded[1].system)
    stream = feature_batches
    if all(system.next_token for system in systems):
        max_sequences, max_tokens = language_model_limits(systems[0], cfg)
        loaders = tuple(sequence_subset(loader, max_sequences) for loader in loaders)
        stream = partial(sampled_token_batches, max_tokens=max_tokens)
    return run_cross_model_pass(systems, loaders, means, cfg.cos_centering,
                                autocast=placement.autocast, extra_measures=extra_measures(cfg),
                                stream=stream)


def check_comparable(first: LoadedCheckpoint, second: LoadedCheckpoint, split: str,
                     same_depth: bool = True) -> None:
    """compare_to draws both models on the same figures and compares them sample by sample: they
    must share the data (so the same split); ``same_depth`` (matched early exit, the benchmark)
    also the number of layers. Layer-wise figures and cross-model similarity take any depths."""
    a, b = first.system, second.system
    data_a, data_b = data_of(first.run_config), data_of(second.run_config)
    if data_a != data_b or a.backbone.num_classes != b.backbone.num_classes:
        raise ConfigError(
            f"compare_to: '{second.path}' was trained on {data_b[0]} {data_b[1] or ''} "
            f"({b.backbone.num_classes} classes), '{first.path}' on {data_a[0]} "
            f"{data_a[1] or ''} ({a.backbone.num_classes} classes); compare models of the same "
            "data set."
        )
    split_a, split_b = split_of(first.run_config, split), split_of(second.run_config, split)
    if split_a != split_b:
        differ = ", ".join(f"{k} {split_a[k]} vs {split_b[k]}" for k in split_a
                           if split_a[k] != split_b[k])
        raise ConfigError(
            f"compare_to: the models' {split} splits hold other samples ({differ}); compare "
            "models whose data.* split settings match."
        )
    if same_depth and a.num_layers != b.num_layers:
        raise ConfigError(
            f"compare_to: the models have {a.num_layers} and {b.num_layers} layers; the "
            "layer-wise figures and the matched early-exit comparison need the same depth."
        )


def data_of(run_config: dict) -> tuple:
    """What a model was trained and is evaluated on: the data module and, for GLUE, the task."""
    data = run_config["data"]
    return data.get("_target_"), data.get("task")


def split_of(run_config: dict, split: str) -> dict[str, Any]:
    """The data settings that choose the samples of ``split`` (e.g. digits: the split seed and
    fractions; CIFAR test: none, it is the official test set), defaults filled in."""
    data = with_defaults(run_config["data"])
    keys = getattr(get_class(data["_target_"]), "split_settings", {}).get(split, ())
    return {key: data.get(key) for key in keys}
