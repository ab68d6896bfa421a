"""Self-speculative decoding (aligned.early_exit.speculative) on tiny GPT-2 and LLaMA models in
float64: its tokens equal plain full-depth greedy decoding token for token, for several exit
layers and draft lengths, on weights whose layer E rarely agrees with layer L (random) and on
weights whose later blocks barely move the features (so most drafts are accepted, some not);
after a rejection the cache equals the model's own cache over the accepted tokens."""

from __future__ import annotations

import pytest
import torch
from causal_lm_helpers import full_depth_greedy, save_tiny_lm
from causal_lm_helpers import random_prompt as prompt

from aligned.config import ConfigError
from aligned.early_exit.speculative import SpeculativeDecoder
from aligned.models.backbones.hf_decoder import HFDecoder

pytestmark = pytest.mark.usefixtures("one_thread_per_module")
LAYERS = 4
AGREEING = [0.2, 0.2, 0.05, 0.05]  # block scales after which layer 2 mostly agrees with L


def scaled(backbone: HFDecoder, scales: list[float]) -> HFDecoder:
    """Block l's matrices drawn at std ``scales[l - 1]`` (seeded): 0.2 everywhere makes each
    block change the prediction often; 0.05 after layer 2 leaves layer 2's top-1 mostly that of
    layer L (a model trained to agree, as the aligned loss does)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block, scale in zip(backbone.parts.blocks, scales, strict=True):
            for parameter in block.parameters():
                if parameter.ndim == 2:
                    parameter.copy_(scale * torch.randn(parameter.shape, generator=generator,
                                                        dtype=parameter.dtype))
    return backbone


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def directory(request, tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp(request.param), request.param, LAYERS)


@pytest.fixture(scope="module", params=["random", "agreeing"])
def backbone(request, directory) -> HFDecoder:
    backbone = HFDecoder(str(directory)).eval().double()
    scales = [0.2] * LAYERS if request.param == "random" else AGREEING
    return scaled(backbone, scales)


@pytest.mark.parametrize("exit_layer", [1, 2, 3])
@pytest.mark.parametrize("draft_tokens", [1, 4])
def test_tokens_equal_full_depth_greedy(backbone, exit_layer, draft_tokens):
    for seed, length in ((0, 5), (1, 1)):  # a one-token prompt: nothing to prefill
        ids = prompt(length, seed)
        result = SpeculativeDecoder(backbone, exit_layer, draft_tokens).generate(ids, 17)
        assert result.tokens.tolist() == full_depth_greedy(backbone, ids, 17)[:, -17:].tolist()
        assert result.tokens.shape == (1, 17)
        # every round adds its accepted drafts and layer L's own token
        assert result.accepted + result.verifications == 17
        assert result.drafted <= draft_tokens * result.verifications


def test_agreeing_weights_accept_most_drafts_and_reject_some(directory):
    """The regime the equivalence tests must cover: acceptance and rejection both happen."""
    agreeing = scaled(HFDecoder(str(directory)).eval().double(), AGREEING)
    random = scaled(HFDecoder(str(directory)).eval().double(), [0.2] * LAYERS)
    totals = {}
    for name, backbone in (("agreeing", agreeing), ("random", random)):
        results = [SpeculativeDecoder(backbone, 2, 4).generate(prompt(6, seed), 24)
                   for seed in range(4)]
        totals[name] = (sum(r.accepted for r in results), sum(r.drafted for r in results))
    accepted, drafted = totals["agreeing"]
    assert 0.5 * drafted < accepted < drafted
    assert totals["random"][0] < accepted


def test_cache_after_a_rejection_equals_a_fresh_full_depth_cache(directory):
    backbone = scaled(HFDecoder(str(directory)).eval().double(), AGREEING)
    decoder = SpeculativeDecoder(backbone, 2, 4)
    rejections = 0
    with torch.inference_mode():
        for seed in range(4):
            ids = prompt(6, seed)
            state = decoder.begin(ids[0], 40)
            while len(state.generated) < 30:
                rejections += decoder.round(state, 4) < 4
                accepted_ids = torch.tensor([[*ids[0].tolist(), *state.generated]])[:, :-1]
                assert state.length == accepted_ids.shape[1]
                fresh = backbone.model(accepted_ids, use_cache=True).past_key_values
                for layer in range(LAYERS):
                    ours, theirs = state.cache.layers[layer], fresh.layers[layer]
                    torch.testing.assert_close(ours.keys, theirs.keys, rtol=1e-9, atol=1e-10)
                    torch.testing.assert_close(ours.values, theirs.values, rtol=1e-9,
                                               atol=1e-10)
    assert rejections  # a cache was cut back at least once


def test_a_batch_of_several_rows_is_one_clear_error(backbone):
    with pytest.raises(ConfigError, match="batch 1"):
        SpeculativeDecoder(backbone, 2, 3).generate(prompt(4).repeat(2, 1), 5)


def test_left_padding_is_dropped(backbone):
    ids = prompt(5)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    decoder = SpeculativeDecoder(backbone, 2, 3)
    assert torch.equal(decoder.generate(padded, 9, mask).tokens, decoder.generate(ids, 9).tokens)


@pytest.mark.parametrize("exit_layer", [0, LAYERS, -1, 1.5, True])
def test_an_exit_layer_outside_the_model_is_one_clear_error(backbone, exit_layer):
    with pytest.raises(ConfigError, match=f"exit_layer must be a layer in 1..{LAYERS - 1}"):
        SpeculativeDecoder(backbone, exit_layer, 3)


@pytest.mark.parametrize("draft_tokens", [0, -2, 2.0])
def test_a_bad_draft_length_is_one_clear_error(backbone, draft_tokens):
    with pytest.raises(ConfigError, match="draft_tokens must be a whole number >= 1"):
        SpeculativeDecoder(backbone, 2, draft_tokens)


def test_zero_new_tokens_and_a_too_long_request(backbone):
    decoder = SpeculativeDecoder(backbone, 2, 3)
    assert decoder.generate(prompt(4), 0).tokens.shape == (1, 0)
    if backbone.parts.position_embedding is not None:  # GPT-2: 64 learned positions
        with pytest.raises(ConfigError, match="positions"):
            decoder.generate(prompt(10), 60)


def test_nan_weights_are_one_clear_error_not_token_zero(directory):
    backbone = HFDecoder(str(directory)).eval().double()
    with torch.no_grad():
        backbone.parts.embed_tokens.weight[5] = float("nan")
    with pytest.raises(ConfigError, match="NaN or inf"):
        SpeculativeDecoder(backbone, 2, 3).generate(torch.tensor([[4, 5, 6]]), 4)
