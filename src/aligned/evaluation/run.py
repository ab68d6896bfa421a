"""What ``evaluate.py`` runs: layer-wise analysis of one model (a checkpoint, or a pretrained
model as it is), optionally beside another (``compare_to``), and early exit; it writes
evaluation.json, report.md and the figures to the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from aligned.analysis.report import write_report
from aligned.config import ConfigError, number
from aligned.evaluation.comparison import compare, load_comparison
from aligned.evaluation.figures import save_figures
from aligned.evaluation.loading import load_for_evaluation, load_pretrained, pretrained_model
from aligned.evaluation.model_analysis import analyse_checkpoint
from aligned.placement import resolve_placement
from aligned.training.json_files import write_json
from aligned.typed_settings import EVALUATE_KEYS, check_settings


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
    loaded = [load_pretrained(cfg) if pretrained_model(cfg)
              else load_for_evaluation(cfg.ckpt_path, cfg)]
    if cfg.get("compare_to"):
        loaded.append(load_comparison(loaded[0], cfg))
    analysed = [analyse_checkpoint(checkpoint, cfg, placement=placement) for checkpoint in loaded]
    labelled = dict(zip(display_names([model.run_config for model in analysed]), analysed,
                        strict=True))
    summaries = {label: model.summary for label, model in labelled.items()}

    evaluation = dict(analysed[0].summary)
    if len(analysed) > 1:
        evaluation |= compare(loaded, analysed, cfg, placement)
    figure_paths = save_figures(run_dir, labelled, evaluation.get("cross_similarity"))
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


def display_names(run_configs: list[dict]) -> list[str]:
    """Legend labels: the loss name (aligned, standard, ...), disambiguated if equal."""
    names = [rc.get("names", {}).get("loss", "model") for rc in run_configs]
    if len(set(names)) < len(names):
        names = [f"{name} ({label})" for name, label in zip(names, "AB", strict=False)]
    return names
