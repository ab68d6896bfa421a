"""benchmarks/decoding.py at toy sizes (a tiny random GPT-2 over a word corpus, in process):
every figure it reports is produced, and they agree with each other where they must."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from causal_lm_helpers import save_tiny_lm, write_corpus

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("decoding_benchmark",
                                                  ROOT / "benchmarks" / "decoding.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def threads():
    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)  # the benchmark sets its own (--threads)


def test_benchmark_at_toy_sizes(tmp_path, threads, capsys):
    model = save_tiny_lm(tmp_path / "model", "gpt2", layers=3)
    corpus = write_corpus(tmp_path / "corpus", documents=60, words=(20, 40))
    out = tmp_path / "decoding.json"
    benchmark = load_benchmark()
    results = benchmark.main([
        "--model", str(model), "--source", str(corpus), "--cache-dir", str(tmp_path / "cache"),
        "--max-length", "32", "--val-tokens", "60", "--test-tokens", "60",
        "--max-drops", "0.01,1", "--kv", "recompute", "--prompts", "2", "--prompt-length", "8",
        "--new-tokens", "6", "--scored-tokens", "60", "--rounds", "2", "--json", str(out),
    ])
    assert json.loads(out.read_text())["points"] == json.loads(json.dumps(results["points"]))
    printed = capsys.readouterr().out
    assert "full depth" in printed and "HF generate" in printed
    points = {row["label"]: row for row in results["points"]}
    full = points["full depth"]
    assert full["generation_mean_exit_layer"] == 3 and full["same_as_full_depth_prefix"] == 1
    assert full["speedup"] == 1 and full["identical_to_full_depth"]
    assert results["hf_generate_tokens_per_s"] > 0
    assert results["full_depth_equals_hf_generate"]
    offline = results["offline"]["1.0"]
    assert offline["samples"] == {"val": 60, "test": 60}
    # A drop of 1 allows any accuracy: every rule leaves as early as its grid lets it.
    assert offline["rules"]["budget"]["chosen"]["threshold"] == 1
    assert points["budget 1"]["generation_mean_exit_layer"] == 1

    drops = [0.01, 1.0]
    assert results["max_drops"] == drops

    def chosen_at(drop: float, rule: str) -> float | None:
        chosen = results["offline"][str(drop)]["rules"][rule]["chosen"]
        return None if chosen is None else chosen["threshold"]

    # Each point lists the drops at which the val selection chose it, and every choice is listed
    # once: full depth is a budget of every layer (or no choice at all, timed as the baseline).
    choices = [(drop, rule) for drop in drops for rule in results["offline"][str(drop)]["rules"]
               if chosen_at(drop, rule) is not None]
    assert sum(len(row["max_drops"]) for row in points.values()) == len(choices)
    for label, row in points.items():
        assert row["tokens_per_s"] > 0, label
        # measured in the same rounds as full depth (not the offline prediction)
        assert row["speedup"] == pytest.approx(row["tokens_per_s"] / full["tokens_per_s"]), label
        if label == "full depth":
            picked = [d for d in drops if (chosen_at(d, "budget") or 0) >= results["num_layers"]]
        else:
            picked = [d for d in drops if chosen_at(d, row["rule"]) == row["threshold"]]
            assert picked, label
        assert row["max_drops"] == picked, label
        if "decoder_teacher_forced" in row:
            # kv=recompute: the decoder scores the same 60 test tokens as the offline
            # simulation (float32 here, so allow a token's worth of round-off)
            scored = row["decoder_teacher_forced"]
            assert scored["tokens"] == 60
            assert scored["offline_accuracy"] == row["accuracy"], label  # all 60 test tokens
            assert abs(scored["accuracy"] - row["accuracy"]) <= 1 / 60 + 1e-9, label
            assert abs(scored["mean_exit_layer"] - row["mean_exit_layer"]) <= 2 / 60, label
    assert "decoder_teacher_forced" in points["budget 1"]
    assert "decoder_teacher_forced" in full
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        benchmark.main(["--model", str(model), "--test-tokens", "60", "--scored-tokens", "61"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "Error: --scored-tokens 61 is more than --test-tokens 60; the offline figure on the same "
        "tokens needs them.")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_speculative_configurations_are_lossless_and_reported(tmp_path, threads, capsys, family):
    model = save_tiny_lm(tmp_path / "model", family, layers=4)
    corpus = write_corpus(tmp_path / "corpus", documents=60, words=(20, 40))
    out = tmp_path / "decoding.json"
    results = load_benchmark().main([
        "--model", str(model), "--source", str(corpus), "--cache-dir", str(tmp_path / "cache"),
        "--max-length", "32", "--val-tokens", "60", "--test-tokens", "60", "--rules", "budget",
        "--prompts", "2", "--prompt-length", "8", "--new-tokens", "10", "--speculative",
        "--max-draft", "3", "--json", str(out)])
    assert json.loads(out.read_text())["speculative"] == json.loads(
        json.dumps(results["speculative"]))
    rows = {row["label"]: row for row in results["speculative"]}
    ours = [row for label, row in rows.items() if label.startswith("speculative")]
    assert ours and all(1 <= row["exit_layer"] < 4 and 1 <= row["draft_tokens"] <= 3
                        for row in ours)
    best = ours[0]  # the plan with the best predicted speed-up comes first
    assert rows["hf assistant_early_exit"]["exit_layer"] == best["exit_layer"]
    for row in ours:
        assert row["identical_to_full_depth"] is True, row["label"]
        assert row["tokens_per_s"] > 0 and row["speedup"] > 0
        assert 0 <= row["accepted_per_verification"] <= row["draft_tokens"]
        assert row["tokens_per_verification"] == pytest.approx(
            row["accepted_per_verification"] + 1)
        assert 1 <= row["test_tokens_per_verification"] <= row["draft_tokens"] + 1
    hf = rows["hf assistant_early_exit"]
    if "error" not in hf:  # HF's own support, per family
        assert hf["identical_to_full_depth"] is True
    else:
        assert family == "gpt2"
    assert len(results["piece_costs"]["block_s"]) == 4
    assert "lossless" in capsys.readouterr().out
