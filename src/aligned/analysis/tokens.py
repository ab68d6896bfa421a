"""One vector per sample from token features: the explicit choice of CLS, mean over valid
tokens, or every token as its own sample, before any similarity is measured."""

from __future__ import annotations

from typing import Literal

import torch

from aligned.config import ConfigError

TokenMode = Literal["cls", "mean", "all"]


def reduce_tokens(
    hidden: torch.Tensor, mode: TokenMode, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """One vector per sample from token features (L, N, T, D) or (N, T, D).

    - ``"cls"``: token 0 -> (L, N, D); the mask is not consulted (token 0 is always real).
    - ``"mean"``: mean over valid tokens (``attention_mask`` (N, T), 1 = real token; all tokens
      when None) -> (L, N, D).
    - ``"all"``: every valid token becomes a sample -> (L, N*T, D), or (L, M, D) with M valid
      tokens when masked, in sample-major order.
    The leading L is dropped again for (N, T, D) input.
    """
    if hidden.ndim not in (3, 4):
        raise ConfigError(
            f"reduce_tokens expects (L, N, T, D) or (N, T, D) token features, got "
            f"{tuple(hidden.shape)}."
        )
    single_layer = hidden.ndim == 3
    tokens = hidden[None] if single_layer else hidden  # (L, N, T, D)
    num_samples, num_tokens = tokens.shape[1:3]
    if attention_mask is not None and attention_mask.shape != (num_samples, num_tokens):
        raise ConfigError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected (N, T) = "
            f"({num_samples}, {num_tokens}) to match the token features."
        )
    valid = None if attention_mask is None else attention_mask.to(tokens.device).bool()  # (N, T)

    if mode == "cls":
        reduced = tokens[:, :, 0]  # (L, N, D)
    elif mode == "mean":
        if valid is None:
            reduced = tokens.mean(dim=2)  # (L, N, D)
        else:
            counts = valid.sum(dim=1)  # (N,)
            if (counts == 0).any():
                empty = (torch.nonzero(counts == 0).flatten()).tolist()
                raise ConfigError(
                    f"reduce_tokens('mean'): samples {empty[:10]} have no valid token in "
                    f"attention_mask; mean pooling is undefined for them."
                )
            weights = valid.to(tokens.dtype)[None, :, :, None]  # (1, N, T, 1)
            reduced = (tokens * weights).sum(dim=2) / counts.to(tokens.dtype)[None, :, None]
    elif mode == "all":
        # (L, N*T, D), or (L, M, D) with M valid tokens
        reduced = tokens.flatten(1, 2) if valid is None else tokens[:, valid]
    else:
        raise ConfigError(f"Unknown token reduction '{mode}'; use 'cls', 'mean' or 'all'.")
    return reduced[0] if single_layer else reduced
