"""Greedy decoders of one causal LM timed on the same prompts, batch 1, in interleaved rounds
(so that drifting load hits all alike), against full-depth decoding: tokens/s, the speed-up
over full depth in the same rounds, and whether each produced exactly full depth's tokens.
Lossless self-speculative decoding's configurations come from ``speculation_plan`` (chosen on
val), and Hugging Face's own ``generate(assistant_early_exit=E)`` can run beside them on the
same weights. ``benchmarks/decoding.py`` and ``python -m aligned.reproduce`` both use it.

    comparison = DecodingComparison(prompts, new_tokens=64)
    rows = compare_speculative(comparison, backbone, val_signals, test_signals, rounds=3)
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from aligned.early_exit.decoding import Decoded, EarlyExitDecoder
from aligned.early_exit.rules import make_rule
from aligned.early_exit.signals import ExitSignals
from aligned.early_exit.speculation_plan import (
    SpeculationPlan,
    accepted_runs,
    measure_piece_costs,
    plan_grid,
    tokens_per_verification,
)
from aligned.early_exit.speculative import Speculated, SpeculativeDecoder
from aligned.models.backbones.hf_decoder import HFDecoder

FULL_DEPTH = "full depth"
HF_EARLY_EXIT = "hf assistant_early_exit"
Generate = Callable[[torch.Tensor, int], Any]  # (prompt (1, P), count) -> tokens or a result
COUNTS = ("verifications", "drafted", "accepted")


class DecodingComparison:
    """Decoders by label, each run over every prompt once a round; the first added is the
    baseline the others' speed-up and tokens are compared with."""

    def __init__(self, prompts: list[torch.Tensor], new_tokens: int) -> None:
        self.prompts, self.new_tokens = prompts, new_tokens
        self.decoders: dict[str, Generate] = {}
        self.generated: dict[str, list[torch.Tensor]] = {}  # the last round's tokens (N,)
        self.results: dict[str, list[Any]] = {}  # the last round's results, as returned
        self.seconds: dict[str, float] = {}  # median seconds per round

    def add(self, label: str, generate: Generate) -> None:
        self.decoders[label] = generate

    def run(self, label: str, warm_up: bool = False) -> None:
        count = 2 if warm_up else self.new_tokens
        results = [self.decoders[label](prompt, count)
                   for prompt in (self.prompts[:1] if warm_up else self.prompts)]
        if not warm_up:
            self.results[label] = results
            self.generated[label] = [tokens_of(result)[0, -count:] for result in results]

    def time(self, rounds: int) -> dict[str, float]:
        """Median seconds per round of each decoder, after one warm-up each."""
        for label in self.decoders:
            self.run(label, warm_up=True)
        times: dict[str, list[float]] = {label: [] for label in self.decoders}
        for _ in range(rounds):
            for label in self.decoders:
                started = time.perf_counter()
                self.run(label)
                times[label].append(time.perf_counter() - started)
        self.seconds = {label: statistics.median(values) for label, values in times.items()}
        return self.seconds

    def row(self, label: str) -> dict[str, Any]:
        """tokens_per_s, speedup over the baseline and identical_to_full_depth of ``label``."""
        baseline = next(iter(self.decoders))
        tokens = self.new_tokens * len(self.prompts)
        return {"label": label, "tokens_per_s": tokens / self.seconds[label],
                "speedup": self.seconds[baseline] / self.seconds[label],
                "identical_to_full_depth": all(
                    torch.equal(ours, theirs) for ours, theirs in
                    zip(self.generated[label], self.generated[baseline], strict=True))}


def tokens_of(result: Any) -> torch.Tensor:
    return result.tokens if isinstance(result, Decoded | Speculated) else result


def full_depth_decoder(backbone: HFDecoder) -> Generate:
    """Greedy decoding on the block-by-block path with no exit: the baseline."""
    decoder = EarlyExitDecoder(backbone, make_rule("budget", float(backbone.num_layers)))
    return decoder.generate


def hf_greedy(model: Any, pad_token_id: int | None, **settings: Any) -> Generate:
    """Hugging Face's ``generate``, greedy, never stopping at an end-of-text token, as the
    decoders here (its min_new_tokens would forbid the token instead, changing the argmax; an
    eos_token_id of None falls back to the model's, an empty list stops at none)."""

    def generate(prompt: torch.Tensor, count: int) -> torch.Tensor:
        config = copy.deepcopy(model.generation_config)
        config.update(do_sample=False, max_new_tokens=count, pad_token_id=pad_token_id,
                      **settings)
        config.eos_token_id = []
        with torch.inference_mode():
            return model.generate(prompt, generation_config=config)
    return generate


