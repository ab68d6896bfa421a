"""Choosing the exit layer and draft length from held-out agreement (aligned.early_exit.
speculation_plan): the acceptance runs and rounds on hand-written agreement patterns, the
predicted speed-up from piece costs, and the measured costs' shape on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from causal_lm_helpers import save_tiny_lm

from aligned.early_exit.signals import ExitSignals
from aligned.early_exit.speculation_plan import (
    PieceCosts,
    accepted_runs,
    measure_piece_costs,
    plan_grid,
    tokens_per_verification,
)
from aligned.models.backbones.hf_decoder import HFDecoder


def signals_with(agreement: list[list[bool]]) -> ExitSignals:
    """Tokens whose top-1 at layer l (of len(agreement) + 1) equals layer L's where given."""
    agree = np.array(agreement, dtype=bool).T  # (N, L - 1)
    n = len(agree)
    top1 = np.where(agree, 7, 3)
    top1 = np.concatenate([top1, np.full((n, 1), 7)], 1)
    zeros = np.zeros(top1.shape)
    return ExitSignals(np.full(n, 7), top1, zeros, zeros, zeros, 10)


def test_runs_count_the_agreeing_tokens_in_a_row():
    signals = signals_with([[True, True, False, True, True, True, False, True]])
    assert accepted_runs(signals, 1).tolist() == [2, 1, 0, 3, 2, 1, 0, 1]


def test_rounds_accept_the_run_up_to_d_then_add_one_token():
    runs = np.array([2, 1, 0, 3, 2, 1, 0, 1])
    # d=2: from 0 accept 2 (+1) -> 3; from 3 accept 2 (+1) -> 6; from 6 accept 0 -> 7;
    # from 7 accept 1 -> 9: 4 rounds over 8 tokens
    assert tokens_per_verification(runs, 2) == 8 / 4
    # d=1: 0 -> 2 -> 3 -> 5 -> 7 -> 8: 5 rounds
    assert tokens_per_verification(runs, 1) == 8 / 5
    assert tokens_per_verification(np.zeros(5, dtype=np.int64), 4) == 1.0
    assert tokens_per_verification(np.arange(9, 0, -1), 4) == 9 / 2  # 5 + 4 (capped by the end)


def test_the_plan_prefers_the_layer_that_agrees_and_the_draft_that_pays():
    agreement = [[False, True] * 18,  # layer 1 agrees half the time, never twice in a row
                 [True] * 36,  # layer 2 always
                 [True] * 36]
    costs = PieceCosts(block=(1.0,) * 9, head=(0.5,) * 9)  # k positions cost as one
    plans = plan_grid(signals_with(agreement), costs, max_draft_tokens=8)
    best = plans[0]
    assert (best.exit_layer, best.draft_tokens) == (2, 8)
    assert best.tokens_per_verification == 36 / 4
    round_seconds = 9 * 2 * 1.0 + 8 * 0.5 + 2 * 1.0 + 0.5
    assert best.predicted_speedup == pytest.approx(9 * (4 * 1.0 + 0.5) / round_seconds)
    assert [p.predicted_speedup for p in plans] == sorted(
        (p.predicted_speedup for p in plans), reverse=True)
    assert len(plans) == 3 * 8


def test_piece_costs_are_measured_for_every_count(tmp_path):
    backbone = HFDecoder(str(save_tiny_lm(tmp_path, "llama", 2))).eval()
    costs = measure_piece_costs(backbone, 3, context=8, repeats=2)
    assert len(costs.block) == len(costs.head) == 3
    assert all(seconds > 0 for seconds in (*costs.block, *costs.head))
