"""Offline sweeps of the exit rules for causal LMs on held-out text, as ``offline`` does for
classifiers: per-token signals of every layer on val pick each rule's operating point (the
smallest mean exit layer within ``max_drop`` of full-depth next-token accuracy), reported on test.

The classifiers keep every layer's logits (N, L, C); with a vocabulary of 49,152 (SmolLM2) that
is 5.9 MB per token, so here each token and layer keeps only what the rules read: the head's
top-1, its softmax probability (confidence) and the softmax entropy, and the cosine between the
token's hidden states at layers l-1 and l (``TokenSignals``). ``simulate_tokens`` applies a rule
to them with array operations; ``tests/test_decoding_offline.py`` checks that it decides as
``rules.exit_layer_by_layer`` does on the full logits.

Teacher forcing from a full forward means every earlier token's hidden states are the full
model's: this is early-exit decoding under ``kv="recompute"`` exactly (checked against
``EarlyExitDecoder.teacher_forced`` in the tests). Under ``kv="copy"`` later tokens see copied
states, which these figures do not include; ``benchmarks/decoding.py`` measures that policy's
accuracy with the decoder itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aligned.analysis.similarity import sample_cosine
from aligned.config import ConfigError
from aligned.early_exit.decoding import LogitsAt
from aligned.early_exit.offline import FLOPS_NOTE, choose_threshold, operating_point
from aligned.early_exit.rules import (
    RULES,
    BudgetRule,
    ConfidenceRule,
    EntropyRule,
    ExitResult,
    ExitRule,
    PatienceRule,
    StateRule,
    first_read,
)
from aligned.models.backbones.hf_decoder import HFDecoder
from aligned.models.next_token import prediction_mask


@dataclass
class TokenSignals:
    """What the exit rules read, for N tokens that have a next token and every layer."""

    labels: np.ndarray  # (N,) the next token
    top1: np.ndarray  # (N, L) the head's prediction at each layer
    confidence: np.ndarray  # (N, L) its softmax probability
    entropy: np.ndarray  # (N, L) softmax entropy, nats
    cosine: np.ndarray  # (N, L) cos(h_{l-1}, h_l), float64; NaN at layer 1
    vocabulary: int  # V, which scales the entropy rule's grid (0..log V)

    @property
    def num_layers(self) -> int:
        return self.top1.shape[1]

    def tokens(self, rows: slice | np.ndarray) -> TokenSignals:
        return TokenSignals(*(getattr(self, key)[rows] for key in ARRAYS), self.vocabulary)

    @staticmethod
    def cat(parts: list[TokenSignals]) -> TokenSignals:
        return TokenSignals(*(np.concatenate([getattr(p, key) for p in parts]) for key in ARRAYS),
                            parts[0].vocabulary)


ARRAYS = ("labels", "top1", "confidence", "entropy", "cosine")


def token_statistics(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(n, V) logits -> top-1, its probability, entropy (n,) each, computed as the rules do
    (softmax in at least float32; entropy = sum of -p log p, 0 at p = 0)."""
    p = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)
    confidence, top1 = p.max(-1)
    return top1, confidence, torch.special.entr(p).sum(-1)


@torch.inference_mode()
def collect_token_signals(
    backbone: HFDecoder, batches: Iterable[Mapping[str, torch.Tensor]],
    logits_at: LogitsAt | None = None, max_tokens: int | None = None, chunk: int = 256,
) -> TokenSignals:
    """Teacher-forced signals of every layer over causal-LM batches (``input_ids``,
    ``attention_mask``, ``labels`` as ``data=text`` gives), until ``max_tokens`` tokens.
    The head runs on ``chunk`` tokens at a time, so one chunk's (chunk, V) logits is the
    largest thing held."""
    logits_at = logits_at or (lambda layer, features: backbone.head(features))
    device = backbone.parts.embed_tokens.weight.device
    vocabulary = backbone.num_classes
    parts, count = [], 0
    for batch in batches:
        if max_tokens is not None and count >= max_tokens:
            break
        batch = {key: value.to(device) for key, value in batch.items()}
        valid = prediction_mask(batch["labels"], batch.get("attention_mask"))  # (B, T-1)
        labels = batch["labels"][:, 1:][valid]  # (n,)
        state = backbone.begin(batch)
        columns: dict[str, list[torch.Tensor]] = {"top1": [], "confidence": [], "entropy": []}
        cosines, previous = [], None
        for layer in range(1, backbone.num_layers + 1):
            state = backbone.run_block(layer, state)
            features = backbone.read(state)[:, :-1][valid]  # (n, D)
            statistics = [token_statistics(logits_at(layer, piece))
                          for piece in features.split(chunk)]
            for key, values in zip(columns, zip(*statistics, strict=True), strict=True):
                columns[key].append(torch.cat(values))
            cosines.append(sample_cosine(previous, features) if previous is not None
                           else torch.full((len(features),), torch.nan, dtype=torch.float64,
                                           device=features.device))
            previous = features
        stacked = {key: torch.stack(values, 1).cpu().numpy() for key, values in columns.items()}
        parts.append(TokenSignals(labels.cpu().numpy(), **stacked, vocabulary=vocabulary,
                                  cosine=torch.stack(cosines, 1).cpu().numpy()))
        count += len(labels)
    if not parts:
        raise ConfigError("No held-out tokens to collect signals from: the split is empty.")
    signals = TokenSignals.cat(parts)
    return signals if max_tokens is None else signals.tokens(slice(0, max_tokens))


