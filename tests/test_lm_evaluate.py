"""evaluate.py on causal LMs: a tiny random LLaMA as it is (no ckpt_path) and a tiny GPT-2
checkpoint trained for one short epoch, on .txt files the test writes. Golden: per-layer
next-token accuracy and perplexity, saturation and COS against direct computations from the
Hugging Face model, one unpadded sequence at a time."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from causal_lm_helpers import save_tiny_lm, write_corpus
from conftest import compose_evaluate, compose_train
from transformers import AutoModelForCausalLM

from aligned.analysis import token_pass
from aligned.analysis.cos import cos_similarity
from aligned.analysis.token_pass import TokenSampler, sequence_subset
from aligned.config import ConfigError
from aligned.data.text import TextDataModule
from aligned.evaluation import evaluate, language_model_limits
from aligned.models.backbones.hf_decoder import HFDecoder
from aligned.training.fit import train

LAYERS = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("lm_evaluate")
    return SimpleNamespace(llama=save_tiny_lm(root / "llama", "llama", LAYERS),
                           gpt2=save_tiny_lm(root / "gpt2", "gpt2", LAYERS),
                           corpus=write_corpus(root / "corpus", documents=24),
                           cache=root / "cache")


def data_overrides(files: SimpleNamespace) -> list[str]:
    # 24 documents: 5 in test, 5 in val; batches of 4 so a split has a short last batch.
    return ["data=text", f"data.source={files.corpus}", f"data.cache_dir={files.cache}",
            "data.max_length=16", "data.eval_batch_size=4", "+data.val_fraction=0.2",
            "+data.test_fraction=0.2"]


def reference(lm: Path, files: SimpleNamespace) -> SimpleNamespace:
    """Each test sequence alone through the HF model: per-layer top-1 and next-token NLL (the
    final norm and LM head on hidden_states[1..L-1], the model's own logits at L) and the
    backbone's features of the predicting positions."""
    model = AutoModelForCausalLM.from_pretrained(lm).eval()
    backbone = HFDecoder(str(lm)).eval()
    data = TextDataModule(str(lm), str(files.corpus), max_length=16, val_fraction=0.2,
                          test_fraction=0.2, cache_dir=str(files.cache))
    data.setup()
    predictions, nll, features, targets = [], [], [], []
    with torch.no_grad():
        for sequence in data.splits["test"]:
            ids = sequence.long()[None]  # (1, T)
            out = model(ids, output_hidden_states=True)
            logits = [model.lm_head(model.model.norm(h)) for h in out.hidden_states[1:LAYERS]]
            logits = torch.stack([*logits, out.logits])[:, 0, :-1]  # (L, T-1, V)
            target = ids[0, 1:]
            predictions.append(logits.argmax(-1).T)  # (T-1, L)
            nll.append(torch.stack([torch.nn.functional.cross_entropy(x, target, reduction="sum")
                                    for x in logits]))
            features.append(backbone.layer_features({"input_ids": ids})[:, 0, :-1])
            targets.append(target)
    return SimpleNamespace(predictions=torch.cat(predictions).numpy(),
                           nll=torch.stack(nll).sum(0).double().numpy(),
                           features=torch.cat(features, 1), targets=torch.cat(targets).numpy(),
                           sequences=len(data.splits["test"]))


def brute_force_saturation(predictions: np.ndarray) -> np.ndarray:
    """The first layer l (1..L) from which every layer's top-1 equals the last layer's."""
    num_layers = predictions.shape[1]
    return np.array([next(layer for layer in range(1, num_layers + 1)
                          if all(row[k - 1] == row[-1] for k in range(layer, num_layers + 1)))
                     for row in predictions])


def test_a_pretrained_lm_as_it_is_matches_the_hf_model_token_by_token(files, tmp_path,
                                                                      monkeypatch):
    # Logits of 5 tokens at a time: the split's batches cross several chunks.
    monkeypatch.setattr(token_pass, "LOGIT_ELEMENTS", 5 * 28)
    cfg = compose_evaluate(["model=smollm2", f"model.name_or_path={files.llama}",
                            *data_overrides(files), "similarity.max_tokens=8"], tmp_path)
    evaluation = evaluate(cfg)
    ref = reference(files.llama, files)
    tokens = len(ref.targets)
    assert evaluation["pretrained"] == str(files.llama) and evaluation["unit"] == "tokens"
    assert evaluation["num_samples"] == tokens and evaluation["num_sequences"] == ref.sequences
    accuracy = (ref.predictions == ref.targets[:, None]).mean(0)
    np.testing.assert_allclose(evaluation["layer_accuracy"], accuracy, rtol=0, atol=1e-12)
    np.testing.assert_allclose(evaluation["layer_perplexity"], np.exp(ref.nll / tokens),
                               rtol=1e-5)
    saturation = brute_force_saturation(ref.predictions)
    assert evaluation["saturation"]["histogram"] == np.bincount(saturation, minlength=LAYERS + 1
                                                                )[1:].tolist()
    assert evaluation["saturation"]["early_fraction"] == pytest.approx((saturation < LAYERS).mean())
    assert 0 < evaluation["saturation"]["early_fraction"] < 1  # both kinds of token occur
    np.testing.assert_allclose(evaluation["similarity"]["cos"],
                               cos_similarity(ref.features, centering="samples"), atol=1e-6)
    # CKA on a sample of at most 8 tokens of each batch of 4 sequences.
    batches = math.ceil(ref.sequences / 4)
    assert evaluation["similarity_tokens"] == {"cos": tokens, "cka": 8 * batches,
                                               "max_tokens_per_batch": 8, "seed": 0}
    # Early exit as for classifiers, on the tokens' head statistics (the test split's from this
    # pass): depth L of the budget rule is full depth, read with one head call a token.
    early_exit = evaluation["early_exit"]
    assert early_exit["samples"]["test"] == tokens and early_exit["samples"]["val"] > 0
    assert early_exit["full_depth_accuracy"]["test"] == pytest.approx(accuracy[-1], abs=1e-12)
    assert "kv=recompute" in early_exit["kv_note"]
    at_full_depth = early_exit["rules"]["budget"]["test_curve"][-1]
    assert at_full_depth["mean_exit_layer"] == LAYERS and at_full_depth["mean_head_calls"] == 1
    assert at_full_depth["accuracy"] == pytest.approx(accuracy[-1], abs=1e-12)
    first_layer = early_exit["rules"]["budget"]["test_curve"][0]
    assert first_layer["accuracy"] == pytest.approx(accuracy[0], abs=1e-12)
    assert "early_exit_skipped" not in evaluation
    report = (tmp_path / "report.md").read_text()
    assert f"{tokens} next-token predictions" in report and "perplexity" in report
    for figure in ("layer_accuracy", "layer_perplexity", "similarity", "cos_to_last",
                   "saturation"):
        assert (tmp_path / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"({figure}.png)" in report
    assert not (tmp_path / "class_mean_pca.png").exists()  # no class means over a vocabulary


def test_a_trained_lm_checkpoint_gives_its_training_metrics_and_compares_to_itself(files,
                                                                                  tmp_path):
    lm = str(files.gpt2)
    results = train(compose_train(
        ["model=gpt2", f"model.name_or_path={lm}", *data_overrides(files), "data.batch_size=4",
         "loss=aligned", "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
         "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
         "logger=none"], tmp_path / "run"))
    checkpoint = results["checkpoint"]
    cfg = compose_evaluate([f"ckpt_path={checkpoint}", f"compare_to={checkpoint}",
                            "cos_centering=features", "similarity.max_tokens=16"],
                           tmp_path / "evaluate")
    evaluation = evaluate(cfg)
    # Lightning's per-layer test metrics of the same split, token by token.
    np.testing.assert_allclose(evaluation["layer_accuracy"], results["layer_accuracy"]["test"],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(evaluation["layer_perplexity"],
                               results["layer_metrics"]["perplexity"]["test"], rtol=1e-5)
    assert evaluation["names"]["loss"] == "aligned" and evaluation["final_norm"] is True
    cos = np.asarray(evaluation["similarity"]["cos"])
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-9)
    # Across the model and itself on the same token sample: the within-model CKA.
    cross = evaluation["cross_similarity"]
    np.testing.assert_allclose(cross["cka"], evaluation["similarity"]["cka"], atol=1e-9)
    np.testing.assert_allclose(np.diag(np.asarray(cross["cos"])), 1.0, atol=1e-9)
    assert (tmp_path / "evaluate" / "cross_similarity.png").is_file()


def test_max_sequences_is_a_seeded_subset_recorded_in_the_evaluation(files, tmp_path):
    cfg = compose_evaluate(["model=smollm2", f"model.name_or_path={files.llama}",
                            *data_overrides(files), "split=val", "max_sequences=3",
                            "early_exit.enabled=false", "similarity.measures=[cos,cka,svcca]"],
                           tmp_path)
    evaluation = evaluate(cfg)
    # The other measures read CKA's token sample (here every token: batches hold under 256).
    assert np.asarray(evaluation["similarity"]["svcca"]).shape == (LAYERS, LAYERS)
    assert evaluation["similarity_measures"]["svcca"]["samples"] == evaluation["num_samples"]
    assert json.loads((tmp_path / "evaluation.json").read_text()) == evaluation
    assert evaluation["split"] == "val" and len(evaluation["layer_perplexity"]) == LAYERS
    assert evaluation["num_sequences"] == 3 and evaluation["max_sequences"] == 3
    assert "early_exit_skipped" not in evaluation
    assert "a seeded subset of max_sequences=3" in (tmp_path / "report.md").read_text()
    loader = torch.utils.data.DataLoader(list(range(10)), batch_size=4)
    subsets = [list(sequence_subset(loader, 6)) for _ in range(2)]
    items = torch.cat(subsets[0]).tolist()
    assert subsets[0][0].tolist() == subsets[1][0].tolist()  # seeded
    assert len(items) == 6 and items == sorted(items) and len(subsets[0]) == 2  # batches of 4
    assert sequence_subset(loader, 10) is loader and sequence_subset(loader, None) is loader


def test_lm_settings_errors_name_the_setting():
    classifier = SimpleNamespace(next_token=False)
    cfg = SimpleNamespace(get=lambda key, default=None: {"max_sequences": 5}.get(key, default))
    with pytest.raises(ConfigError, match="max_sequences=5 caps the sequences of a causal-LM"):
        language_model_limits(classifier, cfg)
    with pytest.raises(ConfigError, match="similarity.max_tokens must be an integer >= 4"):
        TokenSampler(3)
    with pytest.raises(ConfigError, match="max_sequences"):
        sequence_subset(torch.utils.data.DataLoader([1, 2]), 0)

