"""What every claim of the report is made of: the ``Claim`` section, per-workload outcomes and
the one rule that turns them into a verdict, and the small helpers the claims share.

Every claim states a test that one workload passes or fails (None: that workload lacks the
runs the test needs; WITHIN_NOISE: a timed test whose threshold lies inside its rounds'
spread). The verdict is the same function of those outcomes for every claim: holds when every
measured workload passes, partly when some do, does not hold at this scale when none does, not
measured when no workload has the runs, not decided when it hangs on a test within noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from aligned.reproduce.collected import Collected

HOLDS, PARTLY, FAILS, UNMEASURED = "holds", "partly", "does not hold at this scale", "not measured"
UNDECIDED = "not decided at this precision"
VERDICT_RULE = ("holds: the test passes on every workload measured; partly: on some; does not "
                "hold at this scale: on none; not measured: no workload has the runs it needs; "
                f"{UNDECIDED}: the verdict would change with a timed test that is within its "
                "rounds' noise of its threshold")
WITHIN_NOISE = "within noise"  # a test outcome: neither passed nor failed at this precision
Outcome = bool | str | None  # passed, WITHIN_NOISE, or None (not measurable)
SHARED_HEAD = ("standard", "aligned")  # the losses whose every layer reads the one head


@dataclass
class Claim:
    """One section of the report."""

    key: str
    title: str
    statement: str  # what the paper claims, in our words
    rule: str  # the per-workload test
    table: list[str]  # markdown lines
    outcomes: dict[str, Outcome]  # per workload: passed, failed, within noise, or None
    figures: list[str] = field(default_factory=list)  # figure kinds (report.FIGURES)
    note: str = ""

    @property
    def verdict(self) -> str:
        return verdict_of(self.outcomes)


def verdict_of(outcomes: dict[str, Outcome]) -> str:
    measured = [outcome for outcome in outcomes.values() if outcome is not None]
    if not measured:
        return UNMEASURED
    passes, fails = True in measured, False in measured
    if WITHIN_NOISE in measured:  # decided only where either way out gives the same verdict
        return PARTLY if passes and fails else UNDECIDED
    if all(measured):
        return HOLDS
    return PARTLY if passes else FAILS


def all_passed(outcomes: list[Outcome]) -> Outcome:
    """One outcome for tests that must all pass: a failure fails, noise leaves it open."""
    if False in outcomes:
        return False
    return WITHIN_NOISE if WITHIN_NOISE in outcomes else True


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def passed(outcome: Outcome) -> str:
    return {True: "pass", False: "fail", None: "not measured", WITHIN_NOISE: WITHIN_NOISE}[outcome]


def nan_to_fail(value: float, test: Callable[[float], bool]) -> bool:
    """An undefined measure (NaN, e.g. a correlation with a constant curve) fails its test."""
    return not math.isnan(value) and test(value)


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; inf over 0 (NaN for 0 / 0, which fails its test)."""
    if denominator == 0:
        return math.inf if numerator > 0 else math.nan
    return numerator / denominator


def all_losses(collected: Collected) -> list[str]:
    """The losses present, in the canonical order (standard, aligned, multiexit)."""
    present = {run.loss for run in collected.runs}
    order = ["standard", "aligned", "multiexit", "alternating", "sampled"]
    return [loss for loss in order if loss in present] + sorted(present - set(order))


def title(collected: Collected, workload: str) -> str:
    return collected.titles.get(workload, workload)
