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

from aligned.analysis.layerwise_pass import feature_batches
from aligned.analysis.measure_pass import ExtraMeasures
from aligned.analysis.model_batches import Autocast
from aligned.analysis.similarity_pass import SimilarityAccumulators
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
    a, b = systems
    similarity = SimilarityAccumulators(
        a.num_layers, cos_centering, extra_measures,
        "predicted tokens" if a.next_token else "samples", b.num_layers, means)
    streams = [stream(system, loader, f"cross-model pass ({name})", progress, autocast,
                      with_labels=True)
               for system, loader, name in zip(systems, loaders, "AB", strict=True)]
    for index, ((features_a, labels_a), (features_b, labels_b)) in enumerate(
            _zip_strict(*streams)):
        if labels_a.shape != labels_b.shape or not torch.equal(labels_a.cpu(), labels_b.cpu()):
            raise ConfigError(
                f"compare_to: batch {index + 1} of the two models' evaluation loaders holds other "
                f"samples ({len(labels_a)} vs {len(labels_b)} samples, or other labels); give "
                "both the same evaluation batches with data.batch_size=<N>."
            )
        similarity.update(features_a, features_b)
    measured, widths = similarity.compute(), similarity.widths
    return {
        "layers": [a.num_layers, b.num_layers],
        "widths": widths,
        "cka": measured.cka.tolist(),
        "cos": None if measured.cos is None else measured.cos.tolist(),
        **({} if measured.cos is not None else {
            "cos_note": f"COS across models needs equal widths; these are {widths[0]} and "
                        f"{widths[1]} (CKA compares any widths)."}),
        "cos_centering": cos_centering,
        **(_extra(measured.extra) if measured.extra is not None else {}),
    }


def _extra(computed: dict[str, Any]) -> dict[str, Any]:
    return {**computed["matrices"], **({"measures": computed["about"]} if computed["about"]
                                       else {})}


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
