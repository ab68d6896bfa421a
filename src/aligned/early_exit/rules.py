"""Early-exit rules (docs/method.md, "Early exit") and the one loop that applies them layer by
layer.

After layer l (1..L) a rule looks at the surviving samples' ``LayerSignals`` (what the shared
head says at that layer: top-1, confidence, entropy; and the cosine between the features of
layers l-1 and l) and says which of them exit; every sample exits at L at the latest. ``decide``
is the only place decisions are made, and ``exit_layer_by_layer`` the one loop over a batch's
layers: the offline simulation feeds it cached signals (``aligned.early_exit.offline``), the
real inference and decoding feed it blocks run on the survivors only (``inference``,
``decoding``), so they cannot disagree in logic; pooled inference (``pooled``) calls ``decide``
on the survivors of several batches. Rules with memory (patience) keep one row of state per
surviving sample, subset together with the survivors.

| rule | exits when | threshold grid |
|---|---|---|
| ``confidence`` (SDN, MSDNet) | max softmax probability >= t | [0, 1] |
| ``entropy`` (DeeBERT) | softmax entropy <= t | [0, log C] |
| ``patience`` (PABEE) | the prediction has not changed for t consecutive layers | 1..L |
| ``state`` (CALM) | cos(h_{l-1}, h_l) >= t (never at layer 1) | [0, 1] |
| ``budget`` (elastic depth) | l >= t (at ⌈t⌉) | 1..L |
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from aligned.analysis.head_statistics import HeadStatistics, head_statistics
from aligned.config import ConfigError, number

State = dict[str, torch.Tensor]  # per-sample tensors, one row per surviving sample


class LayerSignals:
    """What a rule may see after one layer, for the samples still running: the head's top-1,
    confidence and entropy (``statistics``), and ``cosine`` (B,) = cos(h_{l-1}, h_l), NaN at layer
    1, None when the rule does not read it (``ExitRule.reads_cosine``: inference skips it).

    Real inference gives the layer's ``logits`` (B, C), or a function that computes them: then
    the head runs on first use, so a rule that reads only the cosine (state) runs it only at
    layers where some sample leaves. The offline simulation gives the cached ``statistics``.
    """

    def __init__(self, logits: torch.Tensor | Callable[[], torch.Tensor] | None = None,
                 cosine: torch.Tensor | None = None, *,
                 statistics: HeadStatistics | None = None) -> None:
        if (logits is None) == (statistics is None):
            raise ValueError("LayerSignals takes the layer's logits or its statistics, not both.")
        self._logits = logits
        self._statistics = statistics
        self.cosine = cosine

    @property
    def statistics(self) -> HeadStatistics:
        if self._statistics is None:
            logits = self._logits if isinstance(self._logits, torch.Tensor) else self._logits()
            self._statistics = head_statistics(logits)
        return self._statistics

    @property
    def top1(self) -> torch.Tensor:
        return self.statistics.top1

    @property
    def confidence(self) -> torch.Tensor:
        return self.statistics.confidence

    @property
    def entropy(self) -> torch.Tensor:
        return self.statistics.entropy


@dataclass
class ExitResult:
    """Per sample, in the batch's order: the prediction it exits with and where (1..L)."""

    predictions: torch.Tensor  # (N,)
    exit_layers: torch.Tensor  # (N,)

    def clone(self) -> ExitResult:
        """A copy; made outside ``torch.inference_mode``, it holds normal tensors."""
        return ExitResult(self.predictions.clone(), self.exit_layers.clone())

    @staticmethod
    def cat(results: list[ExitResult]) -> ExitResult:
        return ExitResult(torch.cat([r.predictions for r in results]),
                          torch.cat([r.exit_layers for r in results]))


