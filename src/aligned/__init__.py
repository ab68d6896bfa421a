"""aligned: layer-wise analysis and aligned training of transformers.

Three layers that do not know each other's internals:
- ``aligned.backbones``: plain nn.Modules giving every block's feature and the shared head;
- ``aligned.objectives``: losses over the stack of per-layer logits;
- ``aligned.system``: the one LightningModule that trains and evaluates them.
"""

__version__ = "0.1.0"