def fires(rule: ExitRule, signals: TokenSignals) -> np.ndarray:
    """(N, L) bool: where ``rule`` would let each token leave (before "everyone leaves at L")."""
    threshold = rule.threshold
    if isinstance(rule, ConfidenceRule):
        return signals.confidence >= threshold
    if isinstance(rule, EntropyRule):
        return signals.entropy <= threshold
    if isinstance(rule, StateRule):
        with np.errstate(invalid="ignore"):
            return signals.cosine >= threshold  # NaN (layer 1) compares False
    if isinstance(rule, BudgetRule):
        layers = np.arange(1, signals.num_layers + 1)
        return np.broadcast_to(layers >= threshold, signals.top1.shape)
    if isinstance(rule, PatienceRule):  # the top-1 unchanged for `threshold` layers in a row
        unchanged = np.zeros(signals.top1.shape)
        same = signals.top1[:, 1:] == signals.top1[:, :-1]
        for layer in range(1, signals.num_layers):
            unchanged[:, layer] = np.where(same[:, layer - 1], unchanged[:, layer - 1] + 1, 0)
        return unchanged >= threshold
    raise ConfigError(f"No offline simulation for {type(rule).__name__}; the rules are "
                      f"{', '.join(RULES)}.")


def simulate_tokens(rule: ExitRule, signals: TokenSignals) -> ExitResult:
    """Each token's exit layer (the first where the rule fires, L at the latest) and its
    prediction there."""
    leaving = fires(rule, signals).copy()
    leaving[:, -1] = True
    exit_index = leaving.argmax(1)  # the first True
    predictions = signals.top1[np.arange(len(exit_index)), exit_index]
    return ExitResult(torch.from_numpy(predictions), torch.from_numpy(exit_index + 1))


def token_point(rule: ExitRule, signals: TokenSignals) -> dict[str, float]:
    """Next-token accuracy and cost of ``rule`` on ``signals``; how often its token is the
    full-depth one (top-1 agreement with the last layer); and the mean number of LM-head calls
    per token, which an LM's cost must count: SmolLM2's head (49,152 x 576) is 8 blocks' worth
    of weights. Confidence, entropy and patience read the head at every layer from their first;
    state and budget only at the exit (the decision loop computes logits on first use)."""
    result = simulate_tokens(rule, signals)
    point = operating_point(result, signals.labels, signals.num_layers)
    point["agreement"] = float((result.predictions.numpy() == signals.top1[:, -1]).mean())
    exits = result.exit_layers.double()
    reads_every_layer = not isinstance(rule, (StateRule, BudgetRule))
    point["mean_head_calls"] = (
        float((exits - first_read(rule, signals.num_layers) + 1).mean()) if reads_every_layer
        else 1.0)
    return point


def token_sweep(rule_name: str, signals: TokenSignals) -> list[dict[str, float]]:
    """One point per threshold of the rule's grid (threshold, accuracy, mean exit layer, ...)."""
    rule_class = RULES[rule_name]
    return [{"threshold": threshold, **token_point(rule_class(threshold), signals)}
            for threshold in rule_class.grid(signals.num_layers, signals.vocabulary)]


def full_depth_accuracy(signals: TokenSignals) -> float:
    return float((signals.top1[:, -1] == signals.labels).mean())


def decoding_summary(val: TokenSignals, test: TokenSignals, max_drop: float,
                     rules: Iterable[str] = tuple(RULES)) -> dict[str, Any]:
    """Per rule the val and test curves and the operating point chosen on val, measured on
    test; the same selection as the classifiers' ``early_exit_summary``."""
    full_val, full_test = full_depth_accuracy(val), full_depth_accuracy(test)
    summary = {}
    for name in rules:
        if name not in RULES:
            raise ConfigError(f"Unknown exit rule '{name}'; use one of {', '.join(RULES)}.")
        val_curve, test_curve = token_sweep(name, val), token_sweep(name, test)
        threshold = choose_threshold(val_curve, full_val, max_drop)
        chosen = None
        if threshold is not None:
            val_point = next(p for p in val_curve if p["threshold"] == threshold)
            chosen = {"threshold": threshold, "val_accuracy": val_point["accuracy"],
                      "val_mean_exit_layer": val_point["mean_exit_layer"],
                      **token_point(RULES[name](threshold), test)}
        summary[name] = {"val_curve": val_curve, "test_curve": test_curve, "chosen": chosen}
    return {
        "max_drop": max_drop,
        "selection": "smallest val mean exit layer with val accuracy >= full depth - max_drop",
        "num_layers": test.num_layers,
        "tokens": {"val": len(val.labels), "test": len(test.labels)},
        "full_depth_accuracy": {"val": full_val, "test": full_test},
        "kv_note": "teacher-forced from full-depth states: exact for kv=recompute",
        "flops_note": FLOPS_NOTE,
        "rules": summary,
    }
