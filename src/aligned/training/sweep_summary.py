"""Summary of a Hydra multirun: runs grouped by configuration (everything but the seed), with the
mean ± std over seeds of each layer's test accuracy and of the final val/test accuracy.

    python train.py -m loss=standard,aligned,multiexit seed=0,1,2   # summary written at the end
    python -m aligned.training.sweep_summary multirun/<date_time>   # (re)write it for any sweep

Writes ``summary.csv`` (fractions, one row per configuration) and ``summary.md`` (a table in %)
at the sweep root. Layers are numbered 1..L as in ``results.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from aligned.arguments import output_problem
from aligned.training import interruption
from aligned.training.json_files import restore_non_finite

RESULTS_FILE = "results.json"
CSV_FILE = "summary.csv"
MARKDOWN_FILE = "summary.md"
# results.json names these; the job's overrides that chose them would only repeat them.
CONFIG_FIELDS = ("model", "data", "loss")
SEED_KEY = "seed"


class SweepSummaryError(ValueError):
    """Nothing to summarise; the message says why."""


@dataclass(frozen=True)
class Run:
    job_dir: Path
    results: dict[str, Any]
    overrides: tuple[str, ...]  # the job's own overrides, less the seed and CONFIG_FIELDS

    @property
    def configuration(self) -> tuple:
        return (*(self.results[field] for field in CONFIG_FIELDS), self.overrides)


def override_key(override: str) -> str:
    """``+trainer.limit_train_batches=3`` -> ``trainer.limit_train_batches``."""
    return override.split("=", 1)[0].lstrip("+~")


def job_overrides(job_dir: Path) -> tuple[str, ...]:
    """The job's overrides as Hydra recorded them (sorted), less the seed and model/data/loss."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ()
    overrides = OmegaConf.to_container(OmegaConf.load(path))
    skipped = {SEED_KEY, *CONFIG_FIELDS}
    return tuple(sorted(o for o in overrides if override_key(o) not in skipped))


def find_runs(sweep_dir: Path) -> tuple[list[Run], list[Path]]:
    """Every finished run under ``sweep_dir``, and the job dirs Hydra started (they hold a
    ``.hydra/`` folder) that have no readable results.json: failed or killed jobs."""
    runs = []
    for path in sorted(sweep_dir.rglob(RESULTS_FILE)):
        try:
            results = restore_non_finite(json.loads(path.read_text()))
        except json.JSONDecodeError:  # cut short while writing; counts as unfinished
            continue
        runs.append(Run(path.parent, results, job_overrides(path.parent)))
    finished = {run.job_dir for run in runs}
    unfinished = sorted(
        hydra_dir.parent for hydra_dir in sweep_dir.rglob(".hydra")
        if hydra_dir.is_dir() and hydra_dir.parent not in finished
    )
    return runs, unfinished


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value: no spread measured)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def layer_column(layer: int, stat: str) -> str:
    return f"test_L{layer:02d}_{stat}"


