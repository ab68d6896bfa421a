"""Early-exit rules (METHOD.md §4) and the one loop that applies them layer by layer.

After layer l (1..L) a rule looks at the surviving samples' ``LayerSignals`` (that layer's logits
and the cosine between the features of layers l-1 and l) and says which of them exit; every
sample exits at L at the latest. ``exit_layer_by_layer`` is the only place decisions are made:
the offline simulation feeds it cached signals (``aligned.early_exit.offline``), the real
inference feeds it blocks run on the survivors only (``aligned.early_exit.inference``), so the two
cannot disagree in logic. Rules with memory (patience) keep one row of state per surviving
sample, and the loop subsets that state together with the survivors.

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
from typing import ClassVar

import numpy as np
import torch

from aligned.config import ConfigError, number

State = dict[str, torch.Tensor]  # per-sample tensors, one row per surviving sample


class LayerSignals:
    """What a rule may see after one layer, for the samples still running.

    ``logits`` (B, C) may come as a function that computes them: then they are computed on first
    use, so a rule that does not read them (state) runs the head only at layers where some
    sample leaves.
    ``cosine`` (B,) is cos(h_{l-1}, h_l), NaN at layer 1; None when the rule does not read it
    (``ExitRule.reads_cosine``), so inference skips computing it.
    """

    def __init__(self, logits: torch.Tensor | Callable[[], torch.Tensor],
                 cosine: torch.Tensor | None = None) -> None:
        self._logits = logits
        self.cosine = cosine

    @property
    def logits(self) -> torch.Tensor:
        if not isinstance(self._logits, torch.Tensor):
            self._logits = self._logits()
        return self._logits


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


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    # Softmax in at least float32, as layerwise_pass computes confidences.
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)


class ExitRule:
    """One threshold; ``exits`` decides after ``layer`` which samples leave."""

    name: ClassVar[str]
    bounds: ClassVar[tuple[float, float]]  # the thresholds that mean something
    whole: ClassVar[bool] = False
    reads_cosine: ClassVar[bool] = False
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
        return _probabilities(signals.logits).amax(-1) >= self.threshold, state

    @staticmethod
    def grid(num_layers, num_classes):
        return _UNIT_GRID


@dataclass(repr=False)
class EntropyRule(ExitRule):
    threshold: float
    name: ClassVar[str] = "entropy"
    bounds: ClassVar[tuple[float, float]] = (0.0, math.inf)  # nats

    def exits(self, layer, signals, state):
        p = _probabilities(signals.logits)
        entropy = torch.special.entr(p).sum(-1)  # (B,) nats; entr(p) = -p·log p, 0 at p = 0
        return entropy <= self.threshold, state

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
        prediction = signals.logits.argmax(-1)  # (B,)
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
        return torch.full(signals.logits.shape[:1], layer >= self.threshold,
                          device=signals.logits.device), state

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


def layer_exits(
    rule: ExitRule, layer: int, num_layers: int, signals: LayerSignals, state: State
) -> tuple[torch.Tensor, State]:
    """``rule``'s decisions after ``layer``, except that every sample leaves at L."""
    leaving, state = rule.exits(layer, signals, state)
    return (torch.ones_like(leaving) if layer == num_layers else leaving), state


def split_rows(leaving: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``count`` leaving rows and of the staying rows, each in batch order.
    Gathering with indices costs no further host sync on a GPU (a boolean mask costs one per
    tensor it indexes)."""
    order = torch.argsort(leaving.to(torch.uint8), descending=True, stable=True)
    return order[:count], order[count:]


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
        leaving, state = layer_exits(rule, layer, num_layers, signals, state)
        # The survivors' count sizes the next block (a host sync on GPU); one sample's flag is
        # read directly, an op fewer per layer at batch 1.
        exiting = int(leaving) if len(leaving) == 1 else int(leaving.sum())
        if exiting == len(leaving):  # all leave: always at L, and at batch 1 when the sample exits
            exited.append((rows, signals.logits.argmax(-1), layer))
            break
        if exiting:
            out, keep = split_rows(leaving, exiting)
            if rows is None:
                rows = torch.arange(batch_size, device=device)
            exited.append((rows[out], signals.logits[out].argmax(-1), layer))
            rows = rows[keep]
            state = {key: value[keep] for key, value in state.items()}
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
