"""Similarity between every layer of model A and every layer of model B on the same inputs.

One pass over both models' loaders of the same split, batch by batch: each batch's features of
A (L_A, B, D_A) and of B (L_B, B, D_B) update minibatch CKA across the two stacks (any widths and
depths) and, where the widths match, COS. Each model reads the inputs its own data config makes
(text models may tokenise differently), so the loaders must give the same samples in the same
order and batches: the labels of every batch are compared to check it. Memory is that of one
batch of each model, never N x N.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from aligned.analysis.cos import CosAccumulator
from aligned.analysis.layerwise_pass import Autocast, feature_batches
from aligned.analysis.measure_pass import ExtraMeasures
from aligned.analysis.similarity import MIN_SAMPLES_CKA, MinibatchCKA
from aligned.config import ConfigError
from aligned.training.system import LayerwiseClassifier


def run_cross_model_pass(
    systems: tuple[LayerwiseClassifier, LayerwiseClassifier],
    loaders: tuple[Iterable, Iterable],
    means: tuple[np.ndarray, np.ndarray],
    cos_centering: str = "samples",
    progress: bool = True,
    autocast: Autocast = nullcontext,
    extra_measures: ExtraMeasures | None = None,
    stream: Callable[..., Iterable] = feature_batches,
) -> dict[str, Any]:
    """``cross_similarity`` of evaluation.json: CKA (L_A, L_B), and COS (L_A, L_B) or None with
    the reason when the widths differ. ``means``: each model's per-layer feature means (L, D)
    over the split, for COS centred over samples. ``stream`` gives each model's (features,
    labels) per batch (causal LMs: ``token_pass.sampled_token_batches``, a token sample)."""
    (a, b), widths = systems, []
    cka = MinibatchCKA(a.num_layers, other_layers=b.num_layers)
    cos = None
    streams = [stream(system, loader, f"cross-model pass ({name})", progress, autocast,
                      with_labels=True)
               for system, loader, name in zip(systems, loaders, "AB", strict=True)]
    batches = 0
    for index, ((features_a, labels_a), (features_b, labels_b)) in enumerate(
            _zip_strict(*streams)):
        if labels_a.shape != labels_b.shape or not torch.equal(labels_a.cpu(), labels_b.cpu()):
            raise ConfigError(
                f"compare_to: batch {index + 1} of the two models' evaluation loaders holds other "
                f"samples ({len(labels_a)} vs {len(labels_b)} samples, or other labels); give "
                "both the same evaluation batches with data.batch_size=<N>."
            )
        if not widths:
            widths = [features_a.shape[-1], features_b.shape[-1]]
            if widths[0] == widths[1]:
                cos = CosAccumulator(cos_centering, *_means_for(cos_centering, means, a.device))
        if features_a.shape[1] >= MIN_SAMPLES_CKA:
            cka.update(features_a, features_b)
            batches += 1
        if cos is not None:
            cos.update(features_a, features_b)
        if extra_measures is not None:
            extra_measures.update(features_a, features_b)
    if batches == 0:
        raise ConfigError(f"Cross-model CKA needs batches of at least {MIN_SAMPLES_CKA} samples; "
                          "use data.batch_size=<N> with N >= 4.")
    return {
        "layers": [a.num_layers, b.num_layers],
        "widths": widths,
        "cka": cka.compute().tolist(),
        "cos": None if cos is None else cos.compute().tolist(),
        **({} if cos is not None else {
            "cos_note": f"COS across models needs equal widths; these are {widths[0]} and "
                        f"{widths[1]} (CKA compares any widths)."}),
        "cos_centering": cos_centering,
        **(_extra(extra_measures.compute()) if extra_measures is not None else {}),
    }


def _extra(computed: dict[str, Any]) -> dict[str, Any]:
    return {**computed["matrices"], **({"measures": computed["about"]} if computed["about"]
                                       else {})}


def _means_for(centering: str, means: tuple[np.ndarray, np.ndarray], device: torch.device
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if centering != "samples":
        return None, None
    return tuple(torch.as_tensor(mean, dtype=torch.float64, device=device) for mean in means)


def _zip_strict(first: Iterable, second: Iterable) -> Iterable[tuple[Any, Any]]:
    """zip that says so when one model's loader has more batches than the other's."""
    sentinel = object()
    iterators = iter(first), iter(second)
    while True:
        items = [next(iterator, sentinel) for iterator in iterators]
        if items[0] is sentinel and items[1] is sentinel:
            return
        if sentinel in items:
            raise ConfigError("compare_to: the two models' evaluation loaders give different "
                              "numbers of batches; give both the same batches with "
                              "data.batch_size=<N>.")
        yield items[0], items[1]
