"""Hugging Face causal LMs (GPT-2 and LLaMA families) behind the layer-wise surface.

Features are per token: ``layer_features`` gives (L, B, T, D) and the shared head maps
(..., D) to next-token logits (..., V). The per-family differences (where the blocks, the final
norm and the LM head live; learned positions or rotary embeddings) sit in one dispatch,
``_parts``, as tuned-lens does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Cache,
    DynamicCache,
    GPT2LMHeadModel,
    LlamaForCausalLM,
)
from transformers.masking_utils import create_causal_mask

from aligned.config import ConfigError
from aligned.hub import gguf_location, hub_reachable, offline_mode
from aligned.models.backbones.base import BlockState, LayerwiseBackbone
from aligned.models.backbones.compilation import compile_blocks
from aligned.models.backbones.hf_encoder import indices, pad_tokens

SUPPORTED = "GPT-2 (GPT2LMHeadModel) and LLaMA-family (LlamaForCausalLM: LLaMA, SmolLM2, ...)"


@dataclass(frozen=True)
class DecoderParts:
    """Where one family keeps the pieces the block-by-block path calls."""

    embed_tokens: nn.Embedding
    blocks: nn.ModuleList
    final_norm: nn.Module
    lm_head: nn.Linear
    position_embedding: nn.Embedding | None  # GPT-2's learned positions, added once
    embed_dropout: nn.Module | None
    rotary: nn.Module | None  # LLaMA's rotary embedding, handed to every block


def _parts(model: nn.Module) -> DecoderParts:
    if isinstance(model, GPT2LMHeadModel):
        body = model.transformer
        return DecoderParts(body.wte, body.h, body.ln_f, model.lm_head, body.wpe, body.drop, None)
    if isinstance(model, LlamaForCausalLM):
        body = model.model
        return DecoderParts(body.embed_tokens, body.layers, body.norm, model.lm_head, None, None,
                            body.rotary_emb)
    raise ConfigError(f"The model is a {type(model).__name__}; the layer-wise surface supports "
                      f"{SUPPORTED}.")


class HFDecoder(LayerwiseBackbone):
    """A decoder-only ``*ForCausalLM`` from the hub, a local directory, or a ``.gguf`` file; or
    built from scratch from ``architecture``, a Hugging Face config's keys (``model=llama``).

    The feature of layer l (1..L) is block l's output at every token; the shared head is the
    model's final norm then its LM head (``final_norm=true``, the logit lens), so on layer L it
    gives the model's own logits. ``final_norm=false`` is the authors' GPT-2 code: the LM head
    alone on the raw hidden layers, and on layer L the normed output HF's ``hidden_states[L]``
    holds (so layer L still gives the model's logits).

    Block by block, the pieces are the model's own: its embeddings (GPT-2 adds its learned
    positions), each decoder block called as the model's forward calls it, with the causal +
    padding mask from ``create_causal_mask`` and, for LLaMA, the rotary ``position_embeddings``.
    Position ids count the real tokens of each row (``attention_mask.cumsum - 1``, as HF's
    ``generate`` does), so right and left padding give the same features as unpadded rows.
    """

    inputs = "causal_text"  # token sequences with next-token labels; train.py pairs data=text
    task = "causal_lm"  # the system predicts the next token at every position

    def __init__(self, name_or_path: str | None = None, final_norm: bool = True,
                 pretrained: bool = True, compile: bool = False, compile_backend: str = "inductor",
                 architecture: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.final_norm = final_norm
        if (name_or_path is None) == (architecture is None):
            raise ConfigError(
                "Give the decoder either model.name_or_path (a hub id, a directory or a .gguf "
                "file) or model.architecture (a Hugging Face config to build from scratch, e.g. "
                "{model_type: llama, num_hidden_layers: 8, ...}), not "
                f"{'both' if architecture is not None else 'neither'}."
            )
        # from_pretrained returns eval mode; a fresh module trains (dropout on) like any other.
        self.model = (_load(name_or_path, pretrained) if architecture is None
                      else from_architecture(architecture)).train()
        self.parts = _parts(self.model)
        self.num_layers = len(self.parts.blocks)
        if self.num_layers < 1:
            raise ConfigError(f"'{name_or_path}' has no layers (num_hidden_layers=0).")
        self.feature_dim = self.model.config.hidden_size
        self.num_classes = self.parts.lm_head.out_features  # the vocabulary
        if compile:  # each decoder layer, with torch.compile (model.compile=true)
            compile_blocks(self.parts.blocks, compile_backend)

    def begin(self, inputs: Mapping[str, torch.Tensor]) -> BlockState:
        self.check_tokens(inputs)
        ids = indices(inputs["input_ids"])
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        positions = inputs.get("position_ids")
        if positions is None:
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        embedded = self.embed(ids, positions)
        return BlockState(embedded, self._extras(embedded, mask, positions))

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The tokens' input to block 1, (B, T) ids at (B, T) position ids -> (B, T, D)."""
        parts = self.parts
        embedded = parts.embed_tokens(ids)  # (B, T, D)
        if parts.position_embedding is not None:
            embedded = embedded + parts.position_embedding(positions)
        if parts.embed_dropout is not None:
            embedded = parts.embed_dropout(embedded)
        return embedded

    def _extras(self, embedded: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
                ) -> dict[str, torch.Tensor | None]:
        """What every block reads, one row per sample (so that a state subsets by rows)."""
        block_mask = self._block_mask(embedded, mask, positions)
        extras = {"attention_mask": mask, "position_ids": positions, "block_mask": block_mask}
        if self.parts.rotary is not None:
            cos, sin = self.parts.rotary(embedded, positions)  # (B, T, head_dim) each
            extras |= {"rotary_cos": cos, "rotary_sin": sin}
        return extras

    def run_block(self, layer: int, state: BlockState) -> BlockState:
        block = self.parts.blocks[layer - 1]
        extras = state.extras
        rotary = {}
        if "rotary_cos" in extras:
            rotary = {"position_embeddings": (extras["rotary_cos"], extras["rotary_sin"])}
        tokens = block(state.tokens, attention_mask=extras["block_mask"],
                       position_ids=extras["position_ids"], **rotary)  # (B, T, D)
        if layer == self.num_layers and not self.final_norm:
            tokens = self.parts.final_norm(tokens)  # HF's hidden_states[L]; the head reads it
        return BlockState(tokens, extras)

    def _block_mask(self, embedded: torch.Tensor, mask: torch.Tensor | None,
                    positions: torch.Tensor, cache: Cache | None = None, layer: int | None = None
                    ) -> torch.Tensor | None:
        """The causal + padding mask the blocks read (None: sdpa's own causal mask suffices).
        With a ``cache``, the queries are the new tokens after that block's cached ones."""
        # The 4th argument is the cache (renamed from past_key_values in transformers 5.x).
        block_mask = create_causal_mask(self.model.config, embedded, mask, cache, positions,
                                        layer_idx=None if layer is None else layer - 1)
        if block_mask is not None and not isinstance(block_mask, torch.Tensor):
            raise ConfigError(
                f"attn_implementation={self.model.config._attn_implementation} builds a "
                f"{type(block_mask).__name__}; the block-by-block path needs eager or sdpa."
            )
        return block_mask

    def new_cache(self) -> DynamicCache:
        """An empty key/value cache for ``extend``: one entry per block, each its own length."""
        return DynamicCache(config=self.model.config)

    def rotary_embeddings(self, tokens: torch.Tensor, positions: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """LLaMA's rotary (cos, sin) at ``positions`` (B, k), (B, k, head_dim) each, in
        ``tokens``' dtype; None for GPT-2 (learned positions, added by ``embed``)."""
        return None if self.parts.rotary is None else self.parts.rotary(tokens, positions)

    def extend(self, layer: int, tokens: torch.Tensor, cache: DynamicCache,
               attention_mask: torch.Tensor | None, positions: torch.Tensor,
               rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Block ``layer`` on new tokens (B, k, D) at position ids ``positions`` (B, k), which
        attend to the keys and values ``cache`` holds for that block and to each other
        (causally); their own keys and values are appended to the cache. ``attention_mask``
        (B, cached + k) marks the real tokens of every column; None: all are. ``rotary``:
        ``rotary_embeddings`` of ``positions`` when the caller keeps them (they are the same
        for every block). Returns the block's output (B, k, D), final-normed at layer L as
        ``run_block`` does."""
        block = self.parts.blocks[layer - 1]
        if rotary is None:
            rotary = self.rotary_embeddings(tokens, positions)
        extra = {} if rotary is None else {"position_embeddings": rotary}
        mask = self._block_mask(tokens, attention_mask, positions, cache, layer)
        tokens = block(tokens, attention_mask=mask, position_ids=positions, cache=cache,
                       use_cache=True, **extra)  # (B, k, D)
        if layer == self.num_layers and not self.final_norm:
            tokens = self.parts.final_norm(tokens)
        return tokens

    def read(self, state: BlockState) -> torch.Tensor:
        return state.tokens  # (B, T, D): every token is a prediction

    def merge_states(self, states: list[BlockState]) -> BlockState:
        """Batches padded to different lengths: right-pad every state to the longest (masked)
        and rebuild what the blocks read from the padded mask and positions."""
        length = max(state.tokens.shape[1] for state in states)

        def merged(key: str) -> torch.Tensor:
            return torch.cat([pad_tokens(state.extras[key], length) for state in states])

        tokens = torch.cat([pad_tokens(state.tokens, length) for state in states])
        return BlockState(tokens, self._extras(tokens, merged("attention_mask"),
                                               merged("position_ids")))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        if self.final_norm:
            features = self.parts.final_norm(features)
        return self.parts.lm_head(features)  # (..., V)

    def head_parameters(self) -> int:
        modules = [self.parts.lm_head, *([self.parts.final_norm] if self.final_norm else [])]
        return sum(p.numel() for module in modules for p in module.parameters())

    def check_tokens(self, inputs: Any) -> None:
        """One clear error for inputs the embeddings would reject from deep inside (or, for an
        id past the vocabulary, with a device-side assert on a GPU)."""
        if not isinstance(inputs, Mapping) or not isinstance(inputs.get("input_ids"), torch.Tensor):
            raise ConfigError(
                "Expected tokenised text: a dict with input_ids (B, T) and attention_mask, as the "
                "tokenizer returns with return_tensors='pt' (or a batch of data=text's loader); "
                f"got a {type(inputs).__name__}."
            )
        ids = inputs["input_ids"]
        tokenise = "tokenise with the model's own tokenizer (return_tensors='pt')"
        if ids.ndim != 2 or not ids.shape[1]:
            raise ConfigError(f"Expected input_ids of shape (B, T) with T >= 1, got "
                              f"{tuple(ids.shape)}; {tokenise}.")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ConfigError(f"input_ids must be integer token ids, got {ids.dtype}; {tokenise}.")
        vocabulary = self.parts.embed_tokens.num_embeddings
        if ids.numel() and ((ids < 0) | (ids >= vocabulary)).any():  # one host sync
            raise ConfigError(
                f"input_ids must be ids in [0, {vocabulary}) (the model's vocabulary); got ids "
                f"from {int(ids.min())} to {int(ids.max())}. The text was tokenised for another "
                f"model: {tokenise} (data.tokenizer follows model.name_or_path)."
            )
        for key in ("attention_mask", "position_ids"):
            values = inputs.get(key)
            if values is not None and values.shape != ids.shape:
                raise ConfigError(f"{key} has shape {tuple(values.shape)} but input_ids "
                                  f"{tuple(ids.shape)}; they must match.")
        if self.parts.position_embedding is not None:  # learned positions: a hard limit
            limit = self.parts.position_embedding.num_embeddings
            if ids.shape[1] > limit:
                raise ConfigError(
                    f"Sequences of {ids.shape[1]} tokens are longer than the model's "
                    f"{limit} positions; set data.max_length <= {limit}."
                )


def from_architecture(architecture: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised causal LM from a Hugging Face config's keys (``model_type`` picks
    the family: llama, gpt2), seeded by the run's seed as every other module."""
    settings = dict(architecture)
    model_type = settings.pop("model_type", None)
    if model_type not in ("llama", "gpt2"):
        raise ConfigError(f"model.architecture.model_type must be llama or gpt2 (the families "
                          f"the layer-wise surface supports), got {model_type!r}.")
    try:
        config = AutoConfig.for_model(model_type, **settings)
        return AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, StrictDataclassError) as error:
        reason = error.__cause__ or error  # the config's validators wrap their ValueError
        raise ConfigError(f"model.architecture is not a valid {model_type} config "
                          f"({str(reason).splitlines()[0][:300]}).") from None


def _load(name_or_path: str, pretrained: bool) -> nn.Module:
    source, gguf = gguf_location(str(name_or_path))
    local = Path(source).expanduser()
    if (source.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise ConfigError(
            f"Model directory '{name_or_path}' does not exist. For a checkpoint trained on another "
            "machine, pass model.name_or_path=<its directory here, or hub id> to evaluate.py."
        )
    # Without a network the hub client retries for ~30 s; ask only its cache then.
    offline = not local.is_dir() and (offline_mode() or not hub_reachable())
    source = str(local) if local.is_dir() else source
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        if pretrained:
            return AutoModelForCausalLM.from_pretrained(source, local_files_only=offline, **gguf)
        config = AutoConfig.from_pretrained(source, local_files_only=offline, **gguf)
        return AutoModelForCausalLM.from_config(config)
    except ImportError as error:  # a .gguf file needs the gguf package (and accelerate)
        raise ConfigError(f"Loading '{name_or_path}' needs another package ({error}): "
                          "pip install gguf accelerate") from None
    except OSError as error:
        raise ConfigError(
            f"Could not load '{name_or_path}' ({str(error).splitlines()[0]}). Without internet "
            "access, save the model with save_pretrained() elsewhere and pass its local "
            "directory (model.name_or_path=<dir>)."
        ) from None
    except ValueError as error:  # a config of a model type that has no causal-LM class
        raise ConfigError(f"'{name_or_path}' is not a causal LM transformers can build "
                          f"({str(error).splitlines()[0]}); the layer-wise surface supports "
                          f"{SUPPORTED}.") from None
    finally:
        transformers.logging.set_verbosity(previous)
