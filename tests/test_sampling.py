"""EpochShuffleSampler: the shuffle order is a function of (seed, epoch) alone."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from aligned.data.sampling import EpochShuffleSampler, shuffling

DATA = TensorDataset(torch.arange(50))


def order(sampler: EpochShuffleSampler) -> list[int]:
    return list(sampler)


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    sampler = EpochShuffleSampler(DATA, seed=3)
    first = order(sampler)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert order(sampler) == first  # iterating again does not advance anything
    sampler.set_epoch(1)
    second = order(sampler)
    assert second != first and sorted(second) == list(range(50))
    fresh = EpochShuffleSampler(DATA, seed=3)  # e.g. a resumed process
    fresh.set_epoch(1)
    assert order(fresh) == second
    assert order(EpochShuffleSampler(DATA, seed=4)) != first


def test_default_seed_is_lightnings_global_seed(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert order(EpochShuffleSampler(DATA)) == order(EpochShuffleSampler(DATA, seed=7))


def test_loader_iterators_leave_the_global_rng_alone():
    """A resumed run creates its first iterator at another point of the global RNG stream;
    a draw from it would shift every later augmentation and dropout mask."""
    loader = DataLoader(DATA, batch_size=8, **shuffling(DATA))
    sampler = loader.sampler
    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches = [batch for (batch,) in loader]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.cat(batches).tolist() == order(sampler)


def test_lightning_replaces_it_with_a_shuffling_distributed_sampler_under_ddp():
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled

    loader = DataLoader(DATA, batch_size=8, **shuffling(DATA))
    assert _is_dataloader_shuffled(loader)
    replaced = _get_distributed_sampler(
        loader, shuffle=True, overfit_batches=0, num_replicas=2, rank=1
    )
    assert type(replaced) is DistributedSampler and replaced.shuffle
    assert len(list(replaced)) == 25  # this rank's half
