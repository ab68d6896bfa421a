"""Offline sweeps of the exit rules for causal LMs (aligned.early_exit.decoding_offline) on a
tiny random GPT-2: the per-token signals are the model's own, the array simulation decides as
the classifiers' loop does on full logits, and it equals real teacher-forced early-exit decoding
under kv=recompute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from causal_lm_helpers import save_tiny_lm, vocab_size

from aligned.analysis.layerwise_pass import ExitSignalCache
from aligned.analysis.similarity import sample_cosine
from aligned.config import ConfigError
from aligned.data.text import PadWithLabels
from aligned.early_exit.decoding import EarlyExitDecoder
from aligned.early_exit.decoding_offline import (
    collect_token_signals,
    decoding_summary,
    simulate_tokens,
    token_sweep,
)
from aligned.early_exit.offline import simulate, sweep
from aligned.early_exit.rules import RULES
from aligned.models.backbones.hf_decoder import HFDecoder

LAYERS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()  # tiny ops: one thread is far faster on 2 busy cores
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> HFDecoder:
    directory = save_tiny_lm(tmp_path_factory.mktemp("gpt2"), "gpt2", LAYERS)
    backbone = HFDecoder(str(directory)).eval().double()  # float64: exact agreement
    generator = torch.Generator().manual_seed(0)  # livelier than HF's std 0.02 (mixed exits)
    with torch.no_grad():
        for parameter in backbone.parts.blocks.parameters():
            if parameter.ndim == 2:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator,
                                                  dtype=parameter.dtype))
        # Sharper logits (the random head is near uniform over 28 tokens otherwise), so that
        # the confidence grid's steps fall between the tokens' confidences.
        backbone.parts.final_norm.weight.mul_(8)
    return backbone


def documents(count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size(), (int(length),), generator=generator)
            for length in torch.randint(4, 20, (count,), generator=generator)]


def batches(docs: list[torch.Tensor], size: int = 3) -> list[dict[str, torch.Tensor]]:
    collate = PadWithLabels(pad_token_id=0)  # right padding, labels -100 there: data=text's
    return [collate(docs[i:i + size]) for i in range(0, len(docs), size)]


def full_logits(backbone: HFDecoder, docs: list[torch.Tensor]) -> np.ndarray:
    """(N, L, V) every layer's logits at every position that has a next token, in order."""
    rows = []
    with torch.no_grad():
        for doc in docs:
            state = backbone.begin({"input_ids": doc[None]})
            layers = []
            for layer in range(1, LAYERS + 1):
                state = backbone.run_block(layer, state)
                layers.append(backbone.head(state.tokens[0, :-1]))  # (T-1, V)
            rows.append(torch.stack(layers, 1))
    return torch.cat(rows).numpy()


def test_signals_are_the_models_own(backbone):
    docs = documents(7, seed=0)
    signals = collect_token_signals(backbone, batches(docs), chunk=5)
    assert len(signals.labels) == sum(len(doc) - 1 for doc in docs)
    assert signals.vocabulary == vocab_size()
    offset = 0
    with torch.no_grad():
        for doc in docs:
            out = backbone.model(doc[None], output_hidden_states=True)
            rows = slice(offset, offset + len(doc) - 1)
            offset += len(doc) - 1
            assert np.array_equal(signals.labels[rows], doc[1:].numpy())
            assert np.array_equal(signals.top1[rows, -1], out.logits[0, :-1].argmax(-1).numpy())
            p = out.logits[0, :-1].softmax(-1)
            np.testing.assert_allclose(signals.confidence[rows, -1], p.amax(-1).numpy(),
                                       rtol=1e-9)
            hidden = out.hidden_states  # HF's: index l = block l's output, ln_f applied at L
            np.testing.assert_allclose(
                signals.cosine[rows, 1], sample_cosine(hidden[1][0, :-1], hidden[2][0, :-1]),
                rtol=1e-9)
    assert np.isnan(signals.cosine[:, 0]).all()
    assert len(collect_token_signals(backbone, batches(docs), max_tokens=10).labels) == 10


def test_array_simulation_decides_as_the_loop(backbone):
    """Every rule over its whole grid: the same exits and predictions as the classifiers'
    exit_layer_by_layer (offline.simulate) fed the full (N, L, V) logits."""
    docs = documents(6, seed=1)
    signals = collect_token_signals(backbone, batches(docs))
    cache = ExitSignalCache(signals.labels, full_logits(backbone, docs), signals.cosine)
    for name in RULES:
        looped, arrays = sweep(name, cache), token_sweep(name, signals)
        assert [p["threshold"] for p in looped] == [p["threshold"] for p in arrays]
        for a, b in zip(looped, arrays, strict=True):
            assert (a["accuracy"], a["mean_exit_layer"]) == (b["accuracy"], b["mean_exit_layer"])
        exits = {p["mean_exit_layer"] for p in arrays}
        assert len(exits) > 2, f"{name}'s grid should give several depths"
        middle = RULES[name](arrays[len(arrays) // 2]["threshold"])
        result, expected = simulate_tokens(middle, signals), simulate(middle, cache)
        assert torch.equal(result.exit_layers, expected.exit_layers)
        assert torch.equal(result.predictions, expected.predictions)


def test_simulation_is_teacher_forced_decoding_with_recompute(backbone):
    docs = documents(3, seed=2)
    for name in ("confidence", "state", "patience"):
        signals = collect_token_signals(backbone, batches(docs, size=1))
        curve = token_sweep(name, signals)
        rule = RULES[name](next(p for p in curve if 1.5 < p["mean_exit_layer"] < 3.5)["threshold"])
        simulated = simulate_tokens(rule, signals)
        decoder = EarlyExitDecoder(backbone, rule, kv="recompute")
        decoded = [decoder.teacher_forced(doc[None]) for doc in docs]
        assert torch.equal(torch.cat([d.tokens[0, :-1] for d in decoded]), simulated.predictions)
        assert torch.equal(torch.cat([d.exit_layers[0, :-1] for d in decoded]),
                           simulated.exit_layers)


def test_summary_chooses_on_val_within_max_drop(backbone):
    val = collect_token_signals(backbone, batches(documents(8, seed=3)))
    test = collect_token_signals(backbone, batches(documents(8, seed=4)))
    summary = decoding_summary(val, test, max_drop=0.05)
    full_val = summary["full_depth_accuracy"]["val"]
    assert summary["tokens"] == {"val": len(val.labels), "test": len(test.labels)}
    for name, entry in summary["rules"].items():
        chosen = entry["chosen"]
        assert chosen["val_accuracy"] >= full_val - 0.05 - 1e-12, name
        allowed = [p for p in entry["val_curve"] if p["accuracy"] >= full_val - 0.05 - 1e-12]
        assert chosen["val_mean_exit_layer"] == min(p["mean_exit_layer"] for p in allowed)
        test_point = next(p for p in entry["test_curve"] if p["threshold"] == chosen["threshold"])
        assert chosen["accuracy"] == test_point["accuracy"]
    budget = summary["rules"]["budget"]["test_curve"][-1]  # depth L: full depth
    assert budget["accuracy"] == summary["full_depth_accuracy"]["test"]
    assert budget["agreement"] == 1.0 and budget["mean_head_calls"] == 1.0
    confidence = summary["rules"]["confidence"]["test_curve"][-1]  # threshold 1: (almost) no exit
    assert confidence["mean_head_calls"] == confidence["mean_exit_layer"]
    with pytest.raises(ConfigError, match="Unknown exit rule 'speed'"):
        decoding_summary(val, test, 0.01, rules=["speed"])
