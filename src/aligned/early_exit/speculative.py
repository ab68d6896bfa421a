"""Lossless self-speculative greedy decoding with the shared head (LayerSkip, Elhoushi et al.
2024; Hugging Face's ``generate(assistant_early_exit=E)``): draft tokens with the first E
layers and the shared head, then verify them with the rest of the model in one pass; the output
is exactly full-depth greedy decoding, and the speed comes from how often layer E's top-1
already agrees with layer L's (what aligned training is for, docs/method.md, "Early exit").

One round, from a cache that holds every layer's keys and values of the accepted tokens but the
last one (``current``, whose next token is not yet known):

1. Draft: ``current`` and then each drafted token runs through blocks 1..E (into the cache);
   the shared head at layer E drafts the next token, d times.
2. Verify: the last draft also runs through blocks 1..E, and the d + 1 positions' layer-E
   states run together through blocks E+1..L, which read the cache's keys and values of the
   accepted tokens and of these positions: layer L's top-1 at each position is the full
   model's next token there. Blocks 1..E are not computed again (Hugging Face's version
   recomputes them).
3. Accept the drafts up to the first that differs from layer L, plus layer L's own token after
   them (a correction, or a bonus token when all d agree): 1 to d + 1 new tokens a round. Every
   layer's cache keeps the positions up to the last accepted draft; the rejected ones are cut.

The full model computes every accepted position's states from the accepted tokens alone, so
the cache and the tokens equal full-depth decoding's (up to the round-off of running d + 1
positions together: float32 argmax ties can differ; float64 agrees exactly, as tested).

Batch 1 only: rows of a batch accept different numbers of tokens, so their caches would need
per-row lengths.

    decoder = SpeculativeDecoder(backbone, exit_layer=2, draft_tokens=4)   # an HFDecoder
    result = decoder.generate(tokenizer("The", return_tensors="pt")["input_ids"], 20)
    result.tokens, result.accepted_per_verification
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from aligned.config import ConfigError
from aligned.early_exit.decoding import LogitsAt, check_new_tokens, system_logits
from aligned.early_exit.input_checks import check_finite
from aligned.models.backbones.base import BlockState
from aligned.models.backbones.hf_decoder import HFDecoder


@dataclass
class Speculated:
    """The generated tokens (1, N) and how the rounds went."""

    tokens: torch.Tensor
    verifications: int  # rounds: verification passes through blocks E+1..L
    drafted: int  # tokens drafted at layer E
    accepted: int  # drafts layer L agreed with

    @property
    def accepted_per_verification(self) -> float:
        """Drafts accepted per verification (0..d); each round also adds layer L's token."""
        return self.accepted / self.verifications if self.verifications else 0.0

    @property
    def tokens_per_verification(self) -> float:
        return self.tokens.shape[1] / self.verifications if self.verifications else 0.0


@dataclass
class DecodingState:
    """A sequence being decoded: every layer's cache of its accepted tokens but the last
    (``current``), and the tokens generated so far."""

    cache: DynamicCache
    length: int  # positions in the cache, the same at every layer
    current: int  # the last accepted token, not yet in the cache
    generated: list[int] = field(default_factory=list)


