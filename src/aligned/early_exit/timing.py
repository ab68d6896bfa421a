"""Measured wall-clock speed-up of early exit against the full forward (docs/early-exit.md).

For one model: the exit rules are swept on val and each rule's operating point is chosen there
(as ``evaluate.py`` does: smallest mean exit layer within ``max_drop`` of full-depth val
accuracy); then, on the test split, the full forward (all blocks, the head on the last layer
only) and the early-exit inference at that operating point (blocks on the survivors only, the
read-out and exit head after every block) are timed in interleaved rounds (a round repeats a
short run to last about ``round_seconds``). Predicted speed-up = L / mean exit layer; measured =
full time / early-exit time, the median over rounds of each round's ratio (every round's ratio
is kept in the rows: ``rounds_bs1``, ``rounds_bs64_pooled``). Batches are slices of the test
loader's batches (text keeps that batch's padding).

Two early-exit modes at batch sizes > 1: ``per batch`` (each batch on its own: later blocks run
on that batch's few survivors) and ``pooled`` (``aligned.early_exit.pooled``: survivors of
successive batches wait per layer until a full batch is pending, so every block but the final
flush runs on a full batch; the throughput mode for a loader or a request queue). A short test
set (digits: 360 images, six batches) makes the final flush, whose deeper blocks run on a few
samples each, weigh on the pooled time; ``stream`` > 1 also times the pooled mode (and the full
forward) over the test set streamed that many times, as a long loader or a serving queue would
feed it.

    from aligned.early_exit.timing import time_early_exit
    timings = time_early_exit(system, val_loader, test_loader, batch_sizes=(1, 64))
    timings.rows  # per rule: threshold, accuracy, mean_exit_layer, speedup, measured_bs1, ...

``benchmarks/early_exit.py`` prints these figures for one or two checkpoints;
``python -m aligned.reproduce`` stores them per run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from aligned.config import ConfigError, number, positive_int
from aligned.early_exit.inference import EarlyExitClassifier
from aligned.early_exit.offline import early_exit_summary
from aligned.early_exit.pooled import PooledEarlyExit
from aligned.early_exit.rules import make_rule
from aligned.early_exit.signals import collect_exit_signals
from aligned.placement import Placement, resolve_placement
from aligned.training.system import LayerwiseClassifier, unpack


@dataclass
class ExitTimings:
    """One model's timed early exit: a row per exit rule (its operating point, chosen on val
    and measured on test, with the measured speed-ups) and what the rows were measured on."""

    rows: list[dict[str, Any]]
    num_layers: int
    test_samples: int
    full_depth_accuracy: float  # on test


def time_early_exit(
    system: LayerwiseClassifier, val: Iterable, test: Iterable, *, name: str = "model",
    placement: Placement | None = None, max_drop: float = 0.01,
    batch_sizes: Sequence[int] = (1, 64), rounds: int = 5, round_seconds: float = 0.5,
    stream: int = 1,
) -> ExitTimings:
    """Early exit at each rule's operating point against the full forward, timed on ``test``
    at each of ``batch_sizes`` (per batch, and pooled above batch 1). ``val`` and ``test`` are
    the model's val and test loaders; ``name`` labels the rows (``model``); ``placement``
    defaults to the first GPU if any, else the CPU, in float32. Row keys per batch size b:
    ``measured_bs<b>`` (median of ``rounds_bs<b>``), ``full_ms_bs<b>``, and above batch 1
    ``measured_bs<b>_pooled`` (``rounds_bs<b>_pooled``) and, with ``stream`` > 1,
    ``measured_bs<b>_stream``."""
    number("max_drop", max_drop, 0, 1, high_open=True)
    for key, value in (("rounds", rounds), ("stream", stream),
                       *(("batch_sizes", size) for size in batch_sizes)):
        positive_int(key, value)
    if not round_seconds > 0:
        raise ConfigError(f"round_seconds must be a number of seconds above 0, got "
                          f"{round_seconds!r}.")
    placement = placement or resolve_placement("auto", "32")
    system = system.to(placement.device)
    signals = {split: collect_exit_signals(system, loader, progress=False,
                                           autocast=placement.autocast)
               for split, loader in (("val", val), ("test", test))}
    summary = early_exit_summary(signals["val"], signals["test"], max_drop)
    rules = {rule: make_rule(rule, entry["chosen"]["threshold"])
             for rule, entry in summary["rules"].items() if entry["chosen"] is not None}
    rows = [{"model": name, "rule": rule, **summary["rules"][rule]["chosen"]} for rule in rules]
    forward = full_forward(system, placement.autocast)
    for batch_size in batch_sizes:
        batches = [system.transfer_batch_to_device(b, placement.device, 0)
                   for b in slices(test, batch_size)]
        runs = {"full": lambda bs=batches: [forward(b) for b in bs]}
        streamed = batches * stream  # the test set, streamed ``stream`` times
        if batch_size > 1 and stream > 1:
            runs["full stream"] = lambda bs=streamed: [forward(b) for b in bs]
        for rule_name, rule in rules.items():
            classifier = EarlyExitClassifier(system, rule, placement.autocast)
            runs[rule_name] = lambda c=classifier, bs=batches: [c(b) for b in bs]
            if batch_size > 1:
                pooled = PooledEarlyExit(system, rule, batch_size, placement.autocast)
                runs[f"{rule_name} pooled"] = lambda p=pooled, bs=batches: p.run(bs)
                if stream > 1:
                    runs[f"{rule_name} stream"] = lambda p=pooled, bs=streamed: p.run(bs)
        with torch.inference_mode():
            times = round_times(runs, rounds, min_seconds=round_seconds,
                                synchronize=placement.synchronize)
        seconds = {run: statistics.median(values) for run, values in times.items()}
        for row in rows:
            # The median of the rounds' speed-ups: each round's pair timed close together, so
            # load that comes and goes between rounds cancels in the ratio.
            row[f"rounds_bs{batch_size}"] = speedups(times, row["rule"])
            row[f"measured_bs{batch_size}"] = statistics.median(row[f"rounds_bs{batch_size}"])
            row[f"full_ms_bs{batch_size}"] = 1000 * seconds["full"]
            if batch_size > 1:
                pooled = speedups(times, f"{row['rule']} pooled")
                row[f"rounds_bs{batch_size}_pooled"] = pooled
                row[f"measured_bs{batch_size}_pooled"] = statistics.median(pooled)
                if stream > 1:
                    row[f"measured_bs{batch_size}_stream"] = (
                        seconds["full stream"] / seconds[f"{row['rule']} stream"])
    return ExitTimings(rows, summary["num_layers"], len(signals["test"]),
                       summary["full_depth_accuracy"]["test"])


def full_forward(system: LayerwiseClassifier, autocast: Callable = nullcontext
                 ) -> Callable[[Any], torch.Tensor]:
    """The model without early exit: every block, one read-out and the head at layer L."""
    backbone = system.backbone

    def forward(inputs: Any) -> torch.Tensor:
        with autocast():
            state = backbone.begin(inputs)
            for layer in range(1, backbone.num_layers + 1):
                state = backbone.run_block(layer, state)
            return system.objective.logits_at(backbone.num_layers, backbone.read(state),
                                              backbone.head)

    return forward


def slices(loader: Iterable, batch_size: int) -> list[Any]:
    """The loader's inputs cut into batches of ``batch_size`` (the last one of each loader
    batch may be shorter)."""
    batches = []
    for batch in loader:
        inputs, _ = unpack(batch)
        total = len(inputs) if isinstance(inputs, torch.Tensor) else len(inputs["input_ids"])
        for start in range(0, total, batch_size):
            rows = slice(start, start + batch_size)
            batches.append(inputs[rows] if isinstance(inputs, torch.Tensor)
                           else {k: v[rows] for k, v in inputs.items()})
    return batches


def time_rounds(runs: dict[str, Callable[[], None]], rounds: int,
                min_seconds: float = 0.5, synchronize: Callable[[], None] = lambda: None
                ) -> dict[str, float]:
    """Median seconds per run over ``round_times``' rounds."""
    times = round_times(runs, rounds, min_seconds, synchronize)
    return {name: statistics.median(values) for name, values in times.items()}


def round_times(runs: dict[str, Callable[[], None]], rounds: int,
                min_seconds: float = 0.5, synchronize: Callable[[], None] = lambda: None
                ) -> dict[str, list[float]]:
    """Seconds per run in each round, interleaved so that drift in machine load hits all
    equally. In a round, a short run repeats ⌈``min_seconds`` / its time⌉ times (digits at
    batch 64: a pass takes ~40 ms), so that scheduler noise averages out within the round.
    ``synchronize`` waits for a GPU's queued work, so a round times the work, not its launch."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    repeats = {}
    for name, run in runs.items():
        run()  # warm-up: one-time costs
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        repeats[name] = max(1, math.ceil(min_seconds / (time.perf_counter() - start)))
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(repeats[name]):
                run()
            synchronize()
            times[name].append((time.perf_counter() - start) / repeats[name])
    return times


def speedups(times: dict[str, list[float]], run: str) -> list[float]:
    """The full forward's time over ``run``'s, round by round (a round times both in turn)."""
    return [full / t for full, t in zip(times["full"], times[run], strict=True)]
