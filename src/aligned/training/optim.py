"""AdamW with linear warm-up then cosine or linear decay, stepped every optimisation step."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from aligned.config import ConfigError, number

DECAYS = ("cosine", "linear")


def adamw_with_warmup_cosine(
    module: nn.Module,
    total_steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    warmup_fraction: float = 0.1,
    min_lr_ratio: float = 0.0,
    decay: str = "cosine",
) -> dict:
    """Lightning's ``configure_optimizers`` dict.

    ``decay``: ``cosine`` (timm/DeiT recipes) or ``linear`` (HF's BERT fine-tuning default and
    the paper's GPT-2 recipe), from the peak after warm-up down to ``min_lr_ratio`` × lr.
    Biases and norm weights (1-D parameters) get no weight decay, as in timm and HF training.
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
        raise ConfigError(f"optim.lr must be a positive number, got {lr!r}.")
    number("optim.warmup_fraction", warmup_fraction, 0, 1, high_open=True)
    number("optim.weight_decay", weight_decay, 0, math.inf)
    if decay not in DECAYS:
        raise ConfigError(f"optim.decay={decay!r} is not one of {', '.join(DECAYS)}.")
    decayed, not_decayed = [], []
    for param in module.parameters():
        if param.requires_grad:
            (not_decayed if param.ndim <= 1 else decayed).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": weight_decay},
            {"params": not_decayed, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=tuple(betas),
    )
    warmup_steps = int(warmup_fraction * total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        remaining = 1 - progress if decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return min_lr_ratio + (1 - min_lr_ratio) * remaining

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
