"""Early-exit inference that really saves compute (docs/method.md, "Early exit").

Blocks run one at a time; after each, the rule decides which samples exit, and those rows are
dropped from the batch, so later blocks compute the survivors only. Any batch size works
(batch 1 included). Decisions go through the same loop as the offline simulation
(``aligned.early_exit.rules.exit_layer_by_layer``), so the two agree except where float round-off
moves a value across a threshold: a block run on a subset of the batch is the same computation
per sample, but matrix kernels may sum in another order for another batch shape (~1e-7 in
float32; in float64 the agreement is exact in practice, which is how the tests check it).

    from aligned.early_exit.inference import load_early_exit
    classifier = load_early_exit("run/checkpoints/last.ckpt", "confidence", 0.9)  # device=auto
    result = classifier(images)     # result.predictions (B,), result.exit_layers (B,) in 1..L
    result, labels = classifier.predict(loader, pool_size=64)   # survivors pooled across batches

On a GPU, the one host synchronisation per layer the decision needs is reading how many samples
exit (it sizes the next block's batch); exited rows are gathered by index, with no sync of their
own. The rest (the rule, the head, the cosine) stays on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from aligned.config import ConfigError
from aligned.early_exit.input_checks import check_finite, checked_rule
from aligned.early_exit.layer_step import run_layer
from aligned.early_exit.pooled import PooledEarlyExit
from aligned.early_exit.rules import (
    ExitResult,
    ExitRule,
    LayerSignals,
    exit_layer_by_layer,
    gather_exits,
    make_rule,
)
from aligned.placement import resolve_placement
from aligned.training.checkpoints import load_system, read_checkpoint
from aligned.training.system import LayerwiseClassifier, require_classifier, unpack

PREDICT_READS = (
    "predict() reads a data loader (or any iterable) of labelled batches: (inputs, labels) "
    "pairs as the image data modules give, or dicts of tokenised inputs with 'labels' as GLUE "
    "gives"
)


def inputs_and_labels(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, labels) of one loader batch, or one clear error for anything else (a bare
    tensor of two images would otherwise unpack into one image and one "label")."""
    if isinstance(batch, Mapping):
        problem = None if "labels" in batch else "a dict without 'labels'"
    elif isinstance(batch, (tuple, list)):
        problem = None if len(batch) == 2 else f"a {type(batch).__name__} of {len(batch)} items"
    elif isinstance(batch, torch.Tensor):
        problem = f"a bare tensor of shape {tuple(batch.shape)}"
    else:
        problem = f"a {type(batch).__name__}"
    if problem is None:
        inputs, labels = unpack(batch)
        size = batch_size_of(inputs)
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or (
                size is not None and len(labels) != size):
            labels_are = (f"of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
                          else f"a {type(labels).__name__}")
            problem = (f"inputs with labels {labels_are} for {size} samples (labels are a 1-D "
                       "tensor, one per sample)")
    if problem is not None:
        raise ConfigError(
            f"{PREDICT_READS}; one batch is {problem}. For inputs without labels, call the "
            "classifier itself: classifier(images) or classifier(tokenised)."
        )
    return inputs, labels


def batch_size_of(inputs: Any) -> int | None:
    """The number of samples in model inputs; None when they are neither an image tensor nor
    a dict with input_ids (the backbone then says what it expects)."""
    if isinstance(inputs, Mapping):
        inputs = inputs.get("input_ids")
    return len(inputs) if isinstance(inputs, torch.Tensor) and inputs.ndim else None


class EarlyExitClassifier:
    """A trained ``LayerwiseClassifier`` run block by block under an exit rule.

    Works for one shared head (aligned, standard) and per-layer heads (multiexit) alike: the
    logits of layer l come from ``objective.logits_at(l, ...)``. It runs on the system's device;
    ``autocast`` is the context of the blocks and heads (``aligned.placement``: bf16-mixed).
    """

    def __init__(self, system: LayerwiseClassifier, rule: ExitRule,
                 autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        require_classifier(system, "Early exit")
        self.system = system.eval()
        self.rule = checked_rule(rule)
        self.autocast = autocast

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
        with self.autocast():
            return self._exit_layers(inputs)

    def _exit_layers(self, inputs: Any) -> ExitResult:
        system, backbone = self.system, self.system.backbone
        inputs = system.transfer_batch_to_device(inputs, system.device, 0)
        state = backbone.begin(inputs)  # checks the inputs, casts float images to the model's
        size = len(state.tokens)
        if size == 0:  # an empty batch: nothing to run (BERT's blocks cannot take one)
            return gather_exits([], 0, system.device)
        check_finite(state)
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

        return exit_layer_by_layer(self.rule, backbone.num_layers, size, signals_after,
                                   device=system.device)

    def predict(
        self, dataloader: Iterable, pool_size: int | None = None
    ) -> tuple[ExitResult, torch.Tensor]:
        """The early-exit result over a whole loader (CPU tensors) and its labels.

        ``pool_size``: None runs each batch on its own; a number pools the survivors of
        successive batches per layer until that many are pending (``aligned.early_exit.pooled``).
        """
        if isinstance(dataloader, (torch.Tensor, Mapping)):
            raise ConfigError(f"{PREDICT_READS}; got one {type(dataloader).__name__}. For one "
                              "batch of inputs, call the classifier itself: classifier(inputs).")
        labels = []

        def inputs_of_batches() -> Iterable[Any]:
            for batch in dataloader:
                inputs, target = inputs_and_labels(batch)
                labels.append(target)
                yield inputs

        if pool_size is not None:
            pooled = PooledEarlyExit(self.system, self.rule, pool_size, self.autocast)
            result = pooled.run(inputs_of_batches())
        else:
            with torch.inference_mode():  # cat copies out normal tensors, so no copy per batch
                per_batch = [self._exit(inputs) for inputs in inputs_of_batches()]
            result = ExitResult.cat(per_batch) if per_batch else None
        if not labels:  # no batches
            raise ConfigError("The dataloader gave no batches.")
        return ExitResult(result.predictions.cpu(), result.exit_layers.cpu()), torch.cat(labels)


def load_early_exit(ckpt_path: str | Path, rule: str | ExitRule, threshold: float | None = None,
                    device: str = "auto", precision: str = "32") -> EarlyExitClassifier:
    """A checkpoint written by train.py, under ``rule`` (a rule object, or a name + threshold),
    on ``device`` (auto: a GPU if there is one) in ``precision`` (32, bf16-mixed, 16-mixed)."""
    if isinstance(rule, str):
        if threshold is None:
            raise ValueError(f"Give the threshold of the '{rule}' rule.")
        rule = make_rule(rule, threshold)
    placement = resolve_placement(device, precision)  # before the load: a bad device fails fast
    system = load_system(read_checkpoint(ckpt_path)).to(placement.device)
    return EarlyExitClassifier(system, rule, placement.autocast)
