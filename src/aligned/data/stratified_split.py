"""The seeded, stratified train/val/test split of a labelled data set held in memory (digits,
MNIST, BBC News): which samples each split holds depends only on the split settings."""

from __future__ import annotations

import math

import numpy as np
from sklearn.model_selection import train_test_split

from aligned.config import ConfigError


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float,
                     split_seed: int) -> dict[str, np.ndarray]:
    """Indices of ``labels`` per split: test is cut first (so it depends only on
    ``split_seed`` and ``test_fraction``), then val from the rest; each keeps the class
    proportions."""
    index = np.arange(len(labels))
    train_val, test = train_test_split(
        index, test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    train, val = train_test_split(
        train_val,
        test_size=val_fraction / (1 - test_fraction),
        stratify=labels[train_val],
        random_state=split_seed,
    )
    return {"train": train, "val": val, "test": test}


def check_split_sizes(total: int, num_classes: int, val_fraction: float, test_fraction: float,
                      what: str = "images") -> None:
    """Every split must hold at least one sample per class (the splits are stratified), counted
    as ``train_test_split`` rounds: the held-out part of each cut is rounded up. ``what``
    names the samples in the message (e.g. 'digits', 'articles')."""
    test = math.ceil(test_fraction * total)
    val = math.ceil(val_fraction / (1 - test_fraction) * (total - test))
    sizes = {"train": total - test - val, "val": val, "test": test}
    small = [split for split, size in sizes.items() if size < num_classes]
    if small:
        counts = ", ".join(f"{split} {size}" for split, size in sizes.items())
        smallest = math.ceil(100 * num_classes / total) / 100
        raise ConfigError(
            f"data.val_fraction={val_fraction:g} and data.test_fraction={test_fraction:g} split "
            f"the {total} {what} into {counts}; every split needs at least {num_classes} (one "
            f"per class). Choose fractions of at least {max(smallest, 0.01):g} that leave at "
            f"least {num_classes} to train on."
        )
