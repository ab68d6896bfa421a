"""Damaged files, cut short or with one bit flipped at seeded random places: a real checkpoint
reads as one clear line (a ConfigError naming the file and what to do) or as exactly what was
written, and a real token cache is tokenised again (with a warning) or read as it was written;
never a traceback, never a silently different model or token ids."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from causal_lm_helpers import save_tokenizer, write_corpus
from conftest import OLD_CHECKPOINT

from aligned.config import ConfigError
from aligned.data import text
from aligned.data.text import TextDataModule
from aligned.training.checkpoints import read_checkpoint

CUTS = FLIPS = 60
HINT = "Use last.ckpt or another epoch's file."  # read_checkpoint's default: what to do


def damaged_copies(data: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    """(what was done: "cut ..." or "flip ...", the damaged bytes): CUTS cuts, then FLIPS
    one-bit flips."""
    rng = random.Random(seed)
    for _ in range(CUTS):
        length = rng.randrange(len(data))
        yield f"cut at {length} bytes", data[:length]
    for _ in range(FLIPS):
        position, bit = rng.randrange(len(data)), rng.randrange(8)
        changed = bytearray(data)
        changed[position] ^= 1 << bit
        yield f"flip of bit {bit} in byte {position}", bytes(changed)


def same(a, b) -> bool:
    """Equal values, tensors equal in dtype, shape and every element."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b, strict=True)))
    return type(a) is type(b) and a == b


def check_checkpoint_damage(original: Path, path: Path) -> Counter:
    """Every damaged copy of ``original``, written to ``path``, read with and without mmap."""
    expected = read_checkpoint(original)
    outcomes = Counter()
    for what, damaged in damaged_copies(original.read_bytes(), seed=0):
        path.write_bytes(damaged)
        for mmap in (False, True):
            try:
                loaded = read_checkpoint(path, mmap=mmap)
            except ConfigError as error:
                message = str(error)
                assert "\n" not in message and f"'{path}'" in message and HINT in message, what
                outcomes[f"{what.split()[0]}: clear error"] += 1
            else:
                assert same(loaded, expected), f"{what}: read as a different checkpoint"
                outcomes[f"{what.split()[0]}: as written"] += 1
    assert outcomes["cut: clear error"] == 2 * CUTS, outcomes  # no cut reads as a checkpoint
    return outcomes


def test_a_damaged_checkpoint_is_one_clear_line_or_reads_as_written(tmp_path):
    outcomes = check_checkpoint_damage(OLD_CHECKPOINT, tmp_path / "damaged.ckpt")
    # Most flips land in the weights, which torch.load alone would read without a word.
    assert outcomes["flip: clear error"] > FLIPS, outcomes


def test_a_damaged_checkpoint_of_a_run_trained_now_is_one_clear_line_or_reads_as_written(
        tiny_train_cfg, tmp_path, one_thread):
    """The same with this torch's own format: a tiny run trained here through train()."""
    from aligned.training.fit import train

    results = train(tiny_train_cfg())
    check_checkpoint_damage(Path(results["checkpoint"]), tmp_path / "damaged.ckpt")


@pytest.fixture
def cache_warnings(caplog, monkeypatch):
    """The text module's warnings (an earlier in-process Hydra run may have silenced it)."""
    logger = logging.getLogger("aligned.data.text")
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.WARNING, logger="aligned.data.text"):
        yield lambda: [r.getMessage() for r in caplog.records if r.name == "aligned.data.text"]


def token_data(tmp_path: Path) -> TextDataModule:
    """data=text on a small corpus, its token ids cached in tmp_path/cache."""
    if not (tmp_path / "corpus").is_dir():
        write_corpus(tmp_path / "corpus", documents=30)
        save_tokenizer(tmp_path / "tokenizer")
    data = TextDataModule(tokenizer=str(tmp_path / "tokenizer"), source=str(tmp_path / "corpus"),
                          cache_dir=str(tmp_path / "cache"), max_length=16)
    data.setup()
    return data


def same_tokens(a: TextDataModule, b: TextDataModule) -> bool:
    return all(torch.equal(a.splits[s].ids, b.splits[s].ids)
               and a.splits[s].lengths == b.splits[s].lengths
               and a.document_names[s] == b.document_names[s] for s in ("train", "val", "test"))


def test_a_damaged_token_cache_is_tokenised_again_or_reads_as_written(tmp_path, cache_warnings):
    first = token_data(tmp_path)
    (cache,) = (tmp_path / "cache").iterdir()
    written = cache.read_bytes()
    retokenised = 0
    for what, damaged in damaged_copies(written, seed=1):
        cache.write_bytes(damaged)
        warned = len(cache_warnings())
        again = token_data(tmp_path)
        assert same_tokens(again, first), f"{what}: other token ids"
        if len(cache_warnings()) > warned:
            retokenised += 1
            assert cache.read_bytes() == written, f"{what}: the cache was not written again"
    assert retokenised > CUTS, retokenised  # every cut, and the flips in ids, names and hash


def test_changed_token_ids_or_missing_keys_are_tokenised_again(tmp_path, cache_warnings,
                                                               monkeypatch):
    first = token_data(tmp_path)
    (cache,) = (tmp_path / "cache").iterdir()
    stored = torch.load(cache, weights_only=True)
    stored["splits"]["train"][0][3] += 1  # one id edited, the stored hash kept
    torch.save(stored, cache)
    assert same_tokens(token_data(tmp_path), first)
    assert "its content hash differs" in cache_warnings()[-1]
    torch.save({"format": text.CACHE_FORMAT}, cache)  # loadable, without its keys
    assert same_tokens(token_data(tmp_path), first)
    assert "unreadable (KeyError)" in cache_warnings()[-1]
    # Read from the cache written again: no tokenizer is loaded.
    monkeypatch.setattr(text, "load_tokenizer", lambda *_: pytest.fail("tokenised again"))
    assert same_tokens(token_data(tmp_path), first)