class ExitRule:
    """One threshold; ``exits`` decides after ``layer`` which samples leave."""

    name: ClassVar[str]
    bounds: ClassVar[tuple[float, float]]  # the thresholds that mean something
    whole: ClassVar[bool] = False
    reads_cosine: ClassVar[bool] = False
    reads_head: ClassVar[bool] = True  # reads the head at every layer it reads (else at the exit)
    threshold: float

    def initial_state(self, batch_size: int, device: torch.device) -> State:
        return {}

    def first_read_layer(self) -> int:
        """The first layer whose signals the rule reads. Before it nobody can leave, so inference
        runs the blocks alone (no read-out, head or rule: a fixed budget costs its blocks). A rule
        that reads the cosine needs the features of every layer, so it starts at 1."""
        return 1

    def exits(self, layer: int, signals: LayerSignals, state: State) -> tuple[torch.Tensor, State]:
        """(B,) bool exit decisions after ``layer`` and the updated per-sample state."""
        raise NotImplementedError

    @staticmethod
    def grid(num_layers: int, num_classes: int) -> list[float]:
        """The thresholds an offline sweep tries, ascending."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threshold:g})"


# Probability-like grids: a uniform grid, plus the 0.99.. region where confident models live.
_UNIT_GRID = sorted({*np.round(np.linspace(0, 1, 51), 4).tolist(),
                     0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999})


@dataclass(repr=False)
class ConfidenceRule(ExitRule):
    threshold: float
    name: ClassVar[str] = "confidence"
    bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)  # a probability

    def exits(self, layer, signals, state):
        return signals.confidence >= self.threshold, state

    @staticmethod
    def grid(num_layers, num_classes):
        return _UNIT_GRID


@dataclass(repr=False)
class EntropyRule(ExitRule):
    threshold: float
    name: ClassVar[str] = "entropy"
    bounds: ClassVar[tuple[float, float]] = (0.0, math.inf)  # nats

    def exits(self, layer, signals, state):
        return signals.entropy <= self.threshold, state

    @staticmethod
    def grid(num_layers, num_classes):
        # 0..log C (log C: a uniform prediction); the fine steps near 0 are the confident ones.
        return sorted(((1.0 - np.asarray(_UNIT_GRID)) * math.log(num_classes)).tolist())


@dataclass(repr=False)
class PatienceRule(ExitRule):
    """PABEE: exit once the top-1 prediction has stayed the same for ``threshold`` layers in a
    row (t = 1: layers l-1 and l agree). t >= L never exits early."""

    threshold: float
    name: ClassVar[str] = "patience"
    bounds: ClassVar[tuple[float, float]] = (1.0, math.inf)
    whole: ClassVar[bool] = True  # a number of layers

    def initial_state(self, batch_size, device):
        # The count is kept in float, so comparing it with the float threshold converts nothing.
        return {"previous": torch.full((batch_size,), -1, dtype=torch.long, device=device),
                "unchanged": torch.zeros(batch_size, device=device)}

    def exits(self, layer, signals, state):
        prediction = signals.top1  # (B,)
        unchanged = torch.where(prediction == state["previous"], state["unchanged"] + 1, 0)
        return unchanged >= self.threshold, {"previous": prediction, "unchanged": unchanged}

    @staticmethod
    def grid(num_layers, num_classes):
        return [float(k) for k in range(1, num_layers + 1)]


@dataclass(repr=False)
class StateRule(ExitRule):
    """CALM's hidden-state rule: exit once the feature barely moves between consecutive layers,
    cos(h_{l-1}, h_l) >= threshold (per sample, uncentred). Layer 1 has no predecessor."""

    threshold: float
    name: ClassVar[str] = "state"
    bounds: ClassVar[tuple[float, float]] = (-1.0, 1.0)  # a cosine
    reads_cosine: ClassVar[bool] = True
    reads_head: ClassVar[bool] = False

    def exits(self, layer, signals, state):
        return signals.cosine >= self.threshold, state  # NaN (layer 1) compares False

    @staticmethod
    def grid(num_layers, num_classes):
        return _UNIT_GRID


@dataclass(repr=False)
class BudgetRule(ExitRule):
    """Fixed depth: every sample exits at layer ``threshold``."""

    threshold: float
    name: ClassVar[str] = "budget"
    bounds: ClassVar[tuple[float, float]] = (1.0, math.inf)
    whole: ClassVar[bool] = True  # a depth

    def first_read_layer(self):
        if not self.threshold > 1:  # also NaN, which never exits: everyone leaves at L
            return 1
        return math.ceil(min(self.threshold, 2**31))  # where layer >= t first holds; inf: at L

    def exits(self, layer, signals, state):
        # Read from layer ceil(t) on, where all leave: the exit's top-1 is needed there anyway.
        return torch.full_like(signals.top1, layer >= self.threshold, dtype=torch.bool), state

    @staticmethod
    def grid(num_layers, num_classes):
        return [float(depth) for depth in range(1, num_layers + 1)]


RULES: dict[str, type[ExitRule]] = {
    rule.name: rule for rule in (ConfidenceRule, EntropyRule, PatienceRule, StateRule, BudgetRule)
}


def make_rule(name: str, threshold: float) -> ExitRule:
    if name not in RULES:
        raise ConfigError(f"Unknown exit rule '{name}'; use one of {', '.join(RULES)}.")
    rule = RULES[name]
    value = number(f"The {name} rule's threshold", threshold, *rule.bounds)
    if rule.whole and math.isfinite(value) and not value.is_integer():
        raise ConfigError(f"The {name} rule's threshold is a number of layers, got {threshold}.")
    return rule(value)


def first_read(rule: ExitRule, num_layers: int) -> int:
    """The layer from which ``rule`` reads signals, capped at L (where everyone leaves)."""
    layer = min(rule.first_read_layer(), num_layers)
    if rule.reads_cosine and layer > 1:
        raise ValueError(f"{rule!r} reads the cosine, so it must read from layer 1.")
    return layer


class Decision(NamedTuple):
    """Who leaves after one layer, of the ``size`` rows the rule looked at."""

    count: int  # how many leave (0..size)
    size: int
    leaving: torch.Tensor | None  # their row indices, in row order (None: all rows, or none)
    staying: torch.Tensor | None  # the others' row indices (None: all rows, or none)
    predictions: torch.Tensor | None  # the leavers' top-1 (None when nobody leaves)
    state: State  # the rule state of the rows that stay


def decide(rule: ExitRule, layer: int, num_layers: int, signals: LayerSignals, state: State
           ) -> Decision:
    """``rule``'s decision after ``layer``, except that every sample leaves at L."""
    leaving, state = rule.exits(layer, signals, state)
    if layer == num_layers:
        leaving = torch.ones_like(leaving)
    # The count sizes the next block (a host sync on GPU); one sample's flag is read directly,
    # an op fewer per layer at batch 1.
    count = int(leaving) if len(leaving) == 1 else int(leaving.sum())
    if count == 0:
        return Decision(0, len(leaving), None, None, None, state)
    if count == len(leaving):
        return Decision(count, count, None, None, signals.top1, {})
    # Gathering with indices costs no further host sync on a GPU (a boolean mask costs one per
    # tensor it indexes).
    order = torch.argsort(leaving.to(torch.uint8), descending=True, stable=True)
    out, keep = order[:count], order[count:]
    return Decision(count, len(leaving), out, keep, signals.top1[out],
                    {key: value[keep] for key, value in state.items()})


