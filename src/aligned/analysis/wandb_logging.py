"""Logging an evaluation to W&B: the figures as images, the per-layer numbers as a table and a
chart of accuracy against layer, in the training run's group (W&B lists them together)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from aligned.training.loggers import is_wandb, wandb_mode

log = logging.getLogger(__name__)

# Summary keys of the evaluated checkpoint; a compare_to checkpoint's go under evaluate/compare_to/.
# Fixed names, whatever the loss: a sweep's runs share their columns in W&B's runs table.
PREFIXES = ("evaluate/", "evaluate/compare_to/")


def training_run(run_config: dict[str, Any]) -> dict[str, Any]:
    """What links an evaluation to the run that trained the checkpoint: that run's W&B id, name,
    group and project (when it logged to W&B; all None otherwise), its config choices and seed."""
    logger = run_config.get("logger") if is_wandb(run_config.get("logger")) else {}
    return {
        "id": logger.get("id"), "name": logger.get("name"), "group": logger.get("group"),
        "project": logger.get("project"),
        "names": run_config.get("names"), "seed": run_config.get("seed"),
    }


def log_evaluation(
    cfg: DictConfig, summaries: dict[str, dict], figures: dict[str, Path], run_dir: Path,
    run_configs: list[dict[str, Any]] | None = None,
) -> None:
    """``summaries``: label -> summary, the evaluated checkpoint first; ``run_configs``: their
    checkpoints' run configs, in the same order."""
    import wandb

    trained = [training_run(config) for config in run_configs or []]
    project = cfg.get("wandb_project", "aligned")
    if trained and trained[0]["project"] not in (None, project):
        log.warning("The checkpoint's training run logged to W&B project '%s'; this evaluation "
                    "goes to '%s' (pass wandb_project=%s to put it beside that run).",
                    trained[0]["project"], project, trained[0]["project"])
    run = wandb.init(
        project=project,
        dir=str(run_dir),
        job_type="evaluate",
        group=trained[0]["group"] if trained else None,
        name=f"evaluate-{'-vs-'.join(summaries)}",
        mode=wandb_mode(),
        config={"ckpt_path": cfg.ckpt_path, "compare_to": cfg.get("compare_to"),
                "split": cfg.split, "trained": trained[0] if trained else None,
                "compare_to_trained": trained[1] if len(trained) > 1 else None},
    )
    try:
        run.log({f"evaluate/{name}": wandb.Image(str(path)) for name, path in figures.items()})
        columns = ["model", "layer", "accuracy", "cos_to_last", "mean_confidence",
                   "saturation_count"]
        rows = [
            [name, layer + 1, s["layer_accuracy"][layer], s["cos_to_last"][layer],
             s["mean_confidence"][layer], s["saturation"]["histogram"][layer]]
            for name, s in summaries.items()
            for layer in range(s["num_layers"])
        ]
        table = wandb.Table(columns=columns, data=rows)  # kept beside the chart, by_layer_table
        run.log({"evaluate/by_layer": wandb.plot.line(
            table, "layer", "accuracy", stroke="model", title=f"{cfg.split} accuracy by layer")})
        for prefix, s in zip(PREFIXES, summaries.values(), strict=False):
            run.summary[f"{prefix}final_accuracy"] = s["layer_accuracy"][-1]
            run.summary[f"{prefix}early_saturation"] = s["saturation"]["early_fraction"]
            run.summary[f"{prefix}minimal_depth"] = s["minimal_depth"]["layer"]
    finally:
        run.finish()
