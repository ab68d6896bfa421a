"""What the exit rules read (aligned.early_exit.signals) and the one offline simulator over it
(aligned.early_exit.offline), on a tiny random GPT-2's tokens: the per-token signals are the
model's own and the evaluation pass's; the simulation on them decides as the decision loop fed
the full logits (the real inference's path) does, and equals real teacher-forced early-exit
decoding under kv=recompute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from causal_lm_helpers import save_tiny_lm, vocab_size

from aligned.analysis.similarity import sample_cosine
from aligned.config import ConfigError
from aligned.data.text import PadWithLabels
from aligned.early_exit.decoding import EarlyExitDecoder
from aligned.early_exit.offline import early_exit_summary, simulate, sweep
from aligned.early_exit.rules import RULES, ExitResult, ExitRule, LayerSignals, exit_layer_by_layer
from aligned.early_exit.signals import collect_token_signals
from aligned.models.backbones.hf_decoder import HFDecoder

# Tiny ops: one thread, set before the module's tiny models are built (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread_per_module")
LAYERS = 4


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> HFDecoder:
    directory = save_tiny_lm(tmp_path_factory.mktemp("gpt2"), "gpt2", LAYERS)
    backbone = HFDecoder(str(directory)).eval().double()  # float64: exact agreement
    generator = torch.Generator().manual_seed(0)  # livelier than HF's std 0.02 (mixed exits)
    with torch.no_grad():
        for parameter in backbone.parts.blocks.parameters():
            if parameter.ndim == 2:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator,
                                                  dtype=parameter.dtype))
        # Sharper logits (the random head is near uniform over 28 tokens otherwise), so that
        # the confidence grid's steps fall between the tokens' confidences.
        backbone.parts.final_norm.weight.mul_(8)
    return backbone


def documents(count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size(), (int(length),), generator=generator)
            for length in torch.randint(4, 20, (count,), generator=generator)]


def batches(docs: list[torch.Tensor], size: int = 3) -> list[dict[str, torch.Tensor]]:
    collate = PadWithLabels(pad_token_id=0)  # right padding, labels -100 there: data=text's
    return [collate(docs[i:i + size]) for i in range(0, len(docs), size)]


def full_logits(backbone: HFDecoder, docs: list[torch.Tensor]) -> torch.Tensor:
    """(N, L, V) every layer's logits at every position that has a next token, in order."""
    rows = []
    with torch.no_grad():
        for doc in docs:
            state = backbone.begin({"input_ids": doc[None]})
            layers = []
            for layer in range(1, LAYERS + 1):
                state = backbone.run_block(layer, state)
                layers.append(backbone.head(state.tokens[0, :-1]))  # (T-1, V)
            rows.append(torch.stack(layers, 1))
    return torch.cat(rows)


def loop_on_logits(rule: ExitRule, logits: torch.Tensor, cosine: np.ndarray) -> ExitResult:
    """The decision loop fed each layer's full logits, as real inference feeds it."""
    cosine, rows = torch.from_numpy(cosine), torch.arange(len(logits))

    def signals_after(layer, keep, read):
        nonlocal rows
        rows = rows if keep is None else rows[keep]
        return LayerSignals(logits[rows, layer - 1], cosine[rows, layer - 1]) if read else None

    return exit_layer_by_layer(rule, logits.shape[1], len(logits), signals_after)


def test_signals_are_the_models_own(backbone):
    docs = documents(7, seed=0)
    signals = collect_token_signals(backbone, batches(docs), chunk=5)
    assert len(signals.labels) == sum(len(doc) - 1 for doc in docs)
    assert signals.num_classes == vocab_size()
    offset = 0
    with torch.no_grad():
        for doc in docs:
            out = backbone.model(doc[None], output_hidden_states=True)
            rows = slice(offset, offset + len(doc) - 1)
            offset += len(doc) - 1
            assert np.array_equal(signals.labels[rows], doc[1:].numpy())
            assert np.array_equal(signals.top1[rows, -1], out.logits[0, :-1].argmax(-1).numpy())
            p = out.logits[0, :-1].softmax(-1)
            np.testing.assert_allclose(signals.confidence[rows, -1], p.amax(-1).numpy(),
                                       rtol=1e-9)
            entropy = -(p * p.log()).sum(-1)
            np.testing.assert_allclose(signals.entropy[rows, -1], entropy.numpy(), rtol=1e-9)
            hidden = out.hidden_states  # HF's: index l = block l's output, ln_f applied at L
            np.testing.assert_allclose(
                signals.cosine[rows, 1], sample_cosine(hidden[1][0, :-1], hidden[2][0, :-1]),
                rtol=1e-9)
    assert np.isnan(signals.cosine[:, 0]).all()
    assert len(collect_token_signals(backbone, batches(docs), max_tokens=10).labels) == 10