# Samples that left together: their positions (None: the whole batch), predictions and layer.
Exited = tuple[torch.Tensor | None, torch.Tensor, int]


def exit_layer_by_layer(
    rule: ExitRule,
    num_layers: int,
    batch_size: int,
    signals_after: Callable[[int, torch.Tensor | None, bool], LayerSignals | None],
    device: torch.device | str = "cpu",
) -> ExitResult:
    """Apply ``rule`` after layers 1..L to a batch whose exited samples are dropped.

    ``signals_after(layer, keep, read)`` advances the survivors through ``layer`` and, when
    ``read``, returns their signals of that layer: ``keep`` (row indices into the previous
    call's rows) says which rows are still running; None when all are (layer 1, or nobody
    exited), so that nothing is copied. ``read`` is False before the rule's first read layer.
    """
    state = rule.initial_state(batch_size, device)
    read_from = first_read(rule, num_layers)
    rows = None  # the survivors' positions in the batch; None while the whole batch runs
    exited: list[Exited] = []
    keep = None
    for layer in range(1, num_layers + 1):
        signals = signals_after(layer, keep, layer >= read_from)
        keep = None
        if layer < read_from:  # nobody can leave yet
            continue
        decision = decide(rule, layer, num_layers, signals, state)
        state = decision.state
        if decision.count == decision.size:  # always at L, and at batch 1 when the sample exits
            exited.append((rows, decision.predictions, layer))
            break
        if decision.count:
            if rows is None:
                rows = torch.arange(batch_size, device=device)
            exited.append((rows[decision.leaving], decision.predictions, layer))
            rows, keep = rows[decision.staying], decision.staying
    return gather_exits(exited, batch_size, device)


def gather_exits(exited: list[Exited], size: int, device: torch.device | str) -> ExitResult:
    """One result in input order from the groups that exited together."""
    if len(exited) == 1 and exited[0][0] is None:  # the whole batch at one layer: no scatter
        _, predictions, layer = exited[0]
        return ExitResult(predictions, torch.full_like(predictions, layer))
    predictions = torch.empty(size, dtype=torch.long, device=device)
    exit_layers = torch.empty(size, dtype=torch.long, device=device)
    for positions, predicted, layer in exited:
        predictions[positions], exit_layers[positions] = predicted, layer
    return ExitResult(predictions, exit_layers)
