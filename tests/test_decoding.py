"""Early-exit greedy decoding (aligned.early_exit.decoding) on tiny random GPT-2 and LLaMA
models: with no exit it is full-depth greedy decoding token for token; with exits, it equals a
slow reference of the same policy that recomputes the whole sequence from scratch each step."""

from __future__ import annotations

import math

import pytest
import torch
from causal_lm_helpers import full_depth_greedy, save_tiny_lm
from causal_lm_helpers import random_prompt as prompt

from aligned.analysis.similarity import sample_cosine
from aligned.config import ConfigError
from aligned.early_exit.decoding import EarlyExitDecoder
from aligned.early_exit.rules import (
    BudgetRule,
    ConfidenceRule,
    EntropyRule,
    ExitRule,
    LayerSignals,
    PatienceRule,
    StateRule,
)
from aligned.models.backbones.base import BlockState
from aligned.models.backbones.hf_decoder import HFDecoder

# Tiny ops: one thread, set before the module's tiny models are built (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread_per_module")
LAYERS = 4


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def backbone(request, tmp_path_factory) -> HFDecoder:
    directory = save_tiny_lm(tmp_path_factory.mktemp(request.param), request.param, LAYERS)
    # float64: the cached and the from-scratch paths sum in different orders; in float64 a
    # near-tie cannot flip a top-1 or a threshold by round-off in these short runs.
    backbone = HFDecoder(str(directory)).eval().double()
    # Block matrices at std 0.2 rather than HF's initial 0.02: at 0.02 each block barely moves
    # the residual stream, and copying exit states forward changes no token (measured), so the
    # reference test could not tell the two KV policies apart.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in backbone.parts.blocks.parameters():
            if parameter.ndim == 2:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator,
                                                  dtype=parameter.dtype))
    return backbone


def reference_decode(backbone: HFDecoder, rule: ExitRule, ids: torch.Tensor, count: int,
                     kv: str, forced: torch.Tensor | None = None) -> tuple[list[int], list[int]]:
    """The policy from scratch, one row: every step runs the whole sequence through every block
    (``run_block``, no cache). Under ``copy`` a decoded position p that left at e_p keeps its
    layer-e_p state in every later block (so its keys and values there come from it); under
    ``recompute`` nothing is frozen. The newest position's exit is the first layer whose rule
    fires, the rule applied directly (not through ``exit_layer_by_layer``)."""
    exits = [LAYERS] * (ids.shape[1] - 1)  # the prompt but its last token: full depth
    decoded = []
    with torch.no_grad():
        for step in range(count):
            state = backbone.begin({"input_ids": ids})
            rule_state = rule.initial_state(1, torch.device("cpu"))
            previous, chosen = None, None
            for layer in range(1, LAYERS + 1):
                tokens = backbone.run_block(layer, state).tokens.clone()  # (1, T, D)
                if kv == "copy":
                    for position, left in enumerate(exits):
                        if left < layer:
                            tokens[:, position] = state.tokens[:, position]
                state = BlockState(tokens, state.extras)
                if chosen is None:
                    features = tokens[:, -1]  # (1, D)
                    current = features.double()
                    cosine = (sample_cosine(previous, current) if previous is not None
                              else torch.tensor([math.nan], dtype=torch.float64))
                    previous = current
                    logits = backbone.head(features)
                    leaving, rule_state = rule.exits(layer, LayerSignals(logits, cosine),
                                                     rule_state)
                    if bool(leaving[0]) or layer == LAYERS:
                        chosen = (int(logits.argmax(-1)), layer)
            exits.append(chosen[1])
            decoded.append(chosen[0])
            if step + 1 < count:
                next_id = chosen[0] if forced is None else int(forced[0, step])
                ids = torch.cat([ids, torch.tensor([[next_id]])], 1)
    return decoded, exits[-count:]


@pytest.mark.parametrize("rule", [BudgetRule(LAYERS), ConfidenceRule(2.0)], ids=repr)
def test_no_exit_is_full_depth_greedy(backbone, rule):
    ids = prompt(5)
    expected = full_depth_greedy(backbone, ids, 12)[:, 5:]
    for kv in ("copy", "recompute"):
        result = EarlyExitDecoder(backbone, rule, kv).generate(ids, 12)
        assert torch.equal(result.tokens, expected)
        assert (result.exit_layers == LAYERS).all()
    generated = backbone.model.generate(ids, do_sample=False, max_new_tokens=12,
                                        min_new_tokens=12, pad_token_id=0)
    assert torch.equal(generated[:, 5:], expected)  # HF's own greedy decoding agrees


def calibrated_rules(backbone: HFDecoder, ids: torch.Tensor) -> list[ExitRule]:
    """Rules whose thresholds split the first layer they read in half (the median over the
    decoded positions of the full-depth greedy continuation of ``ids``), so that tokens leave
    at mixed layers (a random model is unconfident everywhere)."""
    text = full_depth_greedy(backbone, ids, 10)
    with torch.no_grad():
        layer1 = backbone.run_block(1, backbone.begin({"input_ids": text}))
        layer2 = backbone.run_block(2, layer1)
        decoded = slice(ids.shape[1] - 1, None)  # the positions that predict a new token
        first, second = layer1.tokens[0, decoded], layer2.tokens[0, decoded]  # (10, D) each
        p = backbone.head(first).softmax(-1)  # (10, V)
    confidence = float(p.amax(-1).median())
    entropy = float(torch.special.entr(p).sum(-1).median())
    cosine = float(sample_cosine(first.double(), second.double()).median())
    return [ConfidenceRule(confidence), EntropyRule(entropy), StateRule(cosine),
            PatienceRule(1.0), BudgetRule(2.0)]


