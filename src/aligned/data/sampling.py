"""A shuffling sampler whose order depends only on (seed, epoch), so a resumed run sees the
same batches as an uninterrupted one; and the check of a configured split fraction."""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import RandomSampler

from aligned.config import ConfigError


class EpochShuffleSampler(RandomSampler):
    """``RandomSampler`` whose permutation is drawn from its own generator seeded with
    ``seed + epoch`` instead of the global RNG.

    Lightning calls ``set_epoch`` before each epoch (as for ``DistributedSampler``), and the
    order no longer depends on when Lightning creates the iterator: on resume it creates the
    first one on another path, which with a plain ``RandomSampler`` drew another order. The
    default seed is ``PL_GLOBAL_SEED``, the seed ``L.seed_everything`` sets and Lightning's own
    ``DistributedSampler`` uses. Being a ``RandomSampler``, it is still replaced by a shuffling
    ``DistributedSampler`` under DDP.

    Build loaders with ``shuffling(dataset)``, which also hands the loader this sampler's
    generator: creating an iterator draws a base seed for the workers, from the global RNG unless
    the loader has a generator, and a resumed run creates its first iterator at another point of
    that RNG stream.
    """

    def __init__(self, data_source: Sized, seed: int | None = None) -> None:
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        super().__init__(data_source, generator=torch.Generator().manual_seed(self.seed))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


def shuffling(dataset: Sized, shuffle: bool = True) -> dict:
    """``DataLoader`` keyword arguments: an ``EpochShuffleSampler`` and its generator, or plain
    sequential order when ``shuffle`` is false."""
    if not shuffle:
        return {}
    sampler = EpochShuffleSampler(dataset)
    return {"sampler": sampler, "generator": sampler.generator}


def split_fraction(key: str, value: Any) -> float:
    """``value`` of config key ``key``, the fraction of a data set one split holds, as a float
    in (0, 1): 0 would leave the split empty and 1 would leave nothing to train on."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ConfigError(f"{key} must be a fraction strictly between 0 and 1 (the share of the "
                          f"images in that split), got {value!r}.")
    return float(value)