def plans_to_time(plans: list[SpeculationPlan], max_draft: int) -> list[SpeculationPlan]:
    """The best predicted plan, then its neighbours: E - 1 and E + 1, d halved and doubled."""
    best = plans[0]
    by_key = {(plan.exit_layer, plan.draft_tokens): plan for plan in plans}
    keys = [(best.exit_layer, best.draft_tokens),
            (best.exit_layer - 1, best.draft_tokens), (best.exit_layer + 1, best.draft_tokens),
            (best.exit_layer, max(1, best.draft_tokens // 2)),
            (best.exit_layer, min(max_draft, 2 * best.draft_tokens))]
    chosen: list[SpeculationPlan] = []
    for key in keys:
        if key in by_key and by_key[key] not in chosen:
            chosen.append(by_key[key])
    return chosen


def speculative_label(plan: SpeculationPlan) -> str:
    return f"speculative E={plan.exit_layer} d={plan.draft_tokens}"


def add_speculative(comparison: DecodingComparison, backbone: HFDecoder, val: ExitSignals,
                    max_draft: int, pad_token_id: int | None = None, hugging_face: bool = True
                    ) -> tuple[list[SpeculationPlan], dict[str, Any]]:
    """Adds the plans chosen on ``val`` (the best and its neighbours) and, with
    ``hugging_face``, HF's early-exit assistant at the best plan on a copy of the model (its
    drafter sets config.num_hidden_layers = E while it drafts and leaves it so when it fails,
    as on GPT-2, which would cut every later cache short). Returns the plans and the piece
    costs they were predicted from, and HF's error where its own code fails."""
    costs = measure_piece_costs(backbone, max_draft + 1)
    plans = plans_to_time(plan_grid(val, costs, max_draft), max_draft)
    for plan in plans:
        decoder = SpeculativeDecoder(backbone, plan.exit_layer, plan.draft_tokens)
        comparison.add(speculative_label(plan), decoder.generate)
    notes: dict[str, Any] = {"piece_costs": {"block_s": costs.block, "head_s": costs.head}}
    if hugging_face:
        best = plans[0]
        comparison.add(HF_EARLY_EXIT, hf_greedy(
            copy.deepcopy(backbone.model), pad_token_id, assistant_early_exit=best.exit_layer,
            num_assistant_tokens=best.draft_tokens, num_assistant_tokens_schedule="constant"))
        try:  # its own code may not support the family (GPT-2: an IndexError in 5.25)
            comparison.run(HF_EARLY_EXIT)  # all of it: GPT-2 fails only after a few tokens
        except Exception as error:  # noqa: BLE001  (reported in its row; the rest is timed)
            del comparison.decoders[HF_EARLY_EXIT]
            notes["hf_error"] = f"{type(error).__name__}: {str(error)[:300]}"
    return plans, notes


def speculative_rows(comparison: DecodingComparison, plans: list[SpeculationPlan],
                     test: ExitSignals, notes: dict[str, Any]) -> list[dict[str, Any]]:
    """After ``comparison.time``: a row per plan (and HF's), with the plan, the accepted
    drafts per verification measured in decoding, and the tokens per verification expected
    on val (the plan's choice) and on test."""
    rows = []
    for plan in plans:
        label = speculative_label(plan)
        counts = {key: sum(getattr(result, key) for result in comparison.results[label])
                  for key in COUNTS}
        tokens = comparison.new_tokens * len(comparison.prompts)
        rows.append({
            **comparison.row(label), "exit_layer": plan.exit_layer,
            "draft_tokens": plan.draft_tokens,
            "accepted_per_verification": counts["accepted"] / counts["verifications"],
            "tokens_per_verification": tokens / counts["verifications"],
            "val_tokens_per_verification": plan.tokens_per_verification,
            "test_tokens_per_verification": tokens_per_verification(
                accepted_runs(test, plan.exit_layer), plan.draft_tokens),
            "predicted_speedup": plan.predicted_speedup})
    if HF_EARLY_EXIT in comparison.decoders or "hf_error" in notes:
        best = plans[0]
        row = {"label": HF_EARLY_EXIT, "exit_layer": best.exit_layer,
               "draft_tokens": best.draft_tokens}
        row.update({"error": notes["hf_error"]} if "hf_error" in notes
                   else comparison.row(HF_EARLY_EXIT))
        rows.append(row)
    return rows


def compare_speculative(backbone: HFDecoder, val: ExitSignals, test: ExitSignals,
                        prompts: list[torch.Tensor], new_tokens: int, rounds: int,
                        max_draft: int = 8, pad_token_id: int | None = None) -> dict[str, Any]:
    """Full depth, the plans chosen on ``val`` and HF's early-exit assistant, timed."""
    comparison = DecodingComparison(prompts, new_tokens)
    comparison.add(FULL_DEPTH, full_depth_decoder(backbone))
    plans, notes = add_speculative(comparison, backbone, val, max_draft, pad_token_id)
    comparison.time(rounds)
    return {"rows": [comparison.row(FULL_DEPTH),
                     *speculative_rows(comparison, plans, test, notes)],
            "piece_costs": notes["piece_costs"], "prompts": len(prompts),
            "new_tokens": new_tokens, "rounds": rounds}