def test_simulation_on_the_signals_decides_as_the_loop_on_full_logits(backbone):
    """Every rule over its whole grid: the cached signals give the exits and predictions that
    the decision loop gives when it reads each layer's full (N, V) logits."""
    docs = documents(6, seed=1)
    signals = collect_token_signals(backbone, batches(docs))
    logits = full_logits(backbone, docs)
    for name in RULES:
        curve = sweep(name, signals)
        exits = {p["mean_exit_layer"] for p in curve}
        assert len(exits) > 2, f"{name}'s grid should give several depths"
        for point in curve:
            rule = RULES[name](point["threshold"])
            result, expected = simulate(rule, signals), loop_on_logits(rule, logits, signals.cosine)
            assert torch.equal(result.exit_layers, expected.exit_layers), (name, rule)
            assert torch.equal(result.predictions, expected.predictions), (name, rule)


def test_simulation_is_teacher_forced_decoding_with_recompute(backbone):
    docs = documents(3, seed=2)
    for name in ("confidence", "state", "patience"):
        signals = collect_token_signals(backbone, batches(docs, size=1))
        curve = sweep(name, signals)
        rule = RULES[name](next(p for p in curve if 1.5 < p["mean_exit_layer"] < 3.5)["threshold"])
        simulated = simulate(rule, signals)
        decoder = EarlyExitDecoder(backbone, rule, kv="recompute")
        decoded = [decoder.teacher_forced(doc[None]) for doc in docs]
        assert torch.equal(torch.cat([d.tokens[0, :-1] for d in decoded]), simulated.predictions)
        assert torch.equal(torch.cat([d.exit_layers[0, :-1] for d in decoded]),
                           simulated.exit_layers)


def test_summary_chooses_on_val_within_max_drop(backbone):
    val = collect_token_signals(backbone, batches(documents(8, seed=3)))
    test = collect_token_signals(backbone, batches(documents(8, seed=4)))
    summary = early_exit_summary(val, test, max_drop=0.05)
    full_val = summary["full_depth_accuracy"]["val"]
    assert summary["samples"] == {"val": len(val.labels), "test": len(test.labels)}
    for name, entry in summary["rules"].items():
        chosen = entry["chosen"]
        assert chosen["val_accuracy"] >= full_val - 0.05 - 1e-12, name
        allowed = [p for p in entry["val_curve"] if p["accuracy"] >= full_val - 0.05 - 1e-12]
        assert chosen["val_mean_exit_layer"] == min(p["mean_exit_layer"] for p in allowed)
        test_point = next(p for p in entry["test_curve"] if p["threshold"] == chosen["threshold"])
        assert chosen["accuracy"] == test_point["accuracy"]
    budget = summary["rules"]["budget"]["test_curve"][-1]  # depth L: full depth
    assert budget["accuracy"] == summary["full_depth_accuracy"]["test"]
    assert budget["agreement"] == 1.0 and budget["mean_head_calls"] == 1.0
    confidence = summary["rules"]["confidence"]["test_curve"][-1]  # threshold 1: (almost) no exit
    assert confidence["mean_head_calls"] == confidence["mean_exit_layer"]
    with pytest.raises(ConfigError, match="Unknown exit rule 'speed'"):
        early_exit_summary(val, test, 0.01, rules=["speed"])


def test_the_evaluation_pass_keeps_the_signals_the_light_pass_collects(tmp_path):
    """evaluate.py reads the analysed split's signals from its token pass and the other split's
    from collect_token_signals: on the same batches they are the same numbers."""
    from aligned.analysis.token_pass import run_token_pass
    from aligned.early_exit.signals import signals_of_outputs
    from aligned.training.system import LayerwiseClassifier

    directory = save_tiny_lm(tmp_path, "llama", LAYERS)
    system = LayerwiseClassifier(
        model={"_target_": "aligned.models.backbones.hf_decoder.HFDecoder",
               "name_or_path": str(directory)},
        loss={"_target_": "aligned.models.objectives.AlignedObjective"}).double().eval()
    data = batches(documents(5, seed=5), size=2)
    light = collect_token_signals(system.backbone, data)
    analysed = signals_of_outputs(run_token_pass(system, data, max_tokens=8, progress=False),
                                  system.backbone.num_classes)
    assert np.array_equal(analysed.labels, light.labels)
    assert np.array_equal(analysed.top1, light.top1)
    for key in ("confidence", "entropy", "cosine"):
        np.testing.assert_allclose(getattr(analysed, key), getattr(light, key), rtol=1e-9,
                                   err_msg=key)
