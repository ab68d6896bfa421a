"""Pooled early exit: survivors of several batches run the next block together.

Per-batch early exit (``EarlyExitClassifier.__call__``) runs block l on whatever is left of one
batch; after a few layers that is a handful of samples, and a block's fixed per-call cost
(kernel launches, Python) is paid for each handful. Over a stream of batches (a data loader,
a request queue), the survivors can wait per layer until ``pool_size`` of them are pending, so
every block runs on a full batch and the compute saved by exiting becomes time saved.

Each sample's decisions read only its own signals, so predictions and exit layers are those of
per-batch early exit (up to float round-off of other batch shapes); results come back in input
order. A block runs on everything pending for it once that reaches ``pool_size``, so a call
holds fewer than L × ``pool_size`` + one input batch samples: memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from aligned.config import positive_int
from aligned.early_exit.input_checks import check_finite, checked_rule
from aligned.early_exit.layer_step import run_layer
from aligned.early_exit.rules import (
    Exited,
    ExitResult,
    ExitRule,
    State,
    decide,
    first_read,
    gather_exits,
)
from aligned.models.backbones.base import BlockState
from aligned.training.system import LayerwiseClassifier, require_classifier


@dataclass
class Pending:
    """Samples waiting for the same block: their input positions, block state, rule state and
    (for rules that read the cosine) the features after the previous block."""

    ids: torch.Tensor  # (n,)
    state: BlockState
    rule_state: State
    previous: torch.Tensor | None  # (n, D)


class PooledEarlyExit:
    def __init__(self, system: LayerwiseClassifier, rule: ExitRule, pool_size: int,
                 autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        require_classifier(system, "Early exit")
        self.autocast = autocast  # the blocks' and heads' context (aligned.placement)
        self.pool_size = positive_int("pool_size", pool_size)
        self.system, self.rule = system.eval(), checked_rule(rule)
        self.num_layers = system.backbone.num_layers
        self.read_from = first_read(rule, self.num_layers)
        self.queues: list[list[Pending]] = [[] for _ in range(self.num_layers + 2)]
        self.exited: list[Exited] = []

    def run(self, batches: Iterable[Any]) -> ExitResult:
        """Early exit over ``batches`` (model inputs), results in input order."""
        # Afresh: a run stopped by an error (inputs it refused) may have left samples queued.
        self.queues = [[] for _ in range(self.num_layers + 2)]
        self.exited = []
        with torch.inference_mode(), self.autocast():
            seen = self._run_all(batches)
        # Assembled outside inference mode: normal tensors, which callers may edit.
        result = gather_exits(self.exited, seen, self.system.device)
        self.exited = []
        return result

    def _run_all(self, batches: Iterable[Any]) -> int:
        """Every sample of ``batches`` through to its exit; returns how many there were."""
        system, backbone, device = self.system, self.system.backbone, self.system.device
        seen = 0
        for inputs in batches:
            inputs = system.transfer_batch_to_device(inputs, device, 0)
            state = backbone.begin(inputs)  # checks the inputs, casts float images
            size = len(state.tokens)
            if size == 0:  # an empty batch: nothing to queue
                continue
            check_finite(state)
            ids = torch.arange(seen, seen + size, device=device)
            seen += size
            self.queues[1].append(
                Pending(ids, state, self.rule.initial_state(size, device), None)
            )
            while (layer := self._deepest_full_queue()) is not None:
                self._run_layer(layer)
        for layer in range(1, self.num_layers + 1):  # flush: survivors move down as we go
            if self.queues[layer]:
                self._run_layer(layer)
        return seen

    def _deepest_full_queue(self) -> int | None:
        for layer in range(self.num_layers, 0, -1):  # deepest first: frees memory soonest
            if sum(len(p.ids) for p in self.queues[layer]) >= self.pool_size:
                return layer
        return None

    def _run_layer(self, layer: int) -> None:
        backbone, rule = self.system.backbone, self.rule
        group, self.queues[layer] = self.queues[layer], []
        pending = group[0] if len(group) == 1 else Pending(  # one batch: nothing to copy
            torch.cat([p.ids for p in group]),
            backbone.merge_states([p.state for p in group]),
            {key: torch.cat([p.rule_state[key] for p in group]) for key in group[0].rule_state},
            torch.cat([p.previous for p in group]) if group[0].previous is not None else None,
        )
        if layer < self.read_from:  # the rule reads nothing here: the block alone, all move on
            self.queues[layer + 1].append(Pending(
                pending.ids, backbone.run_block(layer, pending.state), pending.rule_state, None))
            return
        state, signals, previous = run_layer(self.system, rule, layer, pending.state,
                                             pending.previous)
        decision = decide(rule, layer, self.num_layers, signals, pending.rule_state)
        if decision.count == decision.size:
            self.exited.append((pending.ids, decision.predictions, layer))
            return
        if decision.count:
            self.exited.append((pending.ids[decision.leaving], decision.predictions, layer))
            kept = decision.staying
            staying = Pending(pending.ids[kept], state.select(kept), decision.state,
                              None if previous is None else previous[kept])
        else:
            staying = Pending(pending.ids, state, decision.state, previous)
        self.queues[layer + 1].append(staying)
