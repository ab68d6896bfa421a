"""What ``evaluate.py`` runs: layer-wise analysis of one model, optionally beside another, and
early exit (rules swept on val, operating points reported on test; docs/method.md, "Early exit").

    from aligned.evaluation import evaluate, evaluation_dataloader

- ``loading``: the checkpoint or pretrained model, and its data loader with ``data.*`` overrides;
- ``model_analysis``: one model's analysis on one split (``analyse_checkpoint``, ``ModelAnalysis``);
- ``operating_points``: its early exit, simulated and optionally run for real;
- ``comparison``: ``compare_to``, its checks and the cross-model run;
- ``figures``: the PNGs; ``run``: ``evaluate(cfg)``, writing evaluation.json, report.md, figures.
"""

from aligned.evaluation.comparison import check_comparable
from aligned.evaluation.loading import LoadedCheckpoint, evaluation_dataloader, load_for_evaluation
from aligned.evaluation.model_analysis import (
    ModelAnalysis,
    analyse_checkpoint,
    language_model_limits,
)
from aligned.evaluation.run import evaluate

__all__ = [
    "LoadedCheckpoint", "ModelAnalysis", "analyse_checkpoint", "check_comparable", "evaluate",
    "evaluation_dataloader", "language_model_limits", "load_for_evaluation",
]