@pytest.mark.parametrize("kv", ["copy", "recompute"])
def test_early_exit_matches_reference_policy(backbone, kv):
    ids = prompt(3, seed=2)
    other = {"copy": "recompute", "recompute": "copy"}[kv]
    policies_differ = False
    for rule in calibrated_rules(backbone, ids):
        result = EarlyExitDecoder(backbone, rule, kv).generate(ids, 10)
        tokens, exits = reference_decode(backbone, rule, ids, 10, kv)
        assert result.tokens[0].tolist() == tokens, rule
        assert result.exit_layers[0].tolist() == exits, rule
        if not isinstance(rule, (BudgetRule, PatienceRule)):  # patience: where top-1 settles
            assert len(set(exits)) > 1, f"{rule} should exit at mixed layers"
        policies_differ |= reference_decode(backbone, rule, ids, 10, other) != (tokens, exits)
    assert policies_differ, "the reference should tell the two KV policies apart on some rule"


def test_teacher_forced_matches_reference(backbone):
    text = prompt(12, seed=3)
    rule = calibrated_rules(backbone, text[:, :2])[0]
    for kv in ("copy", "recompute"):
        result = EarlyExitDecoder(backbone, rule, kv).teacher_forced(text)
        # Every position is decoded: the reference from the first token, fed the text.
        tokens, exits = reference_decode(backbone, rule, text[:, :1], 12, kv, forced=text[:, 1:])
        assert result.tokens[0].tolist() == tokens
        assert result.exit_layers[0].tolist() == exits
    # Recompute keeps every context state exact: a token's prediction depends on its own exit.
    full = EarlyExitDecoder(backbone, BudgetRule(LAYERS)).teacher_forced(text).tokens
    with torch.no_grad():
        assert torch.equal(full, backbone.model(text).logits.argmax(-1))


def test_batch_rows_decode_as_alone(backbone):
    """Left-padded prompts of different lengths, each row under the rule as if alone."""
    rows = [prompt(6, seed=4), prompt(3, seed=5), prompt(5, seed=6)]
    width = max(row.shape[1] for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - row.shape[1]:], mask[i, width - row.shape[1]:] = row[0], 1
    for rule in calibrated_rules(backbone, rows[1])[:3]:
        for kv in ("copy", "recompute"):
            decoder = EarlyExitDecoder(backbone, rule, kv)
            batched = decoder.generate(ids, 8, attention_mask=mask)
            for i, row in enumerate(rows):
                alone = decoder.generate(row, 8)
                assert torch.equal(batched.tokens[i], alone.tokens[0]), (rule, kv, i)
                assert torch.equal(batched.exit_layers[i], alone.exit_layers[0]), (rule, kv, i)


def test_bad_input(backbone):
    decoder = EarlyExitDecoder(backbone, BudgetRule(2.0))
    with pytest.raises(ConfigError, match="padded on the left"):
        decoder.generate(torch.tensor([[5, 6, 0]]), 2, attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        decoder.generate(prompt(3), -1)
    with pytest.raises(ConfigError, match="kv='cache'"):
        EarlyExitDecoder(backbone, BudgetRule(2.0), kv="cache")
    with pytest.raises(ConfigError, match="vocabulary"):
        decoder.generate(torch.tensor([[5, 999]]), 2)
    assert decoder.generate(prompt(3), 0).tokens.shape == (1, 0)
    if backbone.parts.position_embedding is not None:  # GPT-2's 64 learned positions
        with pytest.raises(ConfigError, match="positions"):
            decoder.generate(prompt(60), 10)


def test_from_system_reads_a_multiexit_models_own_heads(tmp_path):
    from aligned.training.system import LayerwiseClassifier

    directory = save_tiny_lm(tmp_path, "llama", LAYERS)
    system = LayerwiseClassifier(
        model={"_target_": "aligned.models.backbones.hf_decoder.HFDecoder",
               "name_or_path": str(directory)},
        loss={"_target_": "aligned.models.objectives.MultiExitObjective"}).double()
    text = prompt(9, seed=7)
    decoded = EarlyExitDecoder.from_system(system, BudgetRule(2.0)).teacher_forced(text)
    with torch.no_grad():
        backbone = system.backbone
        state = backbone.run_block(2, backbone.run_block(1, backbone.begin({"input_ids": text})))
        own_head = system.objective.exit_heads[1](state.tokens[0]).argmax(-1)  # layer 2's head
        shared_head = backbone.head(state.tokens[0]).argmax(-1)
    assert torch.equal(decoded.tokens[0], own_head)
    assert not torch.equal(own_head, shared_head)  # so the test tells the heads apart


def test_nan_weights_and_a_nan_threshold_are_one_clear_error(backbone):
    with pytest.raises(ConfigError, match="threshold is NaN"):
        EarlyExitDecoder(backbone, ConfidenceRule(math.nan))
    broken = HFDecoder(str(backbone.model.name_or_path)).eval().double()
    with torch.no_grad():
        broken.parts.embed_tokens.weight[5] = float("nan")
    with pytest.raises(ConfigError, match="NaN or inf"):
        EarlyExitDecoder(broken, BudgetRule(2)).generate(torch.tensor([[4, 5, 6]]), 3)
