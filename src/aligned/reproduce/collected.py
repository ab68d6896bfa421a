"""The finished runs of a reproduction, grouped by workload and loss, and the statistics the
claims quote (mean ± sample standard deviation over seeds)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable
from pathlib import Path

from aligned.reproduce.runs import RunResult, read_json
from aligned.training.json_files import write_json

STORED_RUNS = "reproduction-runs"  # beside the report: <workload>.json, each workload's runs


class Collected:
    """Runs keyed by (workload, loss, seed); ``titles`` names each workload for the report."""

    def __init__(self, runs: list[RunResult], titles: dict[str, str]) -> None:
        self.runs = runs
        self.titles = titles

    @property
    def workloads(self) -> list[str]:
        return list(dict.fromkeys(run.workload for run in self.runs))

    def losses(self, workload: str) -> list[str]:
        return list(dict.fromkeys(run.loss for run in self.runs if run.workload == workload))

    def of(self, workload: str, loss: str) -> list[RunResult]:
        """The runs of one workload and loss, by seed."""
        return sorted((run for run in self.runs if run.workload == workload and run.loss == loss),
                      key=lambda run: run.seed)

    def paired(self, workload: str, loss: str, reference: str
               ) -> list[tuple[RunResult, RunResult]]:
        """(run of ``loss``, run of ``reference``) for every seed both have."""
        others = {run.seed: run for run in self.of(workload, reference)}
        return [(run, others[run.seed]) for run in self.of(workload, loss) if run.seed in others]


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for fewer than two values); NaN values count,
    so a measure that is undefined for one seed stays visible."""
    values = list(values)
    if not values:
        return math.nan, math.nan
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def pm(values: Iterable[float], scale: float = 1.0, digits: int = 1) -> str:
    """'mean ± std' of ``values`` times ``scale``; '—' for none, 'n/a' for an undefined one."""
    values = list(values)
    if not values:
        return "—"
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    text = f"{scale * mean:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {scale * std:.{digits}f}"


def mean(values: Iterable[float]) -> float:
    return mean_std(values)[0]


def save_runs(path: Path, runs: list[RunResult], root: Path) -> None:
    """Store one workload's runs as the claims read them, with the runs of its other (loss,
    seed) pairs that ``path`` already holds; directories relative to ``root`` where inside."""
    made = {(run.loss, run.seed) for run in runs}
    kept = [run for run in load_runs(path, root) if (run.loss, run.seed) not in made]
    rows = []
    for run in sorted([*kept, *runs], key=lambda run: (run.seed, run.loss)):
        row = dataclasses.asdict(run)
        directory = Path(run.directory)
        row["directory"] = (directory.relative_to(root).as_posix()
                            if directory.is_relative_to(root) else str(directory))
        row["reused"] = {}
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"runs": rows})


def load_runs(path: Path, root: Path) -> list[RunResult]:
    """The runs ``save_runs`` stored at ``path`` (none when it is missing), marked as stored."""
    stored = read_json(path)
    if stored is None:
        return []
    runs = []
    for row in stored["runs"]:
        row = {**row, "directory": root / row["directory"], "reused": {"stored": True},
               "overrides": tuple(row.get("overrides", ()))}
        runs.append(RunResult(**row))
    return runs
