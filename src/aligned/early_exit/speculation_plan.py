"""Choosing self-speculative decoding's exit layer E and draft length d on held-out text,
before decoding anything: from the teacher-forced signals the offline sweep computes anyway
(``ExitSignals``: every token's top-1 at every layer) and a measured cost of the pieces.

Acceptance: a draft at layer E is accepted when layer E's top-1 equals layer L's, and a round
stops at the first disagreement. Over the held-out tokens in order (each row one teacher-forced
position), a round starting at token i accepts the run of agreeing tokens from i, at most d,
and the next round starts after it, one token further (layer L's own token). Teacher forcing
feeds the text's tokens rather than the model's greedy ones; the runs are the same statistic
decoding meets wherever the two contexts agree.

Cost: per round, d + 1 positions through blocks 1..E one at a time, d head calls at layer E,
then d + 1 positions together through blocks E+1..L and one head call on them; against L
blocks and one head call per token at full depth. ``measure_piece_costs`` times one block and
the head on 1..k positions against a cache, on the machine that will decode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from aligned.early_exit.signals import ExitSignals
from aligned.models.backbones.hf_decoder import HFDecoder


@dataclass(frozen=True)
class PieceCosts:
    """Seconds of one block (the mean over blocks) and of the shared head, on k positions at
    once after a cache: index k - 1."""

    block: tuple[float, ...]
    head: tuple[float, ...]

    def round_seconds(self, exit_layer: int, draft_tokens: int, num_layers: int) -> float:
        d = draft_tokens
        return ((d + 1) * exit_layer * self.block[0] + d * self.head[0]
                + (num_layers - exit_layer) * self.block[d] + self.head[d])

    def token_seconds(self, num_layers: int) -> float:
        """One full-depth greedy token."""
        return num_layers * self.block[0] + self.head[0]


def accepted_runs(signals: ExitSignals, exit_layer: int) -> np.ndarray:
    """For each token i, how many tokens from i on in a row layer ``exit_layer`` agrees with
    layer L (0 where it disagrees at i)."""
    agrees = signals.top1[:, exit_layer - 1] == signals.top1[:, -1]
    runs = np.zeros(len(agrees) + 1, dtype=np.int64)
    for i in range(len(agrees) - 1, -1, -1):
        runs[i] = runs[i + 1] + 1 if agrees[i] else 0
    return runs[:-1]


def tokens_per_verification(runs: np.ndarray, draft_tokens: int) -> float:
    """Mean new tokens per round over the held-out sequence: the accepted drafts plus one."""
    position, rounds = 0, 0
    while position < len(runs):
        position += min(int(runs[position]), draft_tokens) + 1
        rounds += 1
    return len(runs) / rounds


@dataclass(frozen=True)
class SpeculationPlan:
    exit_layer: int
    draft_tokens: int
    tokens_per_verification: float  # expected, from the held-out agreement runs
    predicted_speedup: float  # over full depth, from the piece costs

    def as_dict(self) -> dict:
        return {"exit_layer": self.exit_layer, "draft_tokens": self.draft_tokens,
                "tokens_per_verification": self.tokens_per_verification,
                "predicted_speedup": self.predicted_speedup}


def plan_grid(signals: ExitSignals, costs: PieceCosts, max_draft_tokens: int
              ) -> list[SpeculationPlan]:
    """Every (E, d), E in 1..L-1 and d in 1..``max_draft_tokens``, best predicted first."""
    num_layers = signals.num_layers
    full = costs.token_seconds(num_layers)
    plans = []
    for exit_layer in range(1, num_layers):
        runs = accepted_runs(signals, exit_layer)
        for d in range(1, max_draft_tokens + 1):
            per_round = tokens_per_verification(runs, d)
            speedup = per_round * full / costs.round_seconds(exit_layer, d, num_layers)
            plans.append(SpeculationPlan(exit_layer, d, per_round, speedup))
    return sorted(plans, key=lambda plan: -plan.predicted_speedup)


@torch.inference_mode()
def measure_piece_costs(backbone: HFDecoder, max_positions: int, context: int = 64,
                        repeats: int = 20) -> PieceCosts:
    """Median seconds of a middle block and of the head on 1..``max_positions`` new positions
    after ``context`` cached ones (random token ids), ``repeats`` times each."""
    device = backbone.parts.embed_tokens.weight.device
    if backbone.parts.position_embedding is not None:  # learned positions: stay within them
        context = max(0, min(context, backbone.parts.position_embedding.num_embeddings
                             - max_positions))
    layer = max(1, backbone.num_layers // 2)
    vocabulary = backbone.parts.embed_tokens.num_embeddings
    ids = torch.randint(vocabulary, (1, context + max_positions), device=device,
                        generator=torch.Generator(device).manual_seed(0))
    positions = torch.arange(context + max_positions, device=device)[None]
    hidden = backbone.embed(ids, positions)
    block, head = [], []
    for count in range(1, max_positions + 1):
        new = hidden[:, context:context + count]
        new_positions = positions[:, context:context + count]

        def run_block(new=new, new_positions=new_positions) -> float:
            cache = backbone.new_cache()  # the context's keys and values, then the new ones
            backbone.extend(layer, hidden[:, :context], cache, None, positions[:, :context])
            started = time.perf_counter()
            backbone.extend(layer, new, cache, None, new_positions)
            return time.perf_counter() - started

        def run_head(new=new) -> float:
            started = time.perf_counter()
            backbone.head(new[0]).argmax(-1)
            return time.perf_counter() - started

        block.append(float(np.median([run_block() for _ in range(repeats)])))
        head.append(float(np.median([run_head() for _ in range(repeats)])))
    return PieceCosts(tuple(block), tuple(head))
