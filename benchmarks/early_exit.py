"""Measured wall-clock speed-up of early exit against the full forward, at batch sizes 1 and 64.

    python benchmarks/early_exit.py --ckpt A.ckpt [--compare-ckpt B.ckpt] [--data-dir DIR]

Trains nothing. For each checkpoint, ``aligned.early_exit.timing.time_early_exit``: each exit
rule's operating point chosen on val (as ``evaluate.py`` does), then the full forward and early
exit at that point timed on the test split in interleaved rounds, per batch and pooled. This
script prints its rows: predicted speed-up = L / mean exit layer, measured = full time /
early-exit time (the median over rounds of each round's ratio). ``--stream N`` also times the
pooled mode over the test set streamed N times, as a long loader or a serving queue feeds it.
"""

from __future__ import annotations

import argparse
import sys

import torch

from aligned.arguments import accuracy_drop, positive_int, positive_seconds
from aligned.config import ConfigError, user_message
from aligned.early_exit.timing import time_early_exit
from aligned.evaluation import LoadedCheckpoint, check_comparable, evaluation_dataloader
from aligned.placement import Placement, resolve_placement
from aligned.training.checkpoints import load_system, read_checkpoint


def parse(argv: list[str] | None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
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
        rows = []
        for model, name in zip(models, names, strict=True):
            val, test = (evaluation_dataloader(model.run_config, {"data_dir": args.data_dir},
                                               split) for split in ("val", "test"))
            timings = time_early_exit(
                model.system, val, test, name=name, placement=placement,
                max_drop=args.max_drop, batch_sizes=args.batch_sizes, rounds=args.rounds,
                round_seconds=args.round_seconds, stream=args.stream)
            print(f"{name}: L = {timings.num_layers}, {timings.test_samples} test samples, "
                  f"full-depth test acc {100 * timings.full_depth_accuracy:.1f}%")
            rows += timings.rows
    except ConfigError as error:  # a missing or foreign checkpoint, a moved data directory
        print(f"Error: {user_message(error)}", file=sys.stderr)  # as train.py and evaluate.py
        sys.exit(2)
    print_rows(rows, args, placement)


def print_rows(rows: list[dict], args: argparse.Namespace, placement: Placement) -> None:
    """Measured speed-up per mode, and its ratio to the predicted L / mean exit layer."""
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
