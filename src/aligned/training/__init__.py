"""Training: the one LightningModule (``LayerwiseClassifier``), what ``train.py`` runs (fit, test
the best checkpoint, write results), resume, checkpoints, callbacks, loggers, the optimiser,
per-layer metrics and the summary of a sweep.

    from aligned.training import load_system, read_checkpoint
    system = load_system(read_checkpoint("outputs/aligned/<run>/checkpoints/last.ckpt"))

The sweep summary is a command of its own, ``python -m aligned.training.sweep_summary <dir>``,
so this package does not import it (runpy would warn that it ran a module already imported).
"""

from aligned.training.checkpoints import load_system, read_checkpoint
from aligned.training.fit import train
from aligned.training.optim import adamw_with_warmup_cosine
from aligned.training.results import format_table, write_results
from aligned.training.resume import resume_checkpoint
from aligned.training.system import LayerwiseClassifier

__all__ = [
    "LayerwiseClassifier", "adamw_with_warmup_cosine", "format_table", "load_system",
    "read_checkpoint", "resume_checkpoint", "train", "write_results",
]
