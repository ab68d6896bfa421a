"""A byte-level BPE tokenizer trained on a corpus's training split, for models built from scratch.

Hugging Face ``tokenizers``' BPE over bytes (GPT-2's pre-tokenisation), so any text encodes and
decodes losslessly; ``vocab_size`` counts the 256 bytes, the three special tokens and the
merges, so ``vocab_size=259`` is plain bytes. Training is deterministic: the same documents give
the same tokenizer, which is cached as ``tokenizer.json`` and saved in every checkpoint (the
data module's state), so a checkpoint decodes text on its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from aligned.config import ConfigError

log = logging.getLogger(__name__)

SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2: LlamaConfig's pad, bos and eos ids
BYTES = 256
SMALLEST = BYTES + len(SPECIALS)


def check_vocab_size(vocab_size: Any) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < SMALLEST:
        raise ConfigError(
            f"data.vocab_size must be a whole number >= {SMALLEST} (256 bytes + {len(SPECIALS)} "
            f"special tokens; {SMALLEST} is plain bytes) for a tokenizer trained on the data, "
            f"got {vocab_size!r}."
        )
    return vocab_size


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``texts``, as a transformers
    ``PreTrainedTokenizerFast`` (no BOS/EOS added when encoding; EOS ends packed documents)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=check_vocab_size(vocab_size), special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer)
    if core.get_vocab_size() < vocab_size:
        log.warning("tokenizer: the training text supports %d tokens of the %d asked for "
                    "(data.vocab_size); the model's extra rows stay unused.",
                    core.get_vocab_size(), vocab_size)
    return wrap(core.to_str())


def wrap(tokenizer_json: str) -> Any:
    """A ``PreTrainedTokenizerFast`` around a serialised tokenizer (``tokenizer.json``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    pad, bos, eos = SPECIALS
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json),
                                   pad_token=pad, bos_token=bos, eos_token=eos)


def serialised(tokenizer: Any) -> str:
    return tokenizer.backend_tokenizer.to_str()


def cached_tokenizer(texts: list[str], vocab_size: int, cache: Path | None) -> Any:
    """``train_tokenizer``, read from ``cache`` (a ``tokenizer.json``) when it is there."""
    if cache is not None and cache.is_file():
        try:
            return wrap(cache.read_text())
        except Exception as error:  # noqa: BLE001  (cut short, another version: train again)
            log.warning("tokenizer: the cached %s is unreadable (%s); training again.", cache,
                        type(error).__name__)
    tokenizer = train_tokenizer(texts, vocab_size)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_name(f".{cache.name}.{os.getpid()}.part")
            partial.write_text(serialised(tokenizer))
            partial.replace(cache)
        except OSError as error:  # the cache only saves time
            log.warning("tokenizer: could not write the cache %s (%s).", cache, error)
    return tokenizer


def checkpoint_tokenizer(checkpoint: dict[str, Any]) -> Any | None:
    """The trained tokenizer a checkpoint holds (the text data module's state), or None."""
    state = checkpoint.get("TextDataModule") or {}
    return wrap(state["tokenizer"]) if state.get("tokenizer") else None
