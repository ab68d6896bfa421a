"""The evaluation pass of a causal LM: the logit lens at every layer, token by token
(docs/method.md, "Causal language models").

Every position that predicts a real next token is one sample (``next_token_pairs``: padding,
and each sequence's last token, which has no next token, are left out). Per token and layer it
keeps what the shared head says (top-1, confidence, entropy) and the cosine between the token's
features at consecutive layers (what the exit rules read); per layer the summed negative
log-likelihood of the true next token (perplexity). The logits of all layers at once would be
L x tokens x V (SmolLM2: 30 x 4,096 x 49,152 floats for one batch of 16 x 256, 24 GB), so the
head runs one layer at a time and, within a layer, over chunks of tokens (``LOGIT_ELEMENTS``):
memory is that of one chunk's logits.

Similarity, on the same tokens:

- COS over every token, with ``cos_centering`` as for classifiers; centring over samples needs
  each layer's mean over all tokens first, so that case makes a second, feature-only pass
  (the accumulators of ``similarity_pass``, as for classifiers).
- Minibatch CKA on a seeded sample of at most ``max_tokens`` tokens per batch, one CKA minibatch
  per data batch (unbiased HSIC is O(B²) per minibatch: 4,096 tokens would be a 4,096² Gram matrix
  per layer, and neighbouring tokens of one document are far from independent samples).
  ``similarity.measures``' other measures read the same sample.

``sequence_subset`` caps the sequences analysed (``max_sequences``) with a seeded random subset:
the text splits keep the source's order, and BBC News is ordered by topic, so the first N
documents would all be business news.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from aligned.analysis.cka import MIN_SAMPLES_CKA
from aligned.analysis.head_statistics import HeadStatistics, head_statistics
from aligned.analysis.layerwise_pass import consecutive_cosine
from aligned.analysis.measure_pass import ExtraMeasures
from aligned.analysis.model_batches import Autocast, model_batches
from aligned.analysis.similarity_pass import SimilarityAccumulators
from aligned.config import ConfigError, positive_int
from aligned.training.system import LayerwiseClassifier, unpack

# Logits computed at once: 2**24 floats (64 MB in float32), SmolLM2 341 tokens x 49,152.
LOGIT_ELEMENTS = 2**24
SAMPLE_SEED = 0  # the token sample of CKA and the subset of max_sequences


@dataclass
class TokenOutputs:
    """What the token pass measured; the fields ``layerwise_pass.summarize`` reads have the
    classifier pass's names (a token is a sample)."""

    labels: np.ndarray  # (N,) the next tokens
    predictions: np.ndarray  # (N, L) top-1 token of the head at each layer
    confidences: np.ndarray  # (N, L) its probability
    entropies: np.ndarray  # (N, L) the softmax entropy, nats
    layer_cosine: np.ndarray  # (N, L) cos(h_{l-1}, h_l) per token; NaN at layer 1
    nll: np.ndarray  # (L,) summed negative log-likelihood of the next token, float64
    layer_means: np.ndarray  # (L, D) mean feature per layer over the N tokens
    cos: np.ndarray  # (L, L) over the N tokens
    cka: np.ndarray  # (L, L) minibatch CKA over the token sample
    num_sequences: int
    cka_tokens: int  # tokens in CKA's sample, over all batches
    extra: dict | None = None  # ExtraMeasures.compute() on the token sample

    @property
    def perplexity(self) -> np.ndarray:
        """exp(mean NLL) per layer, (L,)."""
        return np.exp(self.nll / len(self.labels))


def sequence_subset(loader: DataLoader, max_sequences: int | None) -> DataLoader:
    """``loader`` over a seeded random subset of ``max_sequences`` of its sequences (in the
    split's order), or ``loader`` itself when it holds no more than that or the cap is None."""
    if max_sequences is None:
        return loader
    positive_int("max_sequences", max_sequences)
    dataset = loader.dataset
    if len(dataset) <= max_sequences:
        return loader
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    chosen = torch.randperm(len(dataset), generator=generator)[:max_sequences].sort().values
    return DataLoader(Subset(dataset, chosen.tolist()), batch_size=loader.batch_size,
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers)


