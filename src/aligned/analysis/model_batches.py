"""The loop every evaluation pass runs over a model's batches (the layer-wise, token and
cross-model passes, and early exit's signal pass): no grad, a progress bar, each batch moved to
the system's device, and the model's forward (and head) under ``autocast``
(``aligned.placement``). What the loop yields is computed before it leaves ``autocast``, so the
pass's float64 accumulators, which run on it, never do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from aligned.training.system import LayerwiseClassifier

Autocast = Callable[[], AbstractContextManager]
Outputs = TypeVar("Outputs")


def model_batches(
    system: LayerwiseClassifier, dataloader: Iterable, forward: Callable[[object], Outputs],
    desc: str, progress: bool, autocast: Autocast,
) -> Iterator[Outputs]:
    """``forward(batch)`` of each batch of ``dataloader``, the batch on the system's device.

    No grad is held around the forward only, never across a ``yield``: grad mode is global, so
    a generator suspended inside ``no_grad`` would disable it for its caller, and two streams
    read in step (the cross-model pass) would restore each other's saved modes in the wrong
    order and leave it disabled after the pass."""
    for batch in tqdm(dataloader, desc=desc, disable=not progress, leave=False):
        batch = system.transfer_batch_to_device(batch, system.device, 0)
        with torch.no_grad(), autocast():
            outputs = forward(batch)
        yield outputs
