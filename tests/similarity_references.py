"""Slow, direct float64 references and synthetic features shared by the similarity tests."""

from __future__ import annotations

import numpy as np
import torch


def layered_features(num_layers: int, num_samples: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(L, N, D) float32 features drifting from layer to layer, with a non-zero mean.

    Each layer adds noise to the previous one and re-mixes it, so similarities fall with layer
    distance and are neither 0 nor 1; the offset makes centring matter.
    """
    generator = torch.Generator().manual_seed(seed)
    layer = torch.randn(num_samples, dim, generator=generator)
    layers = []
    for _ in range(num_layers):
        mixing = torch.eye(dim) + 0.3 * torch.randn(dim, dim, generator=generator) / dim**0.5
        layer = layer @ mixing + 0.5 * torch.randn(num_samples, dim, generator=generator)
        layers.append(layer + 2.0)
    return torch.stack(layers)  # (L, N, D)


def slow_hsic(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> float:
    """HSIC of the linear kernels of raw (uncentred) x, y (N, D), straight from the papers."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    k, ell = x @ x.T, y @ y.T
    if not unbiased:  # Gretton et al. 2005: tr(K H L H) / (n-1)^2
        h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
        return (torch.trace(k @ h @ ell @ h) / (n - 1) ** 2).item()
    k.fill_diagonal_(0)  # Song et al. 2012, eq. 5
    ell.fill_diagonal_(0)
    ones = torch.ones(n, 1, dtype=torch.float64)
    value = (
        torch.trace(k @ ell)
        + (ones.T @ k @ ones).item() * (ones.T @ ell @ ones).item() / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (ones.T @ k @ ell @ ones).item()
    )
    return value / (n * (n - 3))


def slow_linear_cka(features: torch.Tensor, unbiased: bool) -> torch.Tensor:
    num_layers = features.shape[0]
    self_hsic = [slow_hsic(layer, layer, unbiased) for layer in features]
    out = torch.empty(num_layers, num_layers, dtype=torch.float64)
    for a in range(num_layers):
        for b in range(num_layers):
            xy = slow_hsic(features[a], features[b], unbiased)
            out[a, b] = xy / (self_hsic[a] * self_hsic[b]) ** 0.5
    return out


def nguyen_u_centred_gram(x: np.ndarray) -> np.ndarray:
    """``MinibatchCKA._generate_gram_matrix`` of Nguyen et al.'s efficient_CKA.py, in numpy:
    the U-centred Gram matrix (Székely & Rizzo 2014), flattened."""
    gram = x @ x.T
    n = gram.shape[0]
    np.fill_diagonal(gram, 0)
    means = gram.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    gram = gram - means[:, None] - means[None, :]
    np.fill_diagonal(gram, 0)
    return gram.ravel()


def nguyen_minibatch_cka(batches: list[torch.Tensor]) -> torch.Tensor:
    """Their update_state + result: sum the Gram inner products over batches, then normalise."""
    accumulator = 0.0
    for batch in batches:  # (L, B, D)
        grams = np.stack([nguyen_u_centred_gram(layer) for layer in batch.double().numpy()])
        accumulator = accumulator + grams @ grams.T
    norms = np.sqrt(np.diag(accumulator))
    return torch.from_numpy(accumulator / norms[:, None] / norms[None, :])