def token_batches(system: LayerwiseClassifier, dataloader: Iterable, desc: str, progress: bool,
                  autocast: Autocast) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(features (L, N, D), next tokens (N,), sequences in the batch) of each batch's
    predicting positions (``model_batches``)."""
    def forward(batch: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        return *system.token_features(batch), len(unpack(batch)[1])

    return model_batches(system, dataloader, forward, desc, progress, autocast)


class TokenSampler:
    """A seeded sample of at most ``max_tokens`` of each batch's tokens (sorted positions). Two
    samplers built alike pick the same positions from batches of the same size, so two models
    on the same tokens are sampled alike (the cross-model pass)."""

    def __init__(self, max_tokens: int) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) \
                or max_tokens < MIN_SAMPLES_CKA:
            raise ConfigError(f"similarity.max_tokens must be an integer >= {MIN_SAMPLES_CKA} "
                              f"(minibatch CKA's unbiased HSIC needs that many), got "
                              f"{max_tokens!r}.")
        self.max_tokens = max_tokens
        self.generator = torch.Generator().manual_seed(SAMPLE_SEED)

    def positions(self, num_tokens: int) -> torch.Tensor:
        if num_tokens <= self.max_tokens:
            return torch.arange(num_tokens)
        return torch.randperm(num_tokens, generator=self.generator)[:self.max_tokens].sort().values


def sampled_token_batches(system: LayerwiseClassifier, dataloader: Iterable, desc: str,
                          progress: bool, autocast: Autocast, with_labels: bool = False,
                          max_tokens: int = 256) -> Iterator[Any]:
    """(L, n, D) features of each batch's token sample (``TokenSampler``); with
    ``with_labels``, (features, next tokens) pairs. The cross-model pass reads these."""
    sampler = TokenSampler(max_tokens)
    for features, target, _ in token_batches(system, dataloader, desc, progress, autocast):
        rows = sampler.positions(len(target)).to(target.device)
        sample = features[:, rows]
        yield (sample, target[rows]) if with_labels else sample


def layer_readout(system: LayerwiseClassifier, layer: int, features: torch.Tensor,
                  target: torch.Tensor, autocast: Autocast = nullcontext
                  ) -> tuple[HeadStatistics, torch.Tensor]:
    """The head of ``layer`` on its token features (N, D): its statistics (N,) each, and the
    summed NLL of ``target`` (float64 scalar), over chunks of tokens so that one chunk's logits
    (``LOGIT_ELEMENTS``) are alive at a time."""
    chunk = max(1, LOGIT_ELEMENTS // system.backbone.num_classes)
    head = system.backbone.head
    statistics = []
    nll = torch.zeros((), dtype=torch.float64, device=features.device)
    for start in range(0, len(target), chunk):
        with autocast():
            logits = system.objective.logits_at(layer, features[start:start + chunk], head)
        statistics.append(head_statistics(logits))
        log_p = logits.float().log_softmax(-1)  # (n, V), in float32 as the Perplexity metric
        picked = log_p.gather(1, target[start:start + chunk, None])  # (n, 1)
        nll -= picked.sum(dtype=torch.float64)
    return HeadStatistics.cat(statistics), nll


@torch.no_grad()  # the per-layer head readouts run here, outside model_batches
def run_token_pass(
    system: LayerwiseClassifier,
    dataloader: Iterable,
    cos_centering: str = "samples",
    max_tokens: int = 256,
    progress: bool = True,
    autocast: Autocast = nullcontext,
    extra_measures: ExtraMeasures | None = None,
) -> TokenOutputs:
    """The logit lens, saturation inputs, COS and CKA of a causal LM over ``dataloader``."""
    system.eval()
    num_layers, device = system.num_layers, system.device
    sampler = TokenSampler(max_tokens)
    similarity = SimilarityAccumulators(num_layers, cos_centering, extra_measures,
                                        unit="predicted tokens")
    labels, statistics, cosines = [], [], []
    nll = torch.zeros(num_layers, dtype=torch.float64, device=device)
    num_sequences = 0
    for features, target, sequences in token_batches(system, dataloader, "token pass", progress,
                                                     autocast):  # (L, N, D), (N,)
        num_sequences += sequences
        if not len(target):
            continue  # a batch of 1-token sequences predicts nothing
        per_layer = [layer_readout(system, layer, features[layer - 1], target, autocast)
                     for layer in range(1, num_layers + 1)]
        labels.append(target.cpu())
        statistics.append(HeadStatistics.stack([s for s, _ in per_layer]).cpu())  # (N, L) each
        cosines.append(consecutive_cosine(features).cpu())
        nll += torch.stack([n for _, n in per_layer])
        similarity.update(features, sample=sampler.positions(len(target)).to(device))
    if not labels:
        raise ConfigError("The evaluation split holds no token with a next token to predict; "
                          "evaluate a split of sequences of 2 or more tokens.")
    measured = similarity.compute(lambda: (features for features, _, _ in token_batches(
        system, dataloader, "COS pass", progress, autocast)))
    statistics = HeadStatistics.cat(statistics)
    return TokenOutputs(
        labels=torch.cat(labels).numpy(),
        predictions=statistics.top1.int().numpy(),
        confidences=statistics.confidence.numpy(),
        entropies=statistics.entropy.numpy(),
        layer_cosine=torch.cat(cosines).numpy(),
        nll=nll.cpu().numpy(),
        layer_means=similarity.layer_means.cpu().numpy(),
        cos=measured.cos,
        cka=measured.cka,
        num_sequences=num_sequences,
        cka_tokens=similarity.cka_samples,
        extra=measured.extra,
    )


def token_summary(system: LayerwiseClassifier, outputs: TokenOutputs, max_tokens: int,
                  max_sequences: int | None) -> dict[str, Any]:
    """What ``evaluation.json`` adds for a causal LM to the classifiers' numbers."""
    return {
        "unit": "tokens",  # num_samples counts predicted tokens
        # true: final norm + LM head at every layer (the logit lens); false: the authors' GPT-2
        # code, the LM head alone on hidden layers
        "final_norm": bool(getattr(system.backbone, "final_norm", True)),
        "num_sequences": outputs.num_sequences,
        "max_sequences": max_sequences,
        "layer_perplexity": outputs.perplexity.tolist(),
        "similarity_tokens": {
            "cos": int(len(outputs.labels)),
            "cka": outputs.cka_tokens,
            "max_tokens_per_batch": max_tokens,
            "seed": SAMPLE_SEED,
        },
    }
