"""train.py on a causal LM: a tiny random GPT-2 (written by the test) on .txt files, with every
objective of the loss group; results.json holds per-layer next-token accuracy and perplexity."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from causal_lm_helpers import save_tiny_lm, write_corpus
from conftest import ROOT, compose_train

from aligned.config import ConfigError
from aligned.training.checkpoints import load_system, read_checkpoint
from aligned.training.fit import train


@pytest.fixture(scope="module")
def lm_and_corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("causal_train")
    return save_tiny_lm(root / "gpt2"), write_corpus(root / "corpus", documents=30)


def overrides(lm: Path, corpus: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "model=gpt2", f"model.name_or_path={lm}", "data=text", f"data.source={corpus}",
        f"data.cache_dir={cache}", "data.max_length=16", "data.batch_size=4",
        "+data.val_fraction=0.2", "+data.test_fraction=0.2",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
        "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        "logger=none", *extra,
    ]


# loss=aligned: test_train_py_runs_a_causal_lm_end_to_end; loss=standard's step and metrics:
# test_causal_lm.py::test_the_system_trains_and_scores_every_token_layer_by_layer.
@pytest.mark.parametrize("loss", [
    ["loss=aligned", "loss.alternating=true"],
    ["loss=multiexit", "loss.weighting=uniform", "loss.bias=false"],
])
def test_every_objective_trains_the_lm_and_writes_token_metrics(lm_and_corpus, tmp_path, loss):
    lm, corpus = lm_and_corpus
    cfg = compose_train(overrides(lm, corpus, tmp_path / "cache", *loss), tmp_path / "run")
    results = train(cfg)
    assert results["num_layers"] == 3 and results["metric"] == "accuracy"
    for split in ("val", "test"):
        accuracy = results["layer_accuracy"][split]
        perplexity = results["layer_metrics"]["perplexity"][split]
        assert len(accuracy) == len(perplexity) == 3
        assert all(0 <= a <= 1 for a in accuracy)
        # A random 3-layer model over 28 tokens: perplexity near the vocabulary size.
        assert all(5 < p < 200 and math.isfinite(p) for p in perplexity)
        assert results["final_accuracy"][split] == accuracy[-1]
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results
    # As evaluate.py loads it: the config builds the model (weights not loaded twice), then the
    # checkpoint's weights.
    system = load_system(read_checkpoint(results["checkpoint"]))
    assert system.next_token and system.hparams["model"]["name_or_path"] == str(lm)
    expected_extra = 2 * 32 * 28 if "loss=multiexit" in loss else 0  # (L-1)·D·V, no biases
    assert system.objective.extra_parameters() == expected_extra


@pytest.mark.slow
def test_train_py_runs_a_causal_lm_end_to_end(lm_and_corpus, tmp_path):
    lm, corpus = lm_and_corpus
    command = [sys.executable, "train.py", *overrides(lm, corpus, tmp_path / "cache"),
               "loss=aligned", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Layer-wise accuracy: model=gpt2 data=text loss=aligned" in done.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["layer_metrics"]) == {"accuracy", "perplexity"}


@pytest.mark.parametrize("pair, message", [
    (["model=gpt2", "data=digits"], "model=gpt2 reads causal_text but data=digits holds images"),
    (["model=vit", "data=text"], "model=vit reads images but data=text holds causal_text"),
])
def test_a_causal_lm_pairs_only_with_text_data(tmp_path, pair, message):
    cfg = compose_train([*pair, "logger=none"], tmp_path / "run")
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_the_step_cost_benchmark_times_each_objective_on_an_lm(lm_and_corpus, monkeypatch,
                                                               capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_cost", ROOT / "benchmarks" /
                                                  "step_cost.py")
    step_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_cost)
    lm, _ = lm_and_corpus
    monkeypatch.setattr(sys, "argv", ["step_cost.py", "--lm", "gpt2", "--model-path", str(lm),
                                      "--multiexit", "--layers-per-step", "1", "2",
                                      "--steps", "2", "--rounds", "1",
                                      "--batch-size", "2", "--length", "8"])
    step_cost.main()
    printed = capsys.readouterr().out
    assert "GPT2LMHeadModel: 3 layers, width 32, vocabulary 28; batch 2 x 8 tokens" in printed
    rows = {line.rsplit(maxsplit=3)[0]: line.rsplit(maxsplit=3)[1:]
            for line in printed.splitlines() if line.startswith(("HF forward", "loss="))}
    assert set(rows) == {"HF forward + CE (reference)", "loss=standard", "loss=aligned",
                         "loss=aligned layers_per_step=1", "loss=aligned layers_per_step=2",
                         "loss=multiexit"}
    assert all(float(ms) > 0 for ms, _, _ in rows.values())
    assert rows["loss=standard"][1:] == ["+0.0%", "1.00x"]
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--no-full"])  # more rounds of the cheap ones
    step_cost.main()
    names = {line.rsplit(maxsplit=3)[0] for line in capsys.readouterr().out.splitlines()
             if line.startswith("loss=")}
    assert names == set(rows) - {"loss=aligned", "HF forward + CE (reference)"}
