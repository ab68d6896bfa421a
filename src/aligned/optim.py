"""AdamW with linear warm-up then cosine decay, stepped every optimisation step."""

from __future__ import annotations

import math

import torch
from torch import nn


def adamw_with_warmup_cosine(
    module: nn.Module,
    total_steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    warmup_fraction: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> dict:
    """Lightning's ``configure_optimizers`` dict.

    Biases and norm weights (1-D parameters) get no weight decay, as in timm and HF training.
    """
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=tuple(betas),
    )
    warmup_steps = int(warmup_fraction * total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return min_lr_ratio + (1 - min_lr_ratio) * cosine

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
