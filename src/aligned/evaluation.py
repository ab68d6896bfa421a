"""What ``evaluate.py`` runs: layer-wise analysis of one checkpoint, optionally beside another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aligned import plots
from aligned.checkpoints import load_system, read_checkpoint
from aligned.config import ConfigError, build
from aligned.layerwise_pass import LayerwiseOutputs, run_layerwise_pass, summarize
from aligned.report import write_report

SPLITS = ("val", "test")


def evaluation_dataloader(run_config: dict, data_overrides: dict, split: str) -> Any:
    """The checkpoint's data module, with the user's overrides (e.g. another data_dir)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got '{split}'.")
    data_cfg = dict(run_config["data"])
    data_cfg.update({k: v for k, v in data_overrides.items() if v is not None})
    datamodule = build(OmegaConf.create(data_cfg))
    datamodule.setup("validate" if split == "val" else "test")
    return datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()


def analyse_checkpoint(
    ckpt_path: str, cfg: DictConfig, keep_logits: bool = True
) -> tuple[dict[str, Any], LayerwiseOutputs, dict]:
    checkpoint = read_checkpoint(ckpt_path)
    system = load_system(checkpoint)
    if system.backbone.num_classes == 1:
        raise ConfigError(
            "evaluate.py analyses classifiers; this checkpoint is a regression model."
        )
    run_config = checkpoint["run_config"]
    data_overrides = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
    loader = evaluation_dataloader(run_config, data_overrides, cfg.split)
    outputs = run_layerwise_pass(system, loader, cfg.cos_centering, keep_logits=keep_logits)
    summary = summarize(outputs, cfg.minimal_depth_epsilon, cfg.monotone_tolerance)
    summary = {
        "checkpoint": str(Path(ckpt_path).resolve()),
        "names": run_config.get("names", {}),
        "seed": run_config.get("seed"),
        "split": cfg.split,
        **summary,
    }
    return summary, outputs, run_config


def display_names(run_configs: list[dict]) -> list[str]:
    """Legend labels: the loss name (aligned, standard, ...), disambiguated if equal."""
    names = [rc.get("names", {}).get("loss", "model") for rc in run_configs]
    if len(set(names)) < len(names):
        names = [f"{name} ({label})" for name, label in zip(names, "AB", strict=False)]
    return names


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = [cfg.ckpt_path] + ([cfg.compare_to] if cfg.get("compare_to") else [])
    analysed = [analyse_checkpoint(path, cfg) for path in paths]
    labels = display_names([run_config for _, _, run_config in analysed])
    summaries = {label: summary for label, (summary, _, _) in zip(labels, analysed, strict=True)}

    evaluation = dict(analysed[0][0])
    if len(analysed) > 1:
        evaluation["compare_to"] = analysed[1][0]
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")

    figures = {
        "layer_accuracy": plots.accuracy_curve(summaries),
        "similarity": plots.similarity_heatmaps(summaries),
        "cos_to_last": plots.cos_to_last_curve(summaries),
        "saturation": plots.saturation_histogram(summaries),
        "class_mean_pca": plots.class_mean_pca(
            {label: outputs.class_means for label, (_, outputs, _) in zip(labels, analysed,
                                                                            strict=True)}
        ),
    }
    figure_paths = {name: plots.save(fig, run_dir / f"{name}.png") for name, fig in figures.items()}
    write_report(run_dir / "report.md", summaries, figure_paths)
    if cfg.get("wandb"):
        from aligned.wandb_evaluation import log_evaluation

        log_evaluation(cfg, summaries, figure_paths, run_dir)
    return evaluation
