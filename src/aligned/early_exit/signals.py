"""What the exit rules read, for every sample and layer, kept for the offline simulation: per
sample (a classifier's input, or an LM's token with a next token) and layer, the shared head's
top-1, confidence and entropy (``analysis.head_statistics``) and the cosine between the
sample's features at layers l-1 and l (NaN at layer 1).

Five (N, L) arrays, whatever the number of classes: ImageNet's 1,000 or SmolLM2's 49,152-word
vocabulary (whose logits would be 5.9 MB a token) cost the same here.

- ``signals_of_outputs``: from the layer-wise (or token) pass of ``evaluate.py``, which computes
  them anyway.
- ``collect_exit_signals``: a classifier's light pass over a loader (no similarity).
- ``collect_token_signals``: a causal LM's, teacher-forced over held-out text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, fields

import numpy as np
import torch

from aligned.analysis.cos import cosine_to_previous
from aligned.analysis.head_statistics import HeadStatistics, head_statistics
from aligned.analysis.layerwise_pass import (
    Autocast,
    LayerwiseOutputs,
    consecutive_cosine,
    head_batches,
)
from aligned.analysis.token_pass import TokenOutputs
from aligned.config import ConfigError
from aligned.early_exit.decoding import LogitsAt
from aligned.models.backbones.hf_decoder import HFDecoder
from aligned.next_token import prediction_mask
from aligned.training.system import LayerwiseClassifier, require_classifier


@dataclass
class ExitSignals:
    """The exit rules' inputs, for N samples and every layer."""

    labels: np.ndarray  # (N,) the class, or the next token
    top1: np.ndarray  # (N, L) the head's prediction at each layer
    confidence: np.ndarray  # (N, L) its softmax probability
    entropy: np.ndarray  # (N, L) softmax entropy, nats
    cosine: np.ndarray  # (N, L) cos(h_{l-1}, h_l), float64; NaN at layer 1
    num_classes: int  # C (an LM's vocabulary), which scales the entropy rule's grid (0..log C)

    @property
    def num_layers(self) -> int:
        return self.top1.shape[1]

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, selection: slice | np.ndarray) -> ExitSignals:
        return ExitSignals(*(getattr(self, key)[selection] for key in ARRAYS), self.num_classes)

    @staticmethod
    def cat(parts: list[ExitSignals]) -> ExitSignals:
        return ExitSignals(*(np.concatenate([getattr(p, key) for p in parts]) for key in ARRAYS),
                           parts[0].num_classes)

    @staticmethod
    def of_batch(labels: torch.Tensor, statistics: HeadStatistics, cosine: torch.Tensor,
                 num_classes: int) -> ExitSignals:
        """From torch tensors on any device: (n,) labels, (n, L) statistics and cosines."""
        return ExitSignals(labels.cpu().numpy(), *(s.cpu().numpy() for s in statistics),
                           cosine.cpu().numpy(), num_classes)

    def full_depth_accuracy(self) -> float:
        return float((self.top1[:, -1] == self.labels).mean())

    def layer(self, layer: int, rows: torch.Tensor | None = None) -> HeadStatistics:
        """Layer ``layer`` (1..L)'s statistics as tensors, of ``rows`` (all when None)."""
        picked = slice(None) if rows is None else rows.numpy()
        return HeadStatistics(*(torch.from_numpy(np.ascontiguousarray(
            getattr(self, key)[picked, layer - 1])) for key in HeadStatistics._fields))


ARRAYS = tuple(f.name for f in fields(ExitSignals) if f.name != "num_classes")


def signals_of_outputs(outputs: LayerwiseOutputs | TokenOutputs, num_classes: int
                       ) -> ExitSignals:
    """What the layer-wise (or token) pass of ``evaluate.py`` computed anyway."""
    # The token pass keeps its top-1 as int32 (a vocabulary fits); exits are int64 as torch's.
    return ExitSignals(outputs.labels, outputs.predictions.astype(np.int64), outputs.confidences,
                       outputs.entropies, outputs.layer_cosine, num_classes)


def collect_exit_signals(
    system: LayerwiseClassifier, dataloader: Iterable, progress: bool = True,
    autocast: Autocast = nullcontext,
) -> ExitSignals:
    """A classifier's exit signals over ``dataloader``: one pass (no grad, as every pass's
    batches), no similarity accumulators."""
    require_classifier(system, "Early exit")
    system.eval()
    parts = []
    for features, logits, target in head_batches(system, dataloader, "early-exit pass",
                                                 progress, autocast):
        statistics = HeadStatistics(*(s.T for s in head_statistics(logits)))  # (B, L) each
        parts.append(ExitSignals.of_batch(target, statistics, consecutive_cosine(features),
                                          system.backbone.num_classes))
    if not parts:
        raise ValueError("The evaluation split is empty.")
    return ExitSignals.cat(parts)


@torch.inference_mode()
def collect_token_signals(
    backbone: HFDecoder, batches: Iterable[Mapping[str, torch.Tensor]],
    logits_at: LogitsAt | None = None, max_tokens: int | None = None, chunk: int = 256,
) -> ExitSignals:
    """A causal LM's exit signals, teacher-forced over batches (``input_ids``,
    ``attention_mask``, ``labels`` as ``data=text`` gives), until ``max_tokens`` tokens. The
    head runs on ``chunk`` tokens at a time, so one chunk's (chunk, V) logits is the largest
    thing held. Teacher forcing from a full forward gives every earlier token the full model's
    states: early-exit decoding under ``kv="recompute"`` exactly."""
    logits_at = logits_at or (lambda layer, features: backbone.head(features))
    device = backbone.parts.embed_tokens.weight.device
    parts, count = [], 0
    for batch in batches:
        if max_tokens is not None and count >= max_tokens:
            break
        batch = {key: value.to(device) for key, value in batch.items()}
        valid = prediction_mask(batch["labels"], batch.get("attention_mask"))  # (B, T-1)
        labels = batch["labels"][:, 1:][valid]  # (n,)
        state = backbone.begin(batch)
        layers, cosines, previous = [], [], None
        for layer in range(1, backbone.num_layers + 1):
            state = backbone.run_block(layer, state)
            features = backbone.read(state)[:, :-1][valid]  # (n, D)
            layers.append(HeadStatistics.cat([head_statistics(logits_at(layer, piece))
                                              for piece in features.split(chunk)]))
            cosines.append(cosine_to_previous(previous, features))
            previous = features
        parts.append(ExitSignals.of_batch(labels, HeadStatistics.stack(layers),
                                          torch.stack(cosines, 1),
                                          backbone.num_classes))
        count += len(labels)
    if not parts:
        raise ConfigError("No held-out tokens to collect signals from: the split is empty.")
    signals = ExitSignals.cat(parts)
    return signals if max_tokens is None else signals.rows(slice(0, max_tokens))