class SpeculativeDecoder:
    """Self-speculative greedy decoding of an ``HFDecoder``: drafts of ``draft_tokens`` tokens
    at ``exit_layer`` (1 <= E < L), verified by blocks E+1..L.

    ``logits_at(layer, features)`` gives a layer's next-token logits; by default the shared
    head. ``from_system`` takes a trained system's (per-layer heads too).
    """

    def __init__(self, backbone: HFDecoder, exit_layer: int, draft_tokens: int,
                 logits_at: LogitsAt | None = None) -> None:
        if not isinstance(backbone, HFDecoder):
            raise ConfigError(f"Self-speculative decoding needs a causal LM (model=gpt2, "
                              f"model=llama, model=smollm2); got a {type(backbone).__name__}.")
        layers = backbone.num_layers
        if isinstance(exit_layer, bool) or not isinstance(exit_layer, int) or not (
                1 <= exit_layer < layers):
            raise ConfigError(f"exit_layer must be a layer in 1..{layers - 1} (the draft's "
                              f"depth, below the model's {layers}), got {exit_layer!r}.")
        if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or (
                draft_tokens < 1):
            raise ConfigError(f"draft_tokens must be a whole number >= 1, got {draft_tokens!r}.")
        self.backbone = backbone.eval()
        self.exit_layer = exit_layer
        self.draft_tokens = draft_tokens
        self.logits_at = logits_at or (lambda layer, features: backbone.head(features))

    @classmethod
    def from_system(cls, system, exit_layer: int, draft_tokens: int) -> SpeculativeDecoder:
        """A trained ``LayerwiseClassifier`` over an ``HFDecoder`` (its objective's heads)."""
        return cls(system.eval().backbone, exit_layer, draft_tokens, system_logits(system))

    # -- the public calls --------------------------------------------------------------------

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int,
                 attention_mask: torch.Tensor | None = None) -> Speculated:
        """``max_new_tokens`` greedy tokens after the prompt (1, P): full-depth greedy
        decoding's tokens. Left padding in ``attention_mask`` is dropped."""
        check_new_tokens(max_new_tokens)
        with torch.inference_mode():
            state = self.begin(self._prompt(input_ids, attention_mask), max_new_tokens)
            verifications = drafted = accepted = 0
            while len(state.generated) < max_new_tokens:
                # A round adds at most d + 1 tokens: draft no more than are still wanted.
                drafts = min(self.draft_tokens, max_new_tokens - len(state.generated) - 1)
                verifications += 1
                drafted += drafts
                accepted += self.round(state, drafts)
        tokens = torch.tensor([state.generated], dtype=torch.long, device=input_ids.device)
        return Speculated(tokens, verifications, drafted, accepted)

    def begin(self, prompt: torch.Tensor, max_new_tokens: int = 0) -> DecodingState:
        """The prompt (P,) but its last token through every block, into a new cache."""
        self._check_length(len(prompt) + max_new_tokens - 1)  # the last token is not embedded
        state = DecodingState(self.backbone.new_cache(), 0, int(prompt[-1]))
        if len(prompt) > 1:
            self._blocks(1, self.backbone.num_layers, prompt[:-1], state, 0)
            state.length = len(prompt) - 1
        return state

    def round(self, state: DecodingState, drafts: int) -> int:
        """One draft-and-verify round of ``drafts`` drafted tokens (0: one full-depth step);
        appends the accepted tokens to ``state.generated`` and returns how many drafts layer L
        accepted."""
        exit_layer, device = self.exit_layer, self.backbone.parts.embed_tokens.weight.device
        tokens = [state.current]  # the round's positions: current, then each draft
        exit_states = []  # their layer-E states, (1, 1, D) each
        for position in range(drafts + 1):
            ids = torch.tensor([tokens[-1]], device=device)
            hidden = self._blocks(1, exit_layer, ids, state, state.length + position)
            exit_states.append(hidden)
            if position < drafts:  # the last position is verified only, not drafted from
                tokens.append(int(self.logits_at(exit_layer, hidden[0, -1]).argmax()))
        hidden = torch.cat(exit_states, 1)  # (1, d + 1, D)
        hidden = self._blocks(exit_layer + 1, self.backbone.num_layers, hidden, state,
                              state.length)
        full_depth = self.logits_at(self.backbone.num_layers, hidden[0]).argmax(-1).tolist()
        accepted = 0
        while accepted < drafts and tokens[accepted + 1] == full_depth[accepted]:
            accepted += 1
        state.generated.extend(tokens[1:accepted + 1] + [full_depth[accepted]])
        rejected = drafts - accepted
        if rejected:
            state.cache.crop(-rejected)  # every layer holds the round's d + 1 positions
        state.length += accepted + 1
        state.current = full_depth[accepted]
        return accepted

    # -- the pieces --------------------------------------------------------------------------

    def _prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                ) -> torch.Tensor:
        inputs = {"input_ids": input_ids}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        self.backbone.check_tokens(inputs)
        if len(input_ids) != 1:
            raise ConfigError(
                f"Self-speculative decoding runs one sequence at a time (batch 1); got a batch "
                f"of {len(input_ids)}. Rows accept different numbers of drafts, so their caches "
                "would part: decode the prompts one by one.")
        ids = input_ids[0].long()
        if attention_mask is not None:
            ids = ids[attention_mask[0].bool()]
            if not len(ids):
                raise ConfigError("The prompt's attention_mask marks no real token.")
        return ids.to(self.backbone.parts.embed_tokens.weight.device)

    def _check_length(self, columns: int) -> None:
        embedding = self.backbone.parts.position_embedding
        if embedding is not None and columns > embedding.num_embeddings:
            raise ConfigError(f"Prompt + max_new_tokens + draft_tokens need {columns} "
                              f"positions; the model has {embedding.num_embeddings}. Ask for "
                              "fewer new tokens.")

    def _blocks(self, first: int, last: int, inputs: torch.Tensor, state: DecodingState,
                start: int) -> torch.Tensor:
        """Blocks ``first``..``last`` on ``inputs`` at positions ``start``.. : token ids (k,)
        when ``first`` is 1, else block ``first``'s input (1, k, D). Appends their keys and
        values to each block's cache; returns block ``last``'s output (1, k, D)."""
        count = inputs.shape[0] if first == 1 else inputs.shape[1]
        positions = torch.arange(start, start + count, device=inputs.device)[None]  # (1, k)
        hidden = inputs
        if first == 1:
            hidden = self.backbone.embed(inputs[None], positions)
            check_finite(BlockState(hidden, {}))  # NaN weights would decode token 0 silently
        rotary = self.backbone.rotary_embeddings(hidden, positions)  # the same for every block
        for layer in range(first, last + 1):
            hidden = self.backbone.extend(layer, hidden, state.cache, None, positions, rotary)
        return hidden
