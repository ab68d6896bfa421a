"""compare_speculative (aligned.early_exit.decoding_comparison), what the reproduction times on
an LM: full depth, the plans chosen on val and HF's early-exit assistant, on a tiny LLaMA."""

from __future__ import annotations

import pytest
import torch
from causal_lm_helpers import save_tiny_lm

from aligned.early_exit.decoding_comparison import FULL_DEPTH, HF_EARLY_EXIT, compare_speculative
from aligned.early_exit.signals import collect_token_signals
from aligned.models.backbones.hf_decoder import HFDecoder

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def batches(seed: int) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(3, 28, (4, 24), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}]


def test_rows_for_full_depth_each_plan_and_hugging_face(tmp_path):
    backbone = HFDecoder(str(save_tiny_lm(tmp_path, "llama", 4))).eval()
    val, test = (collect_token_signals(backbone, batches(seed)) for seed in (0, 1))
    prompts = [torch.randint(3, 28, (1, 6), generator=torch.Generator().manual_seed(seed))
               for seed in (2, 3)]
    result = compare_speculative(backbone, val, test, prompts, new_tokens=8, rounds=2,
                                 max_draft=3, pad_token_id=0)
    rows = {row["label"]: row for row in result["rows"]}
    assert list(rows)[0] == FULL_DEPTH and rows[FULL_DEPTH]["speedup"] == 1
    speculative = [row for label, row in rows.items() if label.startswith("speculative")]
    assert speculative and HF_EARLY_EXIT in rows
    for row in [*speculative, rows[HF_EARLY_EXIT]]:
        assert row["identical_to_full_depth"] is True, row["label"]
        assert row["tokens_per_s"] > 0
    assert rows[HF_EARLY_EXIT]["exit_layer"] == speculative[0]["exit_layer"]
    assert speculative[0]["predicted_speedup"] == max(r["predicted_speedup"] for r in speculative)
    assert (result["prompts"], result["new_tokens"], result["rounds"]) == (2, 8, 2)
