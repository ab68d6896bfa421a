"""Where inference runs: the device and the numeric precision of evaluate.py and early exit.

Lightning's Fabric resolves both, as the Trainer does for training: ``device=auto`` picks a GPU
(CUDA, or MPS on a Mac) when there is one, else the CPU, and a device the machine lacks is one
clear error; ``precision=bf16-mixed`` runs the model under Fabric's autocast. Only the model's
forward runs under it: the similarity accumulators and the exit rules' cosines stay in float64
and the softmax in float32 (their own casts), whatever the precision.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from aligned.config import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:<index>", "gpu", "mps")
# Precisions that only change the forward's context (Fabric's autocast); "-true" half precisions
# would convert the weights, and a layer-wise analysis in pure bf16 would measure round-off.
PRECISIONS = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed",
              "16-mixed": "16-mixed"}


@dataclass(frozen=True)
class Placement:
    """A resolved device and precision; ``autocast()`` is the context the forward runs in."""

    device: torch.device = torch.device("cpu")
    precision: str = "32-true"
    autocast: Callable[[], AbstractContextManager] = field(default=nullcontext, repr=False)

    def synchronize(self) -> None:
        """Wait for the device's queued work (timing a GPU); nothing on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def describe(self) -> dict[str, str]:
        """What evaluation.json records of it."""
        name = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                else self.device.type)
        return {"device": str(self.device), "device_name": name, "precision": self.precision}


def resolve_placement(device: str | None = "auto", precision: str | int | None = "32"
                      ) -> Placement:
    """``device`` (auto, cpu, cuda, cuda:1, gpu, mps) and ``precision`` (32, bf16-mixed,
    16-mixed) as a Placement, through Fabric."""
    from lightning.fabric import Fabric

    device = "auto" if device is None else str(device)
    precision = "32" if precision is None else str(precision)
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}' (inference runs "
            "the model under autocast; its accumulators stay in float64)."
        )
    accelerator, devices = _accelerator_of(device)
    try:
        fabric = Fabric(accelerator=accelerator, devices=devices,
                        precision=PRECISIONS[precision])
    except (RuntimeError, ValueError) as error:  # a device this machine lacks
        available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
            ["mps"] if torch.backends.mps.is_available() else [])
        raise ConfigError(
            f"device={device}: {str(error).splitlines()[0]} This machine has: "
            f"{', '.join(available)}; use device=auto (the best of them) or one of those."
        ) from None
    # What runs, which Fabric may change (16-mixed on a CPU runs in bf16-mixed, with a warning).
    return Placement(fabric.device, fabric.strategy.precision.precision, fabric.autocast)


def _accelerator_of(device: str) -> tuple[str, int | list[int]]:
    """Fabric's (accelerator, devices) for a torch-style device string."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda", "gpu", "mps") or (index and not index.isdigit()):
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got '{device}'.")
    return kind, [int(index)] if index else 1

