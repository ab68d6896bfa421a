"""The finished runs of a reproduction, grouped by workload and loss, and the statistics the
claims quote (mean ± sample standard deviation over seeds)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from aligned.reproduce.runs import RunResult


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
