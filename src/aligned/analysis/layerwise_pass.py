"""One evaluation pass over a data split, collecting what every layer-wise analysis needs.

Per sample and layer it keeps only small things (top-1 class, its probability); features are
reduced on the fly into per-layer class means (for PCA), minibatch CKA and COS accumulators, so
memory does not grow with N·L·D. COS centred over samples needs every layer's mean before it can
normalise a vector, so that case makes a second, feature-only pass over the data.

For early exit it also keeps every layer's logits (N, L, C) and each sample's cosine between
consecutive layers' features (N, L), what the exit rules read (``ExitSignalCache``);
``collect_exit_signals`` is the light pass that gathers only those (the validation split).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from aligned.analysis import readouts
from aligned.analysis.similarity import MIN_SAMPLES_CKA, CosAccumulator, MinibatchCKA, sample_cosine
from aligned.config import ConfigError
from aligned.training.system import LayerwiseClassifier, require_classifier, unpack


@dataclass
class ExitSignalCache:
    """Everything an exit rule reads, for every sample and layer (offline simulation)."""

    labels: np.ndarray  # (N,)
    logits: np.ndarray  # (N, L, C)
    layer_cosine: np.ndarray  # (N, L) cos(h_{l-1}, h_l) per sample; NaN at layer 1


def consecutive_cosine(features: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine between the features of layers l-1 and l, (L, B, D) -> (B, L) float64;
    layer 1 has no predecessor (NaN)."""
    cosine = sample_cosine(features[:-1], features[1:])  # (L-1, B)
    first = torch.full((1, features.shape[1]), torch.nan, dtype=torch.float64,
                       device=features.device)
    return torch.cat([first, cosine]).T  # (B, L)


def _kept(logits: torch.Tensor) -> torch.Tensor:
    """(L, B, C) logits as (B, L, C) on the CPU, float32 or wider (float64 models stay exact)."""
    return logits.transpose(0, 1).to(torch.promote_types(logits.dtype, torch.float32)).cpu()


@dataclass
class LayerwiseOutputs:
    labels: np.ndarray  # (N,)
    predictions: np.ndarray  # (N, L) top-1 class of the head at each layer
    confidences: np.ndarray  # (N, L) its softmax probability
    logits: np.ndarray | None  # (N, L, C) when kept (for early-exit simulation)
    layer_cosine: np.ndarray  # (N, L) cos(h_{l-1}, h_l) per sample; NaN at layer 1
    class_means: np.ndarray  # (L, C, D) mean feature per class and layer
    cos: np.ndarray  # (L, L)
    cka: np.ndarray  # (L, L)

    def exit_signals(self) -> ExitSignalCache:
        if self.logits is None:
            raise ValueError("Early-exit simulation needs the logits: run with keep_logits=True.")
        return ExitSignalCache(self.labels, self.logits, self.layer_cosine)


def _batches(
    system: LayerwiseClassifier, dataloader: Iterable, desc: str, progress: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(features (L, B, D), target (B,)) for each batch, on the system's device, no grad."""
    with torch.no_grad():
        for batch in tqdm(dataloader, desc=desc, disable=not progress, leave=False):
            inputs, target = unpack(batch)
            inputs = system.transfer_batch_to_device(inputs, system.device, 0)
            yield system.backbone.layer_features(inputs), target.to(system.device)


def run_layerwise_pass(
    system: LayerwiseClassifier,
    dataloader: Iterable,
    cos_centering: str = "samples",
    keep_logits: bool = True,
    progress: bool = True,
) -> LayerwiseOutputs:
    system.eval()
    num_layers, num_classes = system.num_layers, system.backbone.num_classes
    cka = MinibatchCKA(num_layers)
    cos = None if cos_centering == "samples" else CosAccumulator(cos_centering)
    labels, predictions, confidences, logits_kept, cosines = [], [], [], [], []
    feature_sum = class_sum = class_count = None
    for features, target in _batches(system, dataloader, "layer-wise pass", progress):
        logits = system.objective.layer_logits(features, system.backbone.head)  # (L, B, C)
        probabilities = logits.float().softmax(-1)
        confidence, prediction = probabilities.max(-1)  # (L, B)
        labels.append(target.cpu())
        predictions.append(prediction.T.cpu())
        confidences.append(confidence.T.cpu())
        if keep_logits:
            logits_kept.append(_kept(logits))
        cosines.append(consecutive_cosine(features).cpu())
        if feature_sum is None:
            feature_sum = torch.zeros(num_layers, features.shape[-1], dtype=torch.float64)
            class_sum = torch.zeros(
                num_layers, num_classes, features.shape[-1], dtype=torch.float64
            )
            class_count = torch.zeros(num_classes, dtype=torch.float64)
        x = features.double().cpu()  # (L, B, D)
        feature_sum += x.sum(1)
        one_hot = torch.nn.functional.one_hot(target.cpu(), num_classes).double()  # (B, C)
        class_sum += torch.einsum("lbd,bc->lcd", x, one_hot)
        class_count += one_hot.sum(0)
        if features.shape[1] >= MIN_SAMPLES_CKA:  # unbiased HSIC needs 4 samples per batch
            cka.update(features)
        if cos is not None:
            cos.update(features)
    if feature_sum is None:
        raise ValueError("The evaluation split is empty.")
    num_samples = int(class_count.sum())
    if cka.num_batches == 0:
        raise ConfigError(
            f"Minibatch CKA needs batches of at least {MIN_SAMPLES_CKA} samples; this split has "
            f"{num_samples} in batches of fewer. Use a larger split or data.batch_size."
        )
    if cos is None:  # second pass: centring over samples needs the means first
        cos = CosAccumulator("samples", mean=feature_sum / num_samples)
        for features, _ in _batches(system, dataloader, "COS pass", progress):
            cos.update(features)
    class_means = class_sum / class_count.clamp(min=1)[None, :, None]
    return LayerwiseOutputs(
        labels=torch.cat(labels).numpy(),
        predictions=torch.cat(predictions).numpy(),
        confidences=torch.cat(confidences).numpy(),
        logits=torch.cat(logits_kept).numpy() if keep_logits else None,
        layer_cosine=torch.cat(cosines).numpy(),
        class_means=class_means.numpy(),
        cos=cos.compute().numpy(),
        cka=cka.compute().numpy(),
    )


def collect_exit_signals(
    system: LayerwiseClassifier, dataloader: Iterable, progress: bool = True
) -> ExitSignalCache:
    """The exit rules' inputs alone: one pass, no similarity accumulators."""
    require_classifier(system, "Early exit")
    system.eval()
    labels, logits_kept, cosines = [], [], []
    for features, target in _batches(system, dataloader, "early-exit pass", progress):
        logits = system.objective.layer_logits(features, system.backbone.head)  # (L, B, C)
        labels.append(target.cpu())
        logits_kept.append(_kept(logits))
        cosines.append(consecutive_cosine(features).cpu())
    if not labels:
        raise ValueError("The evaluation split is empty.")
    return ExitSignalCache(torch.cat(labels).numpy(), torch.cat(logits_kept).numpy(),
                           torch.cat(cosines).numpy())


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
        "similarity": {"cos": outputs.cos.tolist(), "cka": outputs.cka.tolist()},
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
