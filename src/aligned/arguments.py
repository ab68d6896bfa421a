"""argparse types of the command lines (the benchmarks, export): a value out of range is an
argparse error that names the flag and the range, and the command exits 2. ``output_problem``
says the same of a path to write, for the commands that report their own errors."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (no upper end without ``high``)."""
    wanted = f"an integer of at least {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got '{text}'")
        return value

    return parse


non_negative_int = int_in(0)
# numpy's seeding range, which Lightning's seed_everything uses
random_seed = int_in(0, 2**32 - 1)


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


def output_problem(path: str | Path, directory: bool = False) -> str | None:
    """Why ``path`` cannot be written (as a file, or with ``directory`` as a directory; missing
    parents are made), or None: checked before a command's work, not after it."""
    path = Path(path).expanduser().absolute()
    if path.exists():
        if directory and not path.is_dir():
            return "is a file, not a directory"
        if not directory and path.is_dir():
            return "is a directory; give the path of a file"
        return None if os.access(path, os.W_OK) else "is not writable"
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        return f"cannot be made: {existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be made: {existing} is not writable"
    return None


def output_file(text: str) -> Path:
    """A file to write (its missing parent directories are made)."""
    problem = output_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"'{text}' {problem}")
    return Path(text).expanduser()


def output_directory(text: str) -> Path:
    """A directory to write into (made with its parents when missing)."""
    problem = output_problem(text, directory=True)
    if problem:
        raise argparse.ArgumentTypeError(f"'{text}' {problem}")
    return Path(text).expanduser()


def torch_device(text: str) -> str:
    """cpu, cuda, cuda:N or mps, present on this machine."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got '{text}'")
    present = {"cpu": 1, "cuda": torch.cuda.device_count(),
               "mps": int(torch.backends.mps.is_available())}[device.type]
    if (device.index or 0) >= present:
        raise argparse.ArgumentTypeError(f"'{text}': this machine has {present} {device.type} "
                                         "device(s)")
    return text
