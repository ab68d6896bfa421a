"""Hugging Face BERT-style encoders for sequence classification behind the layer-wise surface."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
)
from transformers.masking_utils import create_bidirectional_mask

from aligned.config import ConfigError
from aligned.models.backbones.base import BlockState, LayerwiseBackbone
from aligned.models.backbones.compilation import compile_blocks

POOLINGS = ("cls", "mean")


class HFEncoder(LayerwiseBackbone):
    """A BERT-family ``*ForSequenceClassification`` model from the hub or a local directory.

    Per layer l (hidden_states[l], l = 1..L; index 0 is the embeddings and is not a layer) the
    token feature is [CLS] (``pooling=cls``, BERT's own pooler input) or the masked mean over
    tokens (``pooling=mean``, the sentence-transformers pooling); BERT's pooler (dense + tanh)
    follows either way, so the feature is what ``dropout -> classifier`` reads. BERT is
    post-LayerNorm: every hidden state is already normalised. The shared head is
    dropout -> classifier.

    Block by block (``begin``/``run_block``/``read``), the pieces are BERT's own: the embeddings,
    each ``BertLayer`` with the attention mask ``BertModel`` builds for its layers
    (``create_bidirectional_mask``: 4-D, or None without padding under SDPA), pooling + pooler.
    ``compile=True`` compiles each ``BertLayer`` with ``torch.compile`` (``compile_backend``).
    """

    inputs = "text"  # what it reads; train.py checks that model and data agree

    def __init__(
        self,
        name_or_path: str,
        num_classes: int,
        pooling: str = "cls",
        pretrained: bool = True,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling must be one of {POOLINGS}, got '{pooling}'.")
        self.pooling = pooling
        # from_pretrained returns eval mode; a fresh module trains (dropout on) like any other.
        self.model = _load(name_or_path, num_classes, pretrained).train()
        if not isinstance(self.model, BertForSequenceClassification):
            raise ConfigError(
                f"'{name_or_path}' builds a {type(self.model).__name__}; the layer-wise surface "
                "supports BERT-family encoders (BertForSequenceClassification: BERT, MiniLM, ...)."
            )
        if self.model.bert.pooler is None:
            raise ConfigError(f"'{name_or_path}' has no pooler; BERT's head needs one.")
        self.num_layers = self.model.config.num_hidden_layers
        if self.num_layers < 1:
            raise ConfigError(f"'{name_or_path}' has no layers (num_hidden_layers=0).")
        self.feature_dim = self.model.config.hidden_size
        self.num_classes = num_classes
        if compile:
            compile_blocks(self.model.bert.encoder.layer, compile_backend)

    def layer_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # HF's own forward (golden-tested against its logits); the block path must equal it.
        self.check_tokens(inputs)
        inputs = {key: indices(value) if key in ("input_ids", "token_type_ids") else value
                  for key, value in inputs.items()}  # a new dict: the caller's stays as it is
        hidden = self.model.bert(**inputs, output_hidden_states=True).hidden_states[1:]
        return self._pool(torch.stack(hidden), inputs["attention_mask"])  # (L, B, D)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[CLS] or masked mean of tokens (..., B, T, D), then BERT's pooler -> (..., B, D)."""
        if self.pooling == "cls":
            tokens = hidden[..., 0, :]
        else:
            weights = mask.to(hidden.dtype)[..., None]  # (B, T, 1)
            tokens = (hidden * weights).sum(-2) / weights.sum(-2).clamp(min=1.0)
        pooler = self.model.bert.pooler
        return pooler.activation(pooler.dense(tokens))

    def begin(self, inputs: dict[str, torch.Tensor]) -> BlockState:
        self.check_tokens(inputs)
        bert = self.model.bert
        embedded = bert.embeddings(
            input_ids=indices(inputs["input_ids"]),
            token_type_ids=indices(inputs.get("token_type_ids")),
            position_ids=inputs.get("position_ids"),
        )  # (B, T, D)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(embedded.shape[:2], dtype=torch.long, device=embedded.device)
        # The mask BertModel.forward hands its layers; one row per sample, so it subsets.
        block_mask = create_bidirectional_mask(
            config=bert.config, inputs_embeds=embedded, attention_mask=mask
        )
        return BlockState(embedded, {"attention_mask": mask, "block_mask": block_mask})

    def check_tokens(self, inputs: Any) -> None:
        """One clear error for inputs the embeddings would reject from deep inside (or, for an
        id past the vocabulary, with a device-side assert on a GPU)."""
        if not isinstance(inputs, Mapping) or not isinstance(inputs.get("input_ids"), torch.Tensor):
            raise ConfigError(
                "Expected tokenised text: a dict with input_ids (B, T) and attention_mask, as the "
                "tokenizer returns with return_tensors='pt' (or a batch of the data module's "
                f"loader); got a {type(inputs).__name__}."
            )
        config = self.model.config
        ids = inputs["input_ids"]
        tokenise = "tokenise with the model's own tokenizer (return_tensors='pt')"
        if ids.ndim != 2:
            raise ConfigError(f"Expected input_ids of shape (B, T), got {tuple(ids.shape)}; "
                              f"{tokenise}, which batches even one text.")
        for key, limit, size in (("input_ids", config.vocab_size, "vocabulary size"),
                                 ("token_type_ids", config.type_vocab_size, "type_vocab_size")):
            values = inputs.get(key)
            if values is None:
                continue
            if values.shape != ids.shape:
                raise ConfigError(f"{key} has shape {tuple(values.shape)} but input_ids "
                                  f"{tuple(ids.shape)}; they must match.")
            integer = not (values.is_floating_point() or values.is_complex()
                           or values.dtype == torch.bool)
            if not integer:
                raise ConfigError(f"{key} must be integer ids in [0, {limit}) (the model's {size} "
                                  f"is {limit}), got {values.dtype}; {tokenise}.")
            if ((values < 0) | (values >= limit)).any():  # one host sync
                raise ConfigError(
                    f"{key} must be ids in [0, {limit}) (the model's {size} is {limit}); "
                    f"got ids from {int(values.min())} to {int(values.max())}. The text was "
                    f"tokenised for another model: {tokenise}."
                )
        mask = inputs.get("attention_mask")
        if mask is not None and mask.shape != ids.shape:
            raise ConfigError(f"attention_mask has shape {tuple(mask.shape)} but input_ids "
                              f"{tuple(ids.shape)}; they must match.")
        if ids.shape[0] and not ids.shape[1]:
            raise ConfigError(f"input_ids has no tokens (shape {tuple(ids.shape)}); every "
                              "sequence holds at least the tokenizer's [CLS] and [SEP].")
        positions = config.max_position_embeddings
        absolute = getattr(config, "position_embedding_type", "absolute") == "absolute"
        if absolute and ids.shape[1] > positions:
            raise ConfigError(
                f"Sequences of {ids.shape[1]} tokens are longer than the model's "
                f"max_position_embeddings={positions}; truncate them (data.max_length <= "
                f"{positions}, or truncation=True, max_length={positions} in the tokenizer)."
            )

    def merge_states(self, states: list[BlockState]) -> BlockState:
        """Batches padded to different lengths: pad every state to the longest (masked), and
        rebuild the blocks' mask from the padded attention mask."""
        length = max(state.tokens.shape[1] for state in states)
        tokens = torch.cat([pad_tokens(state.tokens, length) for state in states])
        mask = torch.cat([pad_tokens(state.extras["attention_mask"], length) for state in states])
        block_mask = create_bidirectional_mask(
            config=self.model.bert.config, inputs_embeds=tokens, attention_mask=mask
        )
        return BlockState(tokens, {"attention_mask": mask, "block_mask": block_mask})

    def run_block(self, layer: int, state: BlockState) -> BlockState:
        block = self.model.bert.encoder.layer[layer - 1]
        return BlockState(block(state.tokens, state.extras["block_mask"]), state.extras)

    def read(self, state: BlockState) -> torch.Tensor:
        return self._pool(state.tokens, state.extras["attention_mask"])  # (B, D)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(self.model.dropout(features))

    def head_parameters(self) -> int:
        return sum(p.numel() for p in self.model.classifier.parameters())


def indices(values: torch.Tensor | None) -> torch.Tensor | None:
    """Integer ids as an embedding takes them: int32 or int64 (uint8 or int16 ids are cast)."""
    if values is None or values.dtype in (torch.int32, torch.int64):
        return values
    return values.long()


def pad_tokens(values: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dim 1 (tokens) of (B, T, ...) to ``length``; padding is masked out."""
    missing = length - values.shape[1]
    if missing == 0:
        return values
    padding = values.new_zeros(values.shape[0], missing, *values.shape[2:])
    return torch.cat([values, padding], dim=1)


def _load(name_or_path: str, num_classes: int, pretrained: bool) -> torch.nn.Module:
    local = Path(name_or_path).expanduser()
    if (name_or_path.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise ConfigError(
            f"Model directory '{name_or_path}' does not exist. For a checkpoint trained on another "
            "machine, pass model.name_or_path=<its directory here, or hub id> to evaluate.py."
        )
    source = str(local) if local.is_dir() else name_or_path
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the new classifier's "newly initialized" notice
    try:
        if pretrained:
            # A saved classifier for another label count (e.g. an MNLI model on RTE) starts
            # anew, as timm's does; the encoder's weights load as saved.
            return AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=num_classes, ignore_mismatched_sizes=True
            )
        config = AutoConfig.from_pretrained(source, num_labels=num_classes)
        return AutoModelForSequenceClassification.from_config(config)
    except OSError as error:
        raise ConfigError(
            f"Could not load '{name_or_path}' ({str(error).splitlines()[0]}). Without internet "
            "access, save the model with save_pretrained() elsewhere and pass its local directory."
        ) from None
    finally:
        transformers.logging.set_verbosity(previous)
