"""One evaluation pass over a data split, collecting what every layer-wise analysis needs.

Per sample and layer it keeps only small things (the head's top-1, confidence and entropy;
the cosine between consecutive layers' features, which the exit rules also read); features are
reduced on the fly into per-layer class means (for PCA) and the similarity accumulators
(``similarity_pass``: COS, minibatch CKA, the other measures), so memory does not grow with
N·L·D. COS centred over samples needs every layer's mean before it can normalise a vector, so
that case makes a second, feature-only pass over the data (``feature_batches``).

On a GPU everything stays on the device until the end of the pass (one transfer, not one per
batch); the accumulators are float64 there too. ``autocast`` (``aligned.placement``) wraps the
model's forward and head only, never the accumulators (``model_batches``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aligned.analysis import readouts
from aligned.analysis.cos import cosine_to_previous
from aligned.analysis.head_statistics import head_statistics
from aligned.analysis.measure_pass import ExtraMeasures
from aligned.analysis.model_batches import Autocast, model_batches
from aligned.analysis.similarity_pass import SimilarityAccumulators
from aligned.training.system import LayerwiseClassifier, unpack


def consecutive_cosine(features: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine between the features of layers l-1 and l, (L, B, D) -> (B, L) float64;
    layer 1 has no predecessor (NaN)."""
    return torch.stack([cosine_to_previous(features[layer - 1] if layer else None, current)
                        for layer, current in enumerate(features)], 1)


@dataclass
class LayerwiseOutputs:
    labels: np.ndarray  # (N,)
    predictions: np.ndarray  # (N, L) top-1 class of the head at each layer
    confidences: np.ndarray  # (N, L) its softmax probability
    entropies: np.ndarray  # (N, L) the softmax entropy, nats
    layer_cosine: np.ndarray  # (N, L) cos(h_{l-1}, h_l) per sample; NaN at layer 1
    class_means: np.ndarray  # (L, C, D) mean feature per class and layer
    layer_means: np.ndarray  # (L, D) mean feature per layer (COS centred over samples)
    cos: np.ndarray  # (L, L)
    cka: np.ndarray  # (L, L)
    extra: dict | None = None  # ExtraMeasures.compute(): other measures' matrices, and about


def head_batches(
    system: LayerwiseClassifier, dataloader: Iterable, desc: str, progress: bool,
    autocast: Autocast,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(features (L, B, D), logits (L, B, C), target (B,)) of each batch (``model_batches``)."""
    def forward(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, target = unpack(batch)
        features = system.backbone.layer_features(inputs)
        return features, system.objective.layer_logits(features, system.backbone.head), target

    return model_batches(system, dataloader, forward, desc, progress, autocast)


def feature_batches(system: LayerwiseClassifier, dataloader: Iterable, desc: str,
                    progress: bool, autocast: Autocast, with_labels: bool = False
                    ) -> Iterator[Any]:
    """(L, B, D) features of each batch, no head (the second COS pass, the cross-model pass);
    with ``with_labels``, (features, labels) pairs."""
    def forward(batch: Any) -> Any:
        inputs, target = unpack(batch)
        features = system.backbone.layer_features(inputs)
        return (features, target) if with_labels else features

    return model_batches(system, dataloader, forward, desc, progress, autocast)


def run_layerwise_pass(
    system: LayerwiseClassifier,
    dataloader: Iterable,
    cos_centering: str = "samples",
    progress: bool = True,
    autocast: Autocast = nullcontext,
    extra_measures: ExtraMeasures | None = None,
) -> LayerwiseOutputs:
    """``extra_measures`` (similarity.measures beyond COS and CKA) are fed the same batches."""
    system.eval()
    num_layers, num_classes, device = system.num_layers, system.backbone.num_classes, system.device
    similarity = SimilarityAccumulators(num_layers, cos_centering, extra_measures)
    labels, predictions, confidences, entropies, cosines = [], [], [], [], []
    class_sum = class_count = None
    batches = head_batches(system, dataloader, "layer-wise pass", progress, autocast)
    for features, logits, target in batches:  # (L, B, D), (L, B, C), (B,)
        statistics = head_statistics(logits)  # (L, B) each
        labels.append(target)
        predictions.append(statistics.top1.T)
        confidences.append(statistics.confidence.T)
        entropies.append(statistics.entropy.T)
        cosines.append(consecutive_cosine(features))
        if class_sum is None:
            class_sum = torch.zeros(num_layers, num_classes, features.shape[-1],
                                    dtype=torch.float64, device=device)
            class_count = torch.zeros(num_classes, dtype=torch.float64, device=device)
        one_hot = torch.nn.functional.one_hot(target, num_classes).double()  # (B, C)
        class_sum += torch.einsum("lbd,bc->lcd", features.double(), one_hot)
        class_count += one_hot.sum(0)
        similarity.update(features)
    if not labels:
        raise ValueError("The evaluation split is empty.")
    measured = similarity.compute(
        lambda: feature_batches(system, dataloader, "COS pass", progress, autocast))
    class_means = class_sum / class_count.clamp(min=1)[None, :, None]
    return LayerwiseOutputs(
        labels=torch.cat(labels).cpu().numpy(),
        predictions=torch.cat(predictions).cpu().numpy(),
        confidences=torch.cat(confidences).cpu().numpy(),
        entropies=torch.cat(entropies).cpu().numpy(),
        layer_cosine=torch.cat(cosines).cpu().numpy(),
        class_means=class_means.cpu().numpy(),
        layer_means=similarity.layer_means.cpu().numpy(),
        cos=measured.cos,
        cka=measured.cka,
        extra=measured.extra,
    )


def summarize(
    outputs: LayerwiseOutputs, epsilon: float, monotone_tolerance: float
) -> dict[str, Any]:
    """The numbers of ``evaluation.json`` for one model."""
    accuracy = readouts.layer_accuracy(outputs.predictions, outputs.labels)
    cos_to_last = outputs.cos[:, -1]
    mean_confidence = outputs.confidences.mean(0)
    return {
        "num_samples": int(len(outputs.labels)),
        "num_layers": int(outputs.predictions.shape[1]),
        "layer_accuracy": accuracy.tolist(),
        "similarity": {"cos": outputs.cos.tolist(), "cka": outputs.cka.tolist(),
                       **(outputs.extra["matrices"] if outputs.extra else {})},
        **({"similarity_measures": outputs.extra["about"]} if outputs.extra else {}),
        "cos_to_last": cos_to_last.tolist(),
        "mean_confidence": mean_confidence.tolist(),
        "cos_confidence_correlation": readouts.correlation(cos_to_last, mean_confidence),
        "cos_cka_correlation": readouts.correlation(
            readouts.offdiagonal(outputs.cos), readouts.offdiagonal(outputs.cka)
        ),
        "saturation": readouts.saturation_summary(outputs.predictions),
        "minimal_depth": {
            "epsilon": epsilon, "layer": readouts.minimal_depth(accuracy, epsilon)
        },
        "monotone": {
            "tolerance": monotone_tolerance,
            "value": readouts.is_monotone(accuracy, monotone_tolerance),
        },
    }
