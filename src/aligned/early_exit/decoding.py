"""Early-exit greedy decoding for causal LMs (CALM, Schuster et al. 2022): each new token leaves
at the first layer whose exit rule fires, and is read out there with the shared head.

The decisions go through the loop the classifiers use (``rules.exit_layer_by_layer``), so every
``ExitRule`` works unchanged (confidence, entropy, patience, state = cosine of the token's
hidden states at consecutive layers, budget = a fixed layer).

Skipped layers and the key/value cache
--------------------------------------
A token that leaves at layer e never computes layers e+1..L, yet later tokens attend to its keys
and values there. Two policies (``kv=``):

- ``"recompute"`` (default): the skipped layers are computed properly, late: when a later token
  reaches layer l, the positions still missing there run through block l first. Later tokens
  see exactly the full model's keys and values, so only the exiting token's own prediction
  differs from full depth.
- ``"copy"`` (CALM's state propagation): the exit state h_e is copied forward into the skipped
  layers, so the token's keys and values at layer l > e are those of block l on h_e. Later
  tokens see copied states, an approximation the model was not trained for.

Both run the same way: per block, the positions owed to it wait in ``pending`` and ride along,
in front of the current token, in its next call (one ``HFDecoder.extend`` with the transformers
``DynamicCache``; each block's cache has its own length). Under ``recompute`` a waiting
position's input is its state one layer down and its output waits for the next block; under
``copy`` its input is its exit state and its output is dropped. A position is computed at block
l only once a later token reaches l (never, if none does), under either policy, so the two cost
the same here; that is why ``recompute`` is the default. CALM computes only the keys and values
of the copied state, which would also save the block's attention and MLP on those rows; that
needs each family's attention internals and is not done.

Batches: rows decide separately; a row that has left keeps its exit state (``copy``) or keeps
being computed (``recompute``) while the others run, and the batch stops at the layer where its
last row leaves, so every row's cache keeps the same length. Prompts of different lengths are
left-padded (``attention_mask``).

    decoder = EarlyExitDecoder(backbone, make_rule("state", 0.99))       # an HFDecoder
    result = decoder.generate(tokenizer("The", return_tensors="pt")["input_ids"], 20)
    result.tokens, result.exit_layers                                       # (B, 20) each
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from aligned.analysis.cos import cosine_to_previous
from aligned.config import ConfigError
from aligned.early_exit.input_checks import check_finite, checked_rule
from aligned.early_exit.rules import ExitRule, LayerSignals, exit_layer_by_layer
from aligned.models.backbones.base import BlockState
from aligned.models.backbones.hf_decoder import HFDecoder

KV_POLICIES = ("recompute", "copy")
LogitsAt = Callable[[int, torch.Tensor], torch.Tensor]  # (layer, (B, D) features) -> (B, V)


@dataclass
class Decoded:
    """Per row and decoded position: the token read out (generated, or under teacher forcing
    the prediction of the next token) and the layer it left at (1..L)."""

    tokens: torch.Tensor  # (B, N)
    exit_layers: torch.Tensor  # (B, N)


class _Stream:
    """One batch's decoding state: the cache, the columns seen so far (their real-token mask,
    position ids and, for LLaMA, rotary cos/sin, the same for every block), and per block the
    positions owed to it (each (B, k, D), oldest first)."""

    def __init__(self, decoder: EarlyExitDecoder, batch_size: int, device: torch.device) -> None:
        self.cache = decoder.backbone.new_cache()
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (B, T)
        self.positions = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (B, T)
        self.padded = False  # some column is padding: the blocks need the mask
        self.rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, T, head_dim) each
        self.pending: list[list[torch.Tensor]] = [[] for _ in range(decoder.backbone.num_layers)]

    def append(self, backbone: HFDecoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """New columns: their ids and real-token mask (B, k) -> their embeddings (B, k, D).
        Their position ids count each row's real tokens, as in ``HFDecoder.begin``."""
        counted = (self.mask.sum(-1, keepdim=True) + mask.cumsum(-1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, mask], 1)
        self.positions = torch.cat([self.positions, counted], 1)
        self.padded = self.padded or not bool(mask.all())
        embedded = backbone.embed(ids, counted)
        check_finite(BlockState(embedded, {}))  # NaN weights would decode token 0 silently
        rotary = backbone.rotary_embeddings(embedded, counted)  # once, not once per block
        if rotary is not None:
            self.rotary = rotary if self.rotary is None else tuple(
                torch.cat([kept, new], 1) for kept, new in zip(self.rotary, rotary, strict=True))
        return embedded

    def columns(self, count: int) -> tuple[torch.Tensor, tuple | None]:
        """Position ids and rotary embeddings of the last ``count`` columns."""
        rotary = None if self.rotary is None else tuple(r[:, -count:] for r in self.rotary)
        return self.positions[:, -count:], rotary

    def block_inputs(self, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        """The owed positions of block ``layer`` in front of ``tokens`` (B, k, D); clears them."""
        owed, self.pending[layer - 1] = self.pending[layer - 1], []
        return torch.cat([*owed, tokens], 1) if owed else tokens


def check_new_tokens(max_new_tokens: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or (
            max_new_tokens < 0):
        raise ConfigError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}.")


def system_logits(system) -> LogitsAt:
    """A trained system's next-token logits at a layer: its objective's heads (the shared head,
    or per-layer ones) over its backbone."""
    backbone = system.backbone
    return lambda layer, features: system.objective.logits_at(layer, features, backbone.head)


class EarlyExitDecoder:
    """Greedy decoding of an ``HFDecoder`` under ``rule``, block by block with a KV cache.

    ``logits_at(layer, features)`` gives a layer's next-token logits; by default the shared
    head (``backbone.head``). ``from_system`` takes a trained system's (per-layer heads too).
    """

    def __init__(self, backbone: HFDecoder, rule: ExitRule, kv: str = "recompute",
                 logits_at: LogitsAt | None = None) -> None:
        if not isinstance(backbone, HFDecoder):
            raise ConfigError(f"Early-exit decoding needs a causal LM (model=gpt2, "
                              f"model=smollm2); got a {type(backbone).__name__}.")
        if kv not in KV_POLICIES:
            raise ConfigError(f"kv={kv!r}: use 'recompute' (skipped layers computed when a "
                              "later token needs them) or 'copy' (CALM: their keys and values "
                              "from the exit state).")
        self.backbone = backbone.eval()
        self.rule = checked_rule(rule)
        self.kv = kv
        self.logits_at = logits_at or (lambda layer, features: backbone.head(features))

    @classmethod
    def from_system(cls, system, rule: ExitRule, kv: str = "recompute") -> EarlyExitDecoder:
        """A trained ``LayerwiseClassifier`` over an ``HFDecoder`` (its objective's heads)."""
        return cls(system.eval().backbone, rule, kv, system_logits(system))

    # -- the public calls --------------------------------------------------------------------

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int,
                 attention_mask: torch.Tensor | None = None) -> Decoded:
        """``max_new_tokens`` greedy tokens after each prompt row (B, P). The prompt but its
        last token runs at full depth; from its last token on, each step exits early."""
        check_new_tokens(max_new_tokens)
        with torch.inference_mode():
            decoded = self._generate(input_ids, max_new_tokens, attention_mask)
        return Decoded(decoded.tokens.clone(), decoded.exit_layers.clone())  # normal tensors

    def teacher_forced(self, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> Decoded:
        """Decode the given text token by token, feeding the true tokens: column t of the result
        is the prediction of token t + 1 from tokens 0..t, made under the exit rule and KV
        policy (every position is a decoded one). Right padding is fine."""
        with torch.inference_mode():
            decoded = self._teacher_forced(input_ids, attention_mask)
        return Decoded(decoded.tokens.clone(), decoded.exit_layers.clone())

    def _check_length(self, columns: int) -> None:
        embedding = self.backbone.parts.position_embedding
        if embedding is not None and columns > embedding.num_embeddings:
            raise ConfigError(f"Prompt + max_new_tokens need {columns + 1} positions; the model "
                              f"has {embedding.num_embeddings}. Ask for fewer new tokens.")

    def _generate(self, input_ids: torch.Tensor, max_new_tokens: int,
                  attention_mask: torch.Tensor | None) -> Decoded:
        input_ids, attention_mask = self._check(input_ids, attention_mask)
        self._check_length(input_ids.shape[1] + max_new_tokens - 1)
        if not bool(attention_mask[:, -1].all()):
            raise ConfigError("Prompts of different lengths must be padded on the left "
                              "(tokenizer.padding_side = 'left'): every row's last token is the "
                              "one the next is predicted from.")
        stream = self._prefill(input_ids[:, :-1], attention_mask[:, :-1])
        current = input_ids[:, -1:]
        tokens, exits = [], []
        for _ in range(max_new_tokens):
            predicted, exit_layers = self._step(stream, current, torch.ones_like(current))
            tokens.append(predicted)
            exits.append(exit_layers)
            current = predicted[:, None]
        return self._decoded(tokens, exits, len(input_ids), input_ids.device)

    def _teacher_forced(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                        ) -> Decoded:
        input_ids, attention_mask = self._check(input_ids, attention_mask)
        stream = _Stream(self, len(input_ids), input_ids.device)
        tokens, exits = [], []
        for column in range(input_ids.shape[1]):
            predicted, exit_layers = self._step(stream, input_ids[:, column:column + 1],
                                                attention_mask[:, column:column + 1])
            tokens.append(predicted)
            exits.append(exit_layers)
        return self._decoded(tokens, exits, len(input_ids), input_ids.device)

    # -- the steps ---------------------------------------------------------------------------

    def _check(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {"input_ids": input_ids}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        self.backbone.check_tokens(inputs)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        device = self.backbone.parts.embed_tokens.weight.device
        return input_ids.long().to(device), mask.to(device)

    def _prefill(self, input_ids: torch.Tensor, mask: torch.Tensor) -> _Stream:
        """The prompt's columns through every block (nothing exits), into the cache."""
        stream = _Stream(self, len(input_ids), input_ids.device)
        if not input_ids.shape[1]:
            return stream
        hidden = stream.append(self.backbone, input_ids, mask)  # (B, P-1, D)
        positions, rotary = stream.columns(input_ids.shape[1])
        for layer in range(1, self.backbone.num_layers + 1):
            hidden = self.backbone.extend(layer, hidden, stream.cache, self._mask(stream),
                                          positions, rotary)
        return stream

    def _mask(self, stream: _Stream) -> torch.Tensor | None:
        return stream.mask if stream.padded else None  # unpadded: the causal mask alone

    def _step(self, stream: _Stream, ids: torch.Tensor, mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One new column (B, 1) through the blocks until every row has left; returns each
        row's prediction and exit layer (B,) and leaves the owed positions in ``stream``."""
        backbone, num_layers, batch = self.backbone, self.backbone.num_layers, len(ids)
        hidden = stream.append(backbone, ids, mask)  # (B, 1, D)
        running = None  # the rows still deciding; None: all
        previous = None  # their float64 features at the last layer read (for the cosine)
        reached = 0

        def signals_after(layer: int, keep: torch.Tensor | None, read: bool
                          ) -> LayerSignals | None:
            nonlocal hidden, running, previous, reached
            if keep is not None:
                running = (torch.arange(batch, device=ids.device) if running is None
                           else running)[keep]
                previous = None if previous is None else previous[keep]
            chunk = stream.block_inputs(layer, hidden)  # (B, owed + 1, D)
            owed = chunk.shape[1] - 1
            out = backbone.extend(layer, chunk, stream.cache, self._mask(stream),
                                  *stream.columns(chunk.shape[1]))
            if self.kv == "recompute" and owed and layer < num_layers:
                stream.pending[layer].append(out[:, :owed])  # their next block's input
            new = out[:, owed:]  # (B, 1, D)
            if self.kv == "copy" and running is not None:  # the rows that left keep h_e
                left = torch.ones(batch, dtype=torch.bool, device=ids.device)
                left[running] = False
                new = torch.where(left[:, None, None], hidden, new)
            hidden, reached = new, layer
            if not read:
                return None
            features = hidden[:, 0] if running is None else hidden[running, 0]  # (b, D)
            cosine = None
            if self.rule.reads_cosine:
                current = features.to(torch.float64)
                cosine, previous = cosine_to_previous(previous, current), current
            return LayerSignals(lambda: self.logits_at(layer, features), cosine)

        result = exit_layer_by_layer(self.rule, num_layers, batch, signals_after, ids.device)
        # The blocks after the last one run are owed this column.
        if self.kv == "copy":
            for layer in range(reached + 1, num_layers + 1):
                stream.pending[layer - 1].append(hidden)
        elif reached < num_layers:
            stream.pending[reached].append(hidden)
        return result.predictions, result.exit_layers

    @staticmethod
    def _decoded(tokens: list[torch.Tensor], exits: list[torch.Tensor], batch: int,
                 device: torch.device) -> Decoded:
        if not tokens:
            empty = torch.zeros(batch, 0, dtype=torch.long, device=device)
            return Decoded(empty, empty)
        return Decoded(torch.stack(tokens, 1), torch.stack(exits, 1))
