"""experiment=lm_bbc on tiny stand-ins: a LLaMA built from a config (model=llama), a byte-level
BPE trained on the train split of .txt files the test writes, the checkpoint that keeps the
tokenizer and exports as a standard LlamaForCausalLM, and the sampled aligned loss resumed after
a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from causal_lm_helpers import write_corpus
from conftest import ROOT, compose_train
from entry_points import completed_epoch, env
from tiny_models import TINY_LLAMA

from aligned.config import ConfigError
from aligned.data.text import TextDataModule
from aligned.data.trained_tokenizer import (
    checkpoint_tokenizer,
    serialised,
    train_tokenizer,
)
from aligned.models.backbones.hf_decoder import HFDecoder
from aligned.training.checkpoints import load_system, read_checkpoint
from aligned.training.fit import train

BRIEFLY = ["trainer.max_epochs=1", "+trainer.limit_train_batches=3",
           "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2",
           "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
           "logger=none"]


def mark(index: int) -> str:
    """Document ``index``'s own word, letters only (byte-level BPE splits digits off)."""
    return f"zq{chr(97 + index // 26)}{chr(97 + index % 26)}x"


def write_marked_corpus(root: Path, documents: int = 30) -> Path:
    """Random sentences, each document with a word of its own repeated (``mark``), so a merge
    shows which documents a tokenizer was trained on."""
    write_corpus(root, documents)
    for index, path in enumerate(sorted(root.rglob("*.txt"))):
        path.write_text(path.read_text().strip() + f" {mark(index)}" * 20 + "\n")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_marked_corpus(tmp_path_factory.mktemp("lm_from_scratch") / "corpus")


def lm_overrides(corpus: Path, cache: Path, *extra: str) -> list[str]:
    return ["experiment=lm_bbc", f"data.source={corpus}", f"data.cache_dir={cache}",
            "data.vocab_size=400", "data.max_length=32", "data.batch_size=4",
            "data.eval_batch_size=4", "+data.val_fraction=0.2", "+data.test_fraction=0.2",
            *TINY_LLAMA, *extra]


def text_module(corpus: Path, cache: Path | None, vocab_size: int = 400) -> TextDataModule:
    return TextDataModule(tokenizer=None, source=str(corpus), max_length=32, packing=True,
                          vocab_size=vocab_size, val_fraction=0.2, test_fraction=0.2,
                          cache_dir=str(cache) if cache else None)


def test_the_tokenizer_is_trained_on_the_train_split_only_deterministically(corpus, tmp_path):
    data = text_module(corpus, tmp_path / "cache")
    data.setup()
    tokenizer = data.trained_tokenizer
    # This tiny text has fewer than 400 - 259 merges to make (a warning says so): all are made.
    assert 259 < len(tokenizer) <= 400
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    order = sorted(str(p.relative_to(corpus)) for p in corpus.rglob("*.txt"))
    marks = {split: {mark(order.index(name)) for name in data.document_names[split]}
             for split in ("train", "test")}
    assert marks["train"] and marks["test"]
    # A word of the training documents is one merged token; one of the test documents is not.
    assert all(len(tokenizer.encode(f" {word}")) == 1 for word in marks["train"])
    assert all(len(tokenizer.encode(f" {word}")) > 1 for word in marks["test"])
    # The same tokenizer as one trained on the train split's texts directly, every time.
    train_texts = [(corpus / name).read_text() for name in data.document_names["train"]]
    assert serialised(tokenizer) == serialised(train_tokenizer(train_texts, 400))
    # Lossless: byte-level BPE decodes what it encoded.
    text = (corpus / data.document_names["test"][0]).read_text()
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_the_tokenizer_and_the_ids_are_cached_and_a_cached_run_trains_nothing(corpus, tmp_path,
                                                                               monkeypatch):
    first = text_module(corpus, tmp_path / "cache")
    first.setup()
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".pt"]
    import aligned.data.trained_tokenizer as trained

    monkeypatch.setattr(trained, "train_tokenizer", lambda *a: pytest.fail("trained again"))
    again = text_module(corpus, tmp_path / "cache")
    again.setup()
    assert serialised(again.trained_tokenizer) == serialised(first.trained_tokenizer)
    assert torch.equal(again.splits["train"].ids, first.splits["train"].ids)
    # Plain bytes: 259 tokens, every byte its own.
    monkeypatch.undo()
    plain = text_module(corpus, None, vocab_size=259)
    plain.setup()
    assert len(plain.trained_tokenizer) == 259
    assert plain.splits["train"].tokens() > first.splits["train"].tokens()


