"""aligned: layer-wise analysis and aligned training of transformers.

One package per concern:
- ``aligned.models``: backbones (plain nn.Modules giving every block's feature and the shared
  head) and the objectives over the stack of per-layer logits;
- ``aligned.data``: Lightning data modules;
- ``aligned.training``: the one LightningModule, fit/test/results, resume, checkpoints;
- ``aligned.analysis``: similarity (COS, CKA), the layer-wise pass, read-outs, figures, report;
- ``aligned.early_exit``: exit rules, offline sweeps, real early-exit inference;
- ``aligned.evaluation``: what ``evaluate.py`` runs; ``aligned.config``: building from configs.
"""

__version__ = "0.2.0"
