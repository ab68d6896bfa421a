"""One evaluation pass over a data split, collecting what every layer-wise analysis needs.

Per sample and layer it keeps only small things (top-1 class, its probability); features are
reduced on the fly into per-layer class means (for PCA), minibatch CKA and COS accumulators, so
memory does not grow with N·L·D. COS centred over samples needs every layer's mean before it can
normalise a vector, so that case makes a second, feature-only pass over the data.

On a GPU everything stays on the device until the end of the pass (one transfer, not one per
batch), except the kept logits, which would fill it (ImageNet val: 50,000 x 12 x 1,000); the
accumulators are float64 there too. ``autocast`` (``aligned.placement``) wraps the model's
forward and head only, never the accumulators.

For early exit it also keeps every layer's logits (N, L, C) and each sample's cosine between
consecutive layers' features (N, L), what the exit rules read (``ExitSignalCache``);
``collect_exit_signals`` is the light pass that gathers only those (the validation split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from aligned.analysis import readouts
from aligned.analysis.measure_pass import ExtraMeasures
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
    layer_means: np.ndarray  # (L, D) mean feature per layer (COS centred over samples)
    cos: np.ndarray  # (L, L)
    cka: np.ndarray  # (L, L)
    extra: dict | None = None  # ExtraMeasures.compute(): other measures' matrices, and about

    def exit_signals(self) -> ExitSignalCache:
        if self.logits is None:
            raise ValueError("Early-exit simulation needs the logits: run with keep_logits=True.")
        return ExitSignalCache(self.labels, self.logits, self.layer_cosine)


Autocast = Callable[[], AbstractContextManager]


def _batches(
    system: LayerwiseClassifier, dataloader: Iterable, desc: str, progress: bool,
    autocast: Autocast,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(features (L, B, D), logits (L, B, C), target (B,)) for each batch, on the system's
    device, no grad; the forward and head under ``autocast``, nothing after them."""
    with torch.no_grad():
        for batch in tqdm(dataloader, desc=desc, disable=not progress, leave=False):
            inputs, target = unpack(batch)
            inputs = system.transfer_batch_to_device(inputs, system.device, 0)
            with autocast():
                features = system.backbone.layer_features(inputs)
                logits = system.objective.layer_logits(features, system.backbone.head)
            yield features, logits, target.to(system.device)


def feature_batches(system: LayerwiseClassifier, dataloader: Iterable, desc: str,
                    progress: bool, autocast: Autocast, with_labels: bool = False
                    ) -> Iterator[Any]:
    """(L, B, D) features of each batch, no head (the second COS pass, the cross-model pass);
    with ``with_labels``, (features, labels) pairs."""
    with torch.no_grad():
        for batch in tqdm(dataloader, desc=desc, disable=not progress, leave=False):
            inputs, target = unpack(batch)
            inputs = system.transfer_batch_to_device(inputs, system.device, 0)
            with autocast():  # left before the yield: the consumer's sums run outside it
                features = system.backbone.layer_features(inputs)
            yield (features, target) if with_labels else features


def run_layerwise_pass(
    system: LayerwiseClassifier,
    dataloader: Iterable,
    cos_centering: str = "samples",
    keep_logits: bool = True,
    progress: bool = True,
    autocast: Autocast = nullcontext,
    extra_measures: ExtraMeasures | None = None,
) -> LayerwiseOutputs:
    """``extra_measures`` (similarity.measures beyond COS and CKA) are fed the same batches."""
    system.eval()
    num_layers, num_classes, device = system.num_layers, system.backbone.num_classes, system.device
    cka = MinibatchCKA(num_layers)
    cos = None if cos_centering == "samples" else CosAccumulator(cos_centering)
    labels, predictions, confidences, logits_kept, cosines = [], [], [], [], []
    feature_sum = class_sum = class_count = None
    batches = _batches(system, dataloader, "layer-wise pass", progress, autocast)
    for features, logits, target in batches:  # (L, B, D), (L, B, C), (B,)
        probabilities = logits.float().softmax(-1)
        confidence, prediction = probabilities.max(-1)  # (L, B)
        labels.append(target)
        predictions.append(prediction.T)
        confidences.append(confidence.T)
        if keep_logits:
            logits_kept.append(_kept(logits))
        cosines.append(consecutive_cosine(features))
        if feature_sum is None:
            width = features.shape[-1]
            feature_sum = torch.zeros(num_layers, width, dtype=torch.float64, device=device)
            class_sum = torch.zeros(num_layers, num_classes, width, dtype=torch.float64,
                                    device=device)
            class_count = torch.zeros(num_classes, dtype=torch.float64, device=device)
        x = features.double()  # (L, B, D)
        feature_sum += x.sum(1)
        one_hot = torch.nn.functional.one_hot(target, num_classes).double()  # (B, C)
        class_sum += torch.einsum("lbd,bc->lcd", x, one_hot)
        class_count += one_hot.sum(0)
        if features.shape[1] >= MIN_SAMPLES_CKA:  # unbiased HSIC needs 4 samples per batch
            cka.update(features)
        if cos is not None:
            cos.update(features)
        if extra_measures is not None:
            extra_measures.update(features)
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
        for features in feature_batches(system, dataloader, "COS pass", progress, autocast):
            cos.update(features)
    class_means = class_sum / class_count.clamp(min=1)[None, :, None]
    return LayerwiseOutputs(
        labels=torch.cat(labels).cpu().numpy(),
        predictions=torch.cat(predictions).cpu().numpy(),
        confidences=torch.cat(confidences).cpu().numpy(),
        logits=torch.cat(logits_kept).numpy() if keep_logits else None,
        layer_cosine=torch.cat(cosines).cpu().numpy(),
        class_means=class_means.cpu().numpy(),
        layer_means=(feature_sum / num_samples).cpu().numpy(),
        cos=cos.compute().numpy(),
        cka=cka.compute().numpy(),
        extra=extra_measures.compute() if extra_measures is not None else None,
    )


def collect_exit_signals(
    system: LayerwiseClassifier, dataloader: Iterable, progress: bool = True,
    autocast: Autocast = nullcontext,
) -> ExitSignalCache:
    """The exit rules' inputs alone: one pass, no similarity accumulators."""
    require_classifier(system, "Early exit")
    system.eval()
    labels, logits_kept, cosines = [], [], []
    for features, logits, target in _batches(system, dataloader, "early-exit pass", progress,
                                             autocast):
        labels.append(target)
        logits_kept.append(_kept(logits))
        cosines.append(consecutive_cosine(features))
    if not labels:
        raise ValueError("The evaluation split is empty.")
    return ExitSignalCache(torch.cat(labels).cpu().numpy(), torch.cat(logits_kept).numpy(),
                           torch.cat(cosines).cpu().numpy())


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
