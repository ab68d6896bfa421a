"""Measured wall-clock speed-up of early exit against the full forward, at batch sizes 1 and 64.

    python benchmarks/early_exit.py --ckpt A.ckpt [--compare-ckpt B.ckpt] [--data-dir DIR]

Trains nothing. For each checkpoint: the exit rules are swept on val and each rule's operating
point is chosen there (as ``evaluate.py`` does: smallest mean exit layer within --max-drop of
full-depth val accuracy); then, on the test split, the full forward (all blocks, the head on the
last layer only) and the early-exit inference at that operating point (blocks on the survivors
only, the read-out and exit head after every block) are timed in interleaved rounds (a round
repeats a short run to last about 0.5 s). Predicted speed-up = L / mean exit layer; measured =
full time / early-exit time, the median over rounds of each round's ratio (every round's ratio
is kept in the rows: ``rounds_bs1``, ``rounds_bs64_pooled``).
Batches are slices of the test loader's batches (text keeps that batch's padding).

Two early-exit modes at batch sizes > 1: ``per batch`` (each batch on its own: later blocks run
on that batch's few survivors) and ``pooled`` (``aligned.early_exit.pooled``: survivors of
successive
batches wait per layer until a full batch is pending, so every block but the final flush runs
on a full batch; the throughput mode for a loader or a request queue). The test set is short
(digits: 360 images, six batches), so the final flush, whose deeper blocks run on a few samples
each, weighs on the pooled time; ``--stream N`` also times the pooled mode (and the full forward)
over the test set streamed N times, as a long loader or a serving queue would feed it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from aligned.analysis.layerwise_pass import collect_exit_signals
from aligned.config import ConfigError, user_message
from aligned.early_exit.inference import EarlyExitClassifier
from aligned.early_exit.offline import early_exit_summary
from aligned.early_exit.pooled import PooledEarlyExit
from aligned.early_exit.rules import make_rule
from aligned.evaluation import LoadedCheckpoint, check_comparable, evaluation_dataloader
from aligned.placement import Placement, resolve_placement
from aligned.training.checkpoints import load_system, read_checkpoint
from aligned.training.system import LayerwiseClassifier, unpack


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


def slices(loader: Any, batch_size: int) -> list[Any]:
    """The test inputs cut into batches of ``batch_size`` (the last one of each loader batch
    may be shorter)."""
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


def benchmark(model: LoadedCheckpoint, name: str, args: argparse.Namespace,
              placement: Placement) -> list[dict[str, Any]]:
    system = model.system.to(placement.device)
    overrides = {"data_dir": args.data_dir}
    loaders = {split: evaluation_dataloader(model.run_config, overrides, split)
               for split in ("val", "test")}
    signals = {split: collect_exit_signals(system, loader, progress=False,
                                           autocast=placement.autocast)
               for split, loader in loaders.items()}
    summary = early_exit_summary(signals["val"], signals["test"], args.max_drop)
    num_layers = summary["num_layers"]
    rules = {rule: make_rule(rule, entry["chosen"]["threshold"])
             for rule, entry in summary["rules"].items() if entry["chosen"] is not None}
    rows = [{"model": name, "rule": rule, **summary["rules"][rule]["chosen"]} for rule in rules]
    forward = full_forward(system, placement.autocast)
    for batch_size in args.batch_sizes:
        batches = [system.transfer_batch_to_device(b, placement.device, 0)
                   for b in slices(loaders["test"], batch_size)]
        runs = {"full": lambda bs=batches: [forward(b) for b in bs]}
        stream = batches * args.stream  # the test set, streamed --stream times
        if batch_size > 1 and args.stream > 1:
            runs["full stream"] = lambda bs=stream: [forward(b) for b in bs]
        for rule_name, rule in rules.items():
            classifier = EarlyExitClassifier(system, rule, placement.autocast)
            runs[rule_name] = lambda c=classifier, bs=batches: [c(b) for b in bs]
            if batch_size > 1:
                pooled = PooledEarlyExit(system, rule, batch_size, placement.autocast)
                runs[f"{rule_name} pooled"] = lambda p=pooled, bs=batches: p.run(bs)
                if args.stream > 1:
                    runs[f"{rule_name} stream"] = lambda p=pooled, bs=stream: p.run(bs)
        with torch.inference_mode():
            times = round_times(runs, args.rounds, min_seconds=args.round_seconds,
                                synchronize=placement.synchronize)
        seconds = {name: statistics.median(values) for name, values in times.items()}
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
                if args.stream > 1:
                    row[f"measured_bs{batch_size}_stream"] = (
                        seconds["full stream"] / seconds[f"{row['rule']} stream"])
    print(f"{name}: L = {num_layers}, {len(signals['test'].labels)} test samples, full-depth "
          f"test acc {100 * summary['full_depth_accuracy']['test']:.1f}%")
    return rows


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a duration in seconds, above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got '{text}'")
    return value


def accuracy_drop(text: str) -> float:
    """argparse type: a drop of accuracy as a fraction in [0, 1) (0.01 = one point)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a fraction of accuracy in [0, 1) (0.01 = one point), got '{text}'")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--compare-ckpt")
    parser.add_argument("--data-dir", help="override the checkpoint's data directory")
    parser.add_argument("--max-drop", type=accuracy_drop, default=0.01,
                        help="accuracy an operating point may lose on val, a fraction in [0, 1) "
                             "(0.01 = one point)")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--round-seconds", type=positive_seconds, default=0.5,
                        help="a round repeats a short run until it lasts this long")
    parser.add_argument("--stream", type=positive_int, default=1,
                        help="also time pooled inference over the test set streamed this many "
                             "times (the final flush then comes once per that many passes)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (1: steadier timings on a shared machine)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    parser.add_argument("--precision", default="32", help="32, bf16-mixed or 16-mixed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        placement = resolve_placement(args.device, args.precision)
        models = []
        for flag, path in (("--ckpt", args.ckpt), ("--compare-ckpt", args.compare_ckpt)):
            if path is None:
                continue
            checkpoint = read_checkpoint(path, key=flag)
            models.append(LoadedCheckpoint(path, checkpoint["run_config"],
                                           load_system(checkpoint), {}, None))
        names = [m.run_config.get("names", {}).get("loss", "model") for m in models]
        if len(models) == 2:
            for split in ("val", "test"):  # as evaluate.py's compare_to
                check_comparable(*models, split)
            if names[0] == names[1]:
                names = [f"{names[0]} (A)", f"{names[1]} (B)"]
        rows = [row for model, name in zip(models, names, strict=True)
                for row in benchmark(model, name, args, placement)]
    except ConfigError as error:  # a missing or foreign checkpoint, a moved data directory
        print(f"Error: {user_message(error)}", file=sys.stderr)  # as train.py and evaluate.py
        sys.exit(2)
    # Measured speed-up per mode, and its ratio to the predicted L / mean exit layer.
    modes = [(f"bs{b}", f"measured_bs{b}") for b in args.batch_sizes]
    modes += [(f"bs{b} pooled", f"measured_bs{b}_pooled") for b in args.batch_sizes if b > 1]
    if args.stream > 1:
        modes += [(f"bs{b} pooled, {args.stream}x stream", f"measured_bs{b}_stream")
                  for b in args.batch_sizes if b > 1]
    header = ["model", "rule", "threshold", "test acc %", "mean exit", "predicted"]
    header += [f"measured {name} (/predicted)" for name, _ in modes]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        cells = [row["model"], row["rule"], f"{row['threshold']:.4g}",
                 f"{100 * row['accuracy']:.1f}", f"{row['mean_exit_layer']:.2f}",
                 f"{row['speedup']:.2f}x"]
        cells += [f"{row[key]:.2f}x ({row[key] / row['speedup']:.2f})" for _, key in modes]
        print("| " + " | ".join(cells) + " |")
    per_model: dict[str, dict] = {}
    for row in rows:
        per_model.setdefault(row["model"], row)
    print("\nfull forward per pass over the test set: " + "; ".join(
        f"{model} " + ", ".join(f"bs{b} {row[f'full_ms_bs{b}']:.0f} ms" for b in args.batch_sizes)
        for model, row in per_model.items())
        + f"; {torch.get_num_threads()} torch threads; {placement.describe()['device_name']}, "
        f"precision {placement.precision}")


if __name__ == "__main__":
    main()
