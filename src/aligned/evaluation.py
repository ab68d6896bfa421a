"""What ``evaluate.py`` runs: layer-wise analysis of one checkpoint, optionally beside another,
and early exit (rules swept on val, operating points reported on test; docs/method.md,
"Early exit")."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from aligned.analysis import plots
from aligned.analysis.cross_model_pass import run_cross_model_pass
from aligned.analysis.layerwise_pass import (
    LayerwiseOutputs,
    feature_batches,
    run_layerwise_pass,
    summarize,
)
from aligned.analysis.measure_pass import ExtraMeasures
from aligned.analysis.report import write_report
from aligned.analysis.token_pass import (
    run_token_pass,
    sampled_token_batches,
    sequence_subset,
    token_summary,
)
from aligned.config import (
    ConfigError,
    build,
    number,
    positive_int,
    target_parameters,
    with_defaults,
)
from aligned.data.split_overlap import check_split_overrides, training_overlap
from aligned.early_exit.inference import EarlyExitClassifier
from aligned.early_exit.offline import early_exit_summary, matched_comparison, measure, simulate
from aligned.early_exit.parameter_count import parameter_summary
from aligned.early_exit.rules import make_rule
from aligned.early_exit.signals import (
    ExitSignals,
    collect_exit_signals,
    collect_token_signals,
    signals_of_outputs,
)
from aligned.placement import Placement, resolve_placement
from aligned.training.checkpoints import RUNTIME_MODEL_KEYS, load_system, read_checkpoint
from aligned.training.json_files import write_json
from aligned.training.system import LayerwiseClassifier, require_classifier
from aligned.typed_settings import EVALUATE_KEYS, check_settings

log = logging.getLogger(__name__)

SPLITS = ("val", "test")
STANDARD_TARGET = "aligned.models.objectives.StandardObjective"


def evaluation_dataloader(run_config: dict, data_overrides: dict, split: str) -> Any:
    """The checkpoint's data module, with the user's overrides (e.g. another data_dir)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got '{split}'.")
    data_cfg = dict(run_config["data"])
    overrides = {k: v for k, v in data_overrides.items() if v is not None}
    settings = data_settings(data_cfg["_target_"])
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ConfigError(
            f"data.{unknown[0]}: this checkpoint's data ({data_cfg['_target_'].rsplit('.', 1)[-1]}"
            f") has no such setting; its settings: {', '.join(settings)}."
        )
    data_cfg.update(overrides)
    datamodule = build(OmegaConf.create(data_cfg))
    if data_overrides.get("batch_size") is not None and hasattr(datamodule, "eval_batch_size"):
        # Digits keeps its val/test batch size apart from training's; here the user means it.
        datamodule.eval_batch_size = positive_int("data.batch_size", data_overrides["batch_size"])
    datamodule.setup("validate" if split == "val" else "test")
    return datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready to analyse: its model, its run config, the data overrides it is
    evaluated with, and the HF model path it stored (None for a ViT)."""

    path: str
    run_config: dict
    system: LayerwiseClassifier
    data_overrides: dict
    model_path: str | None
    split_changes: dict = field(default_factory=dict)  # split settings changed by data.*
    pretrained: bool = False  # a model as it is (no ckpt_path): ``path`` names it


def analyse_checkpoint(
    loaded: LoadedCheckpoint, cfg: DictConfig,
    placement: Placement | None = None,
) -> tuple[dict[str, Any], LayerwiseOutputs, dict]:
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
    early_exit = cfg.get("early_exit") or {}
    if early_exit.get("enabled", False):
        signals = {cfg.split: signals_of_outputs(outputs, system.backbone.num_classes)}
        for split in SPLITS:  # the other split: a light pass, the exit signals only
            if split not in signals:
                other = evaluation_dataloader(run_config, data_overrides, split)
                signals[split] = other_split_signals(system, other, max_sequences, autocast)
        summary["early_exit"] = early_exit_summary(
            signals["val"], signals["test"], early_exit.get("max_drop", 0.01)
        )
        if system.next_token:
            summary["early_exit"]["kv_note"] = KV_NOTE
        if early_exit.get("run", False):
            test_loader = evaluation_dataloader(run_config, data_overrides, "test")
            run_at_operating_points(system, summary["early_exit"], signals["test"], test_loader,
                                    autocast)
    return summary, outputs, run_config


KV_NOTE = ("a causal LM's signals are teacher-forced from full-depth states: exact for "
           "early-exit decoding under kv=recompute")
LM_EXIT_RUN = ("early-exit decoding is aligned.early_exit.decoding, timed by "
               "benchmarks/decoding.py")


def other_split_signals(system: LayerwiseClassifier, loader: Any, max_sequences: int | None,
                        autocast: Any) -> ExitSignals:
    """The exit signals of the split the analysis did not read (val or test)."""
    if not system.next_token:
        return collect_exit_signals(system, loader, autocast=autocast)
    backbone = system.backbone

    def logits_at(layer: int, features: torch.Tensor) -> torch.Tensor:  # per-layer heads too
        return system.objective.logits_at(layer, features, backbone.head)

    with autocast():  # blocks and heads; the statistics widen to float32 themselves
        return collect_token_signals(backbone, sequence_subset(loader, max_sequences), logits_at)


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


def cross_similarity(loaded: list[LoadedCheckpoint], analysed: list, cfg: DictConfig,
                     placement: Placement) -> dict[str, Any]:
    """Every layer of model A against every layer of model B on the split's samples (causal
    LMs: on the token sample CKA reads within each model, the same positions for both)."""
    loaders = tuple(evaluation_dataloader(c.run_config, c.data_overrides, cfg.split)
                    for c in loaded)
    means = tuple(outputs.layer_means for _, outputs, _ in analysed)
    systems = (loaded[0].system, loaded[1].system)
    stream = feature_batches
    if all(system.next_token for system in systems):
        max_sequences, max_tokens = language_model_limits(systems[0], cfg)
        loaders = tuple(sequence_subset(loader, max_sequences) for loader in loaders)
        stream = partial(sampled_token_batches, max_tokens=max_tokens)
    return run_cross_model_pass(systems, loaders, means, cfg.cos_centering,
                                autocast=placement.autocast, extra_measures=extra_measures(cfg),
                                stream=stream)


def extra_measures(cfg: DictConfig) -> ExtraMeasures | None:
    """similarity.measures beyond COS and CKA (which every evaluation computes), or None."""
    settings = cfg.get("similarity") or {}
    names = list(settings.get("measures") or [])
    extra = ExtraMeasures(names, settings.get("max_samples", 5000))
    return extra if extra.names else None


def display_names(run_configs: list[dict]) -> list[str]:
    """Legend labels: the loss name (aligned, standard, ...), disambiguated if equal."""
    names = [rc.get("names", {}).get("loss", "model") for rc in run_configs]
    if len(set(names)) < len(names):
        names = [f"{name} ({label})" for name, label in zip(names, "AB", strict=False)]
    return names


def data_settings(target: str) -> list[str]:
    """The settings the data module takes (its constructor's parameters)."""
    return [p.name for p in target_parameters(target) or []]


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


def load_for_evaluation(
    path: str, cfg: DictConfig, moved_from: str | None = None, key: str = "ckpt_path"
) -> LoadedCheckpoint:
    """``model.name_or_path`` replaces the HF model path ``moved_from`` (that of ``ckpt_path``'s
    model; None: this is it) wherever the checkpoint stored it: its model and, when it followed
    the model, its tokenizer."""
    # The weights live on in the model only.
    checkpoint = read_checkpoint(path, key=key)  # ``key``: the setting that named it
    run_config = checkpoint["run_config"]
    data_overrides = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
    if "_target_" in data_overrides:  # a data group (a pretrained model beside): its stubs only
        data_overrides = {key: data_overrides.get(key) for key in OVERRIDE_STUBS["data"]}
    new_path = (cfg.get("model") or {}).get("name_or_path")
    stored = checkpoint["hyper_parameters"]["model"].get("name_or_path")
    # How the blocks run (model.compile=false evaluates a model trained compiled, or the reverse).
    model_overrides = {key: (cfg.get("model") or {}).get(key) for key in RUNTIME_MODEL_KEYS}
    if new_path is not None and (moved_from is None or stored == moved_from):
        model_overrides["name_or_path"] = new_path  # load_system rejects it for a ViT
        if run_config["data"].get("tokenizer") == stored and not data_overrides.get("tokenizer"):
            data_overrides["tokenizer"] = new_path
    changes = check_split_overrides(run_config["data"], data_overrides,
                                    allowed=cfg.get("allow_other_split") is True)
    return LoadedCheckpoint(path, run_config, load_system(checkpoint, model_overrides),
                            data_overrides, stored, changes)


# evaluate.yaml's override stubs (null: keep the checkpoint's value); a model analysed as it is
# takes its groups' values, or the class defaults where a group sets none.
OVERRIDE_STUBS = {"model": ("name_or_path",), "data": ("data_dir", "batch_size")}


def pretrained_model(cfg: DictConfig) -> bool:
    """True when evaluate.py analyses a model as it is: a model group chosen, no ckpt_path."""
    return cfg.get("ckpt_path") is None and "_target_" in (cfg.get("model") or {})


def load_pretrained(cfg: DictConfig) -> LoadedCheckpoint:
    """A pretrained classifier with its own head, as ``model=<group> data=<group>`` build it:
    no training, the standard objective (the model's own head on the last layer, the same head
    read at every layer)."""
    if "_target_" not in (cfg.get("data") or {}):
        raise ConfigError(f"model={choice('model')} without a checkpoint needs the data it is "
                          "evaluated on too: add data=<group> (e.g. data=glue data.task=sst2).")
    sections = {}
    for name in ("model", "data"):
        section = OmegaConf.to_container(cfg[name], resolve=False)
        for key in OVERRIDE_STUBS[name]:
            if section.get(key) is None:
                section.pop(key, None)
        sections[name] = section
    plain = OmegaConf.create(sections)  # resolves ${data.num_classes} and the tokenizer path
    model, data = (OmegaConf.to_container(plain[name], resolve=True) for name in ("model", "data"))
    datamodule = build(OmegaConf.create(data))
    metrics = tuple(getattr(datamodule, "metrics", ("accuracy",)))
    system = LayerwiseClassifier(model, {"_target_": STANDARD_TARGET}, metrics=metrics).eval()
    names = {"model": choice("model"), "data": choice("data"), "loss": "pretrained"}
    label = model.get("name_or_path") or model.get("checkpoint_path") or model.get("name")
    run_config = {"model": model, "data": data, "loss": {"_target_": STANDARD_TARGET},
                  "names": names, "seed": None}
    return LoadedCheckpoint(str(label), run_config, system, {}, model.get("name_or_path"),
                            pretrained=True)


def choice(group: str) -> str | None:
    """The option chosen for a config group (model=minilm: 'minilm'), when Hydra ran."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # composed without Hydra's runtime config
        return None


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("ckpt_path") is None and not pretrained_model(cfg):
        raise ConfigError("Give the checkpoint to analyse: python evaluate.py "
                          "ckpt_path=<run dir>/checkpoints/last.ckpt, or a pretrained model as it "
                          "is: python evaluate.py model=<group> data=<group>.")
    check_settings(cfg, EVALUATE_KEYS, ())
    # Fractions of accuracy (0.01 = one point).
    number("early_exit.max_drop", (cfg.get("early_exit") or {}).get("max_drop", 0.01), 0, 1,
           high_open=True)
    number("minimal_depth_epsilon", cfg.minimal_depth_epsilon, 0, 1)
    number("monotone_tolerance", cfg.monotone_tolerance, 0, 1)
    placement = resolve_placement(cfg.get("device"), cfg.get("precision"))
    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = [cfg.ckpt_path] + ([cfg.compare_to] if cfg.get("compare_to") else [])
    loaded = [load_pretrained(cfg) if pretrained_model(cfg) else load_for_evaluation(paths[0], cfg)]
    if len(paths) > 1:
        loaded.append(load_for_evaluation(paths[1], cfg, moved_from=loaded[0].model_path,
                                          key="compare_to"))
        # The figures are on cfg.split; the matched early-exit comparison is on test.
        early_exit = (cfg.get("early_exit") or {}).get("enabled", False)  # as in the pass
        for split in {cfg.split, "test"} if early_exit else {cfg.split}:
            check_comparable(*loaded, split, same_depth=False)
    analysed = [analyse_checkpoint(checkpoint, cfg, placement=placement) for checkpoint in loaded]
    labels = display_names([run_config for _, _, run_config in analysed])
    summaries = {label: summary for label, (summary, _, _) in zip(labels, analysed, strict=True)}

    evaluation = dict(analysed[0][0])
    if len(analysed) > 1:
        evaluation["compare_to"] = analysed[1][0]
        evaluation["cross_similarity"] = cross_similarity(loaded, analysed, cfg, placement)
        same_depth = loaded[0].system.num_layers == loaded[1].system.num_layers
        if not same_depth:
            log.info("compare_to: the models have %d and %d layers; the matched early-exit "
                     "comparison needs the same depth and is left out.",
                     loaded[0].system.num_layers, loaded[1].system.num_layers)
        if same_depth and all("early_exit" in summary for summary in summaries.values()):
            # Each rule's test curve against the other model's at matched mean exit layer.
            evaluation["early_exit_matched"] = matched_comparison(
                analysed[0][0]["early_exit"], analysed[1][0]["early_exit"]
            )

    figures = {
        "layer_accuracy": plots.accuracy_curve(summaries),
        "similarity": plots.similarity_heatmaps(summaries),
        "cos_to_last": plots.cos_to_last_curve(summaries),
        "saturation": plots.saturation_histogram(summaries),
    }
    if all("layer_perplexity" in summary for summary in summaries.values()):  # causal LMs
        # No class means: the "classes" are a vocabulary of tens of thousands of tokens.
        figures["layer_perplexity"] = plots.perplexity_curve(summaries)
    else:
        figures["class_mean_pca"] = plots.class_mean_pca(
            {label: outputs.class_means for label, (_, outputs, _) in zip(labels, analysed,
                                                                            strict=True)}
        )
    if all("early_exit" in summary for summary in summaries.values()):
        figures["early_exit"] = plots.early_exit_curves(summaries)
    if "cross_similarity" in evaluation:
        figures["cross_similarity"] = plots.cross_similarity_heatmaps(
            evaluation["cross_similarity"], labels)
    figure_paths = {name: plots.save(fig, run_dir / f"{name}.png") for name, fig in figures.items()}
    write_report(run_dir / "report.md", summaries, figure_paths,
                 evaluation.get("early_exit_matched"))
    if cfg.get("wandb"):
        from aligned.analysis.wandb_logging import log_evaluation

        log_evaluation(cfg, summaries, figure_paths, run_dir,
                       [checkpoint.run_config for checkpoint in loaded])  # joins its group
    # Last, and whole or not at all: a directory without evaluation.json holds no finished
    # evaluation (one stopped while it drew the figures, say).
    write_json(run_dir / "evaluation.json", evaluation, "evaluation file")
    return evaluation