def summarize_runs(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per configuration; layers a configuration lacks (a shallower model) are None."""
    groups: dict[tuple, list[Run]] = {}
    for run in sorted(runs, key=lambda run: (run.results[SEED_KEY], str(run.job_dir))):
        groups.setdefault(run.configuration, []).append(run)
    num_layers = max(len(run.results["layer_accuracy"]["test"]) for run in runs)

    rows = []
    for (model, data, loss, overrides), group in sorted(groups.items(), key=lambda kv: kv[0]):
        row: dict[str, Any] = {
            "model": model,
            "data": data,
            "loss": loss,
            "metric": group[0].results.get("metric", "accuracy"),
            "overrides": " ".join(overrides),
            "num_seeds": len(group),
            "seeds": " ".join(str(run.results[SEED_KEY]) for run in group),
        }
        for split in ("test", "val"):
            finals = [run.results["final_accuracy"][split] for run in group]
            row[f"final_{split}_mean"], row[f"final_{split}_std"] = mean_std(finals)
        for layer in range(1, num_layers + 1):
            values = [
                run.results["layer_accuracy"]["test"][layer - 1] for run in group
                if len(run.results["layer_accuracy"]["test"]) >= layer
            ]
            mean, std = mean_std(values) if values else (None, None)
            row[layer_column(layer, "mean")], row[layer_column(layer, "std")] = mean, std
        rows.append(row)
    return rows


def num_layer_columns(rows: list[dict[str, Any]]) -> int:
    return sum(1 for key in rows[0] if key.endswith("_mean") and key.startswith("test_L"))


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def configuration_label(row: dict[str, Any], shared: set[str]) -> str:
    """``vit digits aligned optim.lr=0.01``: the overrides every configuration shares left out."""
    own = sorted(set(row["overrides"].split()) - shared)
    metric = [] if row["metric"] == "accuracy" else [f"({row['metric']})"]
    return " ".join([row["model"], row["data"], row["loss"], *own, *metric])


def format_markdown(rows: list[dict[str, Any]], unfinished: list[Path], sweep_dir: Path) -> str:
    """The rows as a table in %, the overrides every configuration shares listed once above it."""
    shared = set.intersection(*(set(row["overrides"].split()) for row in rows))
    layers = range(1, num_layer_columns(rows) + 1)
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        "Test accuracy (%) of the shared head at each layer, mean ± sample std over seeds; "
        "final = the last layer, best-val checkpoint.",
    ]
    if shared:
        lines.append("Overrides shared by all runs: " + " ".join(f"`{o}`" for o in sorted(shared)))
    header = ["configuration", "seeds", *(f"L{layer}" for layer in layers), "final val",
              "final test"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    repeated = []
    for row in rows:
        label = configuration_label(row, shared)
        cells = [label, f"{row['num_seeds']} ({row['seeds']})"]
        cells += [_pct(row[layer_column(layer, "mean")], row[layer_column(layer, "std")])
                  for layer in layers]
        cells += [_pct(row["final_val_mean"], row["final_val_std"]),
                  _pct(row["final_test_mean"], row["final_test_std"])]
        lines.append("| " + " | ".join(cells) + " |")
        if len(set(row["seeds"].split())) < row["num_seeds"]:
            repeated.append(label)
    if repeated:
        lines += ["", "Warning: a seed appears more than once in: " + "; ".join(repeated)
                  + " (runs that differ in something neither results.json nor the overrides "
                  "record?)"]
    if unfinished:
        names = ", ".join(str(path.relative_to(sweep_dir)) for path in unfinished)
        lines += ["", f"Warning: skipped {len(unfinished)} job dir(s) without results.json "
                      f"(failed, stopped early or still running): {names}"]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def summarize_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write ``summary.csv`` and ``summary.md`` into ``sweep_dir``; returns the CSV's rows."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise SweepSummaryError(f"sweep directory {sweep_dir} does not exist.")
    problem = output_problem(sweep_dir, directory=True)  # before reading every job's results
    if problem:
        raise SweepSummaryError(f"sweep directory {sweep_dir} {problem}.")
    runs, unfinished = find_runs(sweep_dir)
    if not runs:
        raise SweepSummaryError(
            f"no {RESULTS_FILE} under {sweep_dir} "
            f"({len(unfinished)} job dir(s) without one: failed, stopped early or still running)."
        )
    rows = summarize_runs(runs)
    write_csv(rows, sweep_dir / CSV_FILE)
    (sweep_dir / MARKDOWN_FILE).write_text(format_markdown(rows, unfinished, sweep_dir))
    return rows


class SweepSummaryCallback(Callback):
    """Hydra callback: summarises the sweep directory when a multirun ends (any launcher; this
    runs in the launching process). Registered under ``hydra.callbacks`` in conf/train.yaml."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        stop = interruption.received()  # a signal stopped a job; train.py ran no later ones
        try:
            summarize_sweep(sweep_dir)
        except SweepSummaryError as error:  # the jobs' own errors were reported already
            print(f"No sweep summary: {error}", file=sys.stderr)
            sys.exit(stop.exit_code if stop else 1)
        print_written(sweep_dir)
        unfinished = find_runs(sweep_dir)[1]
        if stop:
            names = ", ".join(str(path.relative_to(sweep_dir)) for path in unfinished)
            print(f"The sweep was {stop}; jobs without results: {names}.", file=sys.stderr)
            sys.exit(stop.exit_code)
        if unfinished:  # failed jobs (train.py let the others run): exit 1
            sys.exit(1)


def print_written(sweep_dir: Path) -> None:
    print((sweep_dir / MARKDOWN_FILE).read_text())
    print(f"wrote {sweep_dir / CSV_FILE} and {sweep_dir / MARKDOWN_FILE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aligned.training.sweep_summary",
        description="Summarise a Hydra multirun of train.py: mean ± std over seeds per config.",
    )
    parser.add_argument("sweep_dir", type=Path, help="e.g. multirun/2025-01-31_12-00-00")
    args = parser.parse_args(argv)
    try:
        summarize_sweep(args.sweep_dir)
    except SweepSummaryError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    print_written(args.sweep_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
