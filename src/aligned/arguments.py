"""argparse types of the command lines (the benchmarks): a value out of range is an argparse
error that names the flag and the range, and the command exits 2."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _number(text: str) -> float:
    """``text`` as a float; NaN (which every range check refuses) when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def positive_seconds(text: str) -> float:
    """A duration in seconds, above 0."""
    value = _number(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got '{text}'")
    return value


def accuracy_drop(text: str) -> float:
    """A drop of accuracy as a fraction in [0, 1) (0.01 = one point)."""
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a fraction of accuracy in [0, 1) (0.01 = one point), got '{text}'")
    return value
