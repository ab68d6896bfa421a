"""Tiny causal LMs, a word-level tokenizer and a text corpus, all written by the test itself
(nothing downloaded): what the causal-LM tests share."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ["the", "cat", "dog", "bird", "sat", "ran", "on", "a", "mat", "log", "tree", "and", "then",
         "it", "was", "red", "blue", "big", "small", "house", "river", "over", "under", "saw",
         "heard"]
SPECIALS = ("[PAD]", "[UNK]", "[EOS]")


def save_tokenizer(directory: Path):
    """A word-level tokenizer over ``WORDS`` (ids 0-2 are PAD, UNK, EOS), saved as a
    ``PreTrainedTokenizerFast`` directory that ``AutoTokenizer`` loads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]",
                                        unk_token="[UNK]", eos_token="[EOS]")
    tokenizer.save_pretrained(directory)
    return tokenizer


def vocab_size() -> int:
    return len(SPECIALS) + len(WORDS)


def tiny_config(family: str, layers: int = 3, positions: int = 64):
    from transformers import GPT2Config, LlamaConfig

    special = {"bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 0}
    if family == "gpt2":
        return GPT2Config(n_layer=layers, n_embd=32, n_head=4, n_positions=positions,
                          vocab_size=vocab_size(), **special)
    return LlamaConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size(),
                       max_position_embeddings=positions, **special)


def save_tiny_lm(directory: Path, family: str = "gpt2", layers: int = 3, seed: int = 0) -> Path:
    """A random tiny GPT-2 or LLaMA with the word tokenizer, in one save_pretrained directory
    (``model.name_or_path`` and ``data.tokenizer`` alike)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(tiny_config(family, layers)).save_pretrained(directory)
    save_tokenizer(directory)
    return directory


def write_corpus(directory: Path, documents: int = 24, seed: int = 0,
                 words: tuple[int, int] = (5, 40)) -> Path:
    """``documents`` .txt files of random sentences over ``WORDS`` in nested folders (as
    BBC News keeps topics), of ``words`` words each."""
    rng = random.Random(seed)
    for index in range(documents):
        path = directory / f"topic{index % 3}" / f"{index:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        count = rng.randint(*words)
        path.write_text(" ".join(rng.choice(WORDS) for _ in range(count)) + "\n")
    return directory


def random_prompt(length: int, seed: int = 0):
    """(1, length) ids of ``WORDS`` (no special token), seeded."""
    import torch

    return torch.randint(3, 28, (1, length), generator=torch.Generator().manual_seed(seed))


def full_depth_greedy(backbone, ids, count: int):
    """A plain greedy loop over the model's own logits, nothing cached: ``ids`` and the
    ``count`` new tokens after them."""
    import torch

    with torch.no_grad():
        for _ in range(count):
            next_id = backbone.model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], 1)
    return ids