def test_a_vocabulary_below_the_bytes_is_one_clear_error(corpus):
    with pytest.raises(ConfigError, match=r"data.vocab_size must be a whole number >= 259"):
        text_module(corpus, None, vocab_size=100)


@pytest.mark.parametrize("settings, message", [
    ({"name_or_path": "x", "architecture": {"model_type": "llama"}}, "not both"),
    ({}, "not neither"),
    ({"architecture": {"model_type": "bert"}}, "model_type must be llama or gpt2"),
    ({"architecture": {"model_type": "llama", "hidden_size": 30, "num_attention_heads": 4}},
     "is not a valid llama config"),
])
def test_a_bad_architecture_is_one_clear_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        HFDecoder(**settings)


def test_a_run_keeps_its_tokenizer_and_exports_a_standard_llama(corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from aligned.export import export

    cfg = compose_train(lm_overrides(corpus, tmp_path / "cache", "loss=aligned", *BRIEFLY),
                        tmp_path / "run")
    results = train(cfg)
    assert results["num_layers"] == 3
    checkpoint = read_checkpoint(results["checkpoint"])
    tokenizer = checkpoint_tokenizer(checkpoint)
    assert tokenizer is not None and 259 < len(tokenizer) <= 400
    system = load_system(checkpoint).eval()

    record = export(results["checkpoint"], tmp_path / "export")
    assert record["format"] == "transformers" and record["shared_head"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert isinstance(model, LlamaForCausalLM) and model.config.num_hidden_layers == 3
    exported_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    ids = exported_tokenizer("the cat sat on a mat", return_tensors="pt")
    assert ids["input_ids"].tolist() == tokenizer("the cat sat on a mat",
                                                  return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():  # the export's logits are the checkpoint's last layer's
        torch.testing.assert_close(model(**ids).logits, system(ids)[-1])
        generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, ids["input_ids"].shape[1] + 5)
    assert isinstance(exported_tokenizer.decode(generated[0]), str)


@pytest.mark.slow
def test_a_killed_run_with_sampled_layers_resumes_to_the_same_weights(corpus, tmp_path):
    """The draw of loss.layers_per_step is a function of (seed, step): the resumed run reads
    the layers the uninterrupted run read, so both end with the same weights."""
    overrides = lm_overrides(corpus, tmp_path / "cache", "loss.layers_per_step=1",
                             "trainer.max_epochs=6", "+trainer.deterministic=true",
                             "+trainer.enable_progress_bar=false", "logger=none")

    def run(*extra: str, wait: bool = True):
        command = [sys.executable, "train.py", *overrides, *extra]
        if wait:
            return subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True,
                                  timeout=300)
        return subprocess.Popen(command, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    full = run(f"hydra.run.dir={tmp_path}/full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = tmp_path / "killed"
    process = run(f"hydra.run.dir={killed}", wait=False)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while completed_epoch(last) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed / "results.json").exists(), "the run finished before it was killed"
    resumed = run(f"resume={killed}", f"hydra.run.dir={tmp_path}/again")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights = [torch.load(path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for path in (tmp_path / "full", killed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    results = [json.loads((path / "results.json").read_text())
               for path in (tmp_path / "full", killed)]
    assert results[0]["layer_accuracy"] == results[1]["layer_accuracy"]


@pytest.mark.slow
def test_resuming_on_other_text_is_refused_by_the_tokenizer_the_checkpoint_keeps(corpus, tmp_path):
    data = text_module(corpus, None)
    data.setup()
    data.load_state_dict(data.state_dict())  # the same text: the same tokenizer, accepted
    other = write_corpus(tmp_path / "other", 30, seed=5)
    changed = text_module(other, None)
    changed.setup()
    with pytest.raises(ConfigError, match="differs from the one the checkpoint was trained"):
        changed.load_state_dict(data.state_dict())
