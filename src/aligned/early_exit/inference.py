"""Early-exit inference that really saves compute (METHOD.md §4).

Blocks run one at a time; after each, the rule decides which samples exit, and those rows are
dropped from the batch, so later blocks compute the survivors only. Any batch size works
(batch 1 included). Decisions go through the same loop as the offline simulation
(``aligned.early_exit.rules.exit_layer_by_layer``), so the two agree except where float round-off
moves a value across a threshold: a block run on a subset of the batch is the same computation
per sample, but matrix kernels may sum in another order for another batch shape (~1e-7 in
float32; in float64 the agreement is exact in practice, which is how the tests check it).

    from aligned.early_exit.inference import load_early_exit
    classifier = load_early_exit("run/checkpoints/last.ckpt", "confidence", 0.9)
    result = classifier(images)     # result.predictions (B,), result.exit_layers (B,) in 1..L
    result, labels = classifier.predict(loader, pool_size=64)   # survivors pooled across batches
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from aligned.early_exit.layer_step import run_layer
from aligned.early_exit.pooled import PooledEarlyExit
from aligned.early_exit.rules import (
    ExitResult,
    ExitRule,
    LayerSignals,
    exit_layer_by_layer,
    make_rule,
)
from aligned.training.checkpoints import load_system, read_checkpoint
from aligned.training.system import LayerwiseClassifier, require_classifier, unpack


def batch_size_of(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return len(inputs)
    return len(inputs["input_ids"])


class EarlyExitClassifier:
    """A trained ``LayerwiseClassifier`` run block by block under an exit rule.

    Works for one shared head (aligned, standard) and per-layer heads (multiexit) alike: the
    logits of layer l come from ``objective.logits_at(l, ...)``.
    """

    def __init__(self, system: LayerwiseClassifier, rule: ExitRule) -> None:
        require_classifier(system, "Early exit")
        self.system = system.eval()
        self.rule = rule

    def __call__(self, inputs: Any) -> ExitResult:
        # Inference mode skips autograd bookkeeping (~6% faster at batch 1 on the digits ViT,
        # called from plain code); the copy hands back normal tensors, which callers may edit.
        # A caller already in inference mode gets inference tensors, as from any torch op.
        if torch.is_inference_mode_enabled():
            return self._exit(inputs)
        with torch.inference_mode():
            result = self._exit(inputs)
        return result.clone()

    def _exit(self, inputs: Any) -> ExitResult:
        system, backbone = self.system, self.system.backbone
        inputs = system.transfer_batch_to_device(inputs, system.device, 0)
        state = backbone.begin(inputs)
        previous = None  # the survivors' float64 features after the last block (B, D), if read

        def signals_after(layer: int, keep: torch.Tensor | None, read: bool) -> LayerSignals | None:
            nonlocal state, previous
            if keep is not None:  # drop the exited rows before the next block
                state = state.select(keep)
                previous = None if previous is None else previous[keep]
            if not read:  # the rule reads nothing here: the block alone
                state = backbone.run_block(layer, state)
                return None
            state, signals, previous = run_layer(system, self.rule, layer, state, previous)
            return signals

        return exit_layer_by_layer(self.rule, backbone.num_layers, batch_size_of(inputs),
                                   signals_after, device=system.device)

    def predict(
        self, dataloader: Iterable, pool_size: int | None = None
    ) -> tuple[ExitResult, torch.Tensor]:
        """The early-exit result over a whole loader (CPU tensors) and its labels.

        ``pool_size``: None runs each batch on its own; a number pools the survivors of
        successive batches per layer until that many are pending (``aligned.early_exit.pooled``).
        """
        labels = []

        def inputs_of_batches() -> Iterable[Any]:
            for batch in dataloader:
                inputs, target = unpack(batch)
                labels.append(target)
                yield inputs

        if pool_size is not None:
            result = PooledEarlyExit(self.system, self.rule, pool_size).run(inputs_of_batches())
        else:
            with torch.inference_mode():  # cat copies out normal tensors, so no copy per batch
                per_batch = [self._exit(inputs) for inputs in inputs_of_batches()]
            result = ExitResult.cat(per_batch) if per_batch else None
        if not labels:  # no batches
            raise ValueError("The dataloader gave no batches.")
        return ExitResult(result.predictions.cpu(), result.exit_layers.cpu()), torch.cat(labels)


def load_early_exit(ckpt_path: str | Path, rule: str | ExitRule,
                    threshold: float | None = None) -> EarlyExitClassifier:
    """A checkpoint written by train.py, under ``rule`` (a rule object, or a name + threshold)."""
    if isinstance(rule, str):
        if threshold is None:
            raise ValueError(f"Give the threshold of the '{rule}' rule.")
        rule = make_rule(rule, threshold)
    return EarlyExitClassifier(load_system(read_checkpoint(ckpt_path)), rule)
