"""Logging an evaluation to W&B: the figures as images, per-layer numbers as tables."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from aligned.training.loggers import wandb_logged_in


def log_evaluation(
    cfg: DictConfig, summaries: dict[str, dict], figures: dict[str, Path], run_dir: Path
) -> None:
    import wandb

    offline = os.environ.get("WANDB_MODE") in ("offline", "disabled") or not wandb_logged_in()
    run = wandb.init(
        project=cfg.get("wandb_project", "aligned"),
        dir=str(run_dir),
        job_type="evaluate",
        name=f"evaluate-{'-vs-'.join(summaries)}",
        mode="offline" if offline else "online",
        config={"ckpt_path": cfg.ckpt_path, "compare_to": cfg.get("compare_to"),
                "split": cfg.split},
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
        run.log({"evaluate/layers": wandb.Table(columns=columns, data=rows)})
        for name, s in summaries.items():
            run.summary[f"{name}/final_accuracy"] = s["layer_accuracy"][-1]
            run.summary[f"{name}/early_saturation"] = s["saturation"]["early_fraction"]
            run.summary[f"{name}/minimal_depth"] = s["minimal_depth"]["layer"]
    finally:
        run.finish()
