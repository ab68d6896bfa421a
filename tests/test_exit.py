"""Early exit: the rules, the offline simulation, the real block-by-block inference (which must
agree with the simulation exactly), operating-point selection and the parameter count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from tiny_models import (
    LOSSES,
    NUM_CLASSES,
    NUM_LAYERS,
    bert_batches,
    tiny_bert_system,
    tiny_vit_system,
    vit_batches,
)

from aligned.analysis.head_statistics import head_statistics
from aligned.config import ConfigError
from aligned.early_exit.inference import EarlyExitClassifier
from aligned.early_exit.offline import (
    accuracy_at_depth,
    choose_threshold,
    early_exit_summary,
    matched_comparison,
    simulate,
)
from aligned.early_exit.parameter_count import parameter_summary, shared_head_saving
from aligned.early_exit.pooled import PooledEarlyExit
from aligned.early_exit.rules import (
    RULES,
    BudgetRule,
    ConfidenceRule,
    EntropyRule,
    ExitRule,
    LayerSignals,
    PatienceRule,
    StateRule,
    decide,
    make_rule,
)
from aligned.early_exit.signals import ExitSignals, collect_exit_signals
from aligned.models.backbones.base import LayerwiseBackbone
from aligned.training.system import LayerwiseClassifier, unpack

# ----------------------------------------------------------------------------- rules


def signals_of(logits: np.ndarray, cosine: np.ndarray | None = None,
               labels: np.ndarray | None = None) -> ExitSignals:
    """The exit signals of per-sample, per-layer logits (B, L, C), as a pass computes them."""
    statistics = head_statistics(torch.as_tensor(logits, dtype=torch.float64))
    size, layers = logits.shape[:2]
    return ExitSignals(np.zeros(size, dtype=int) if labels is None else labels,
                       *(values.numpy() for values in statistics),
                       np.full((size, layers), np.nan) if cosine is None else np.asarray(cosine),
                       num_classes=logits.shape[-1])


def decide_all(rule: ExitRule, logits: list[list[list[float]]], cosine=None) -> list[int]:
    """Exit layers (1..L) of hand-made per-layer logits (L, B, C) under ``rule``."""
    signals = signals_of(np.asarray(logits).transpose(1, 0, 2), cosine)
    return simulate(rule, signals).exit_layers.tolist()


SURE, UNSURE = [5.0, 0.0, 0.0], [0.1, 0.0, 0.0]  # p(top) = 0.987 and 0.356
OTHER = [0.0, 5.0, 0.0]


def test_confidence_rule_exits_at_the_first_confident_layer():
    logits = [[UNSURE, SURE, UNSURE], [SURE, SURE, UNSURE], [UNSURE, SURE, UNSURE]]  # (L, B, C)
    assert decide_all(ConfidenceRule(0.9), logits) == [2, 1, 3]  # every sample leaves at L at last
    assert decide_all(ConfidenceRule(0.3), logits) == [1, 1, 1]


def test_entropy_rule_uses_nats_up_to_log_c():
    logits = [[UNSURE, SURE], [SURE, SURE]]
    assert decide_all(EntropyRule(0.1), logits) == [2, 1]
    assert decide_all(EntropyRule(math.log(3)), logits) == [1, 1]  # log C: everything exits
    assert EntropyRule.grid(6, 3)[-1] == pytest.approx(math.log(3))


def test_patience_counts_consecutive_unchanged_predictions_per_sample():
    # sample 0: A A A A; sample 1: A B A A; sample 2: A B B B
    logits = [[SURE, SURE, SURE], [SURE, OTHER, OTHER], [SURE, SURE, OTHER],
              [SURE, SURE, OTHER]]
    assert decide_all(PatienceRule(1), logits) == [2, 4, 3]
    assert decide_all(PatienceRule(2), logits) == [3, 4, 4]
    assert decide_all(PatienceRule(4), logits) == [4, 4, 4]  # t >= L never exits early


def test_state_rule_reads_consecutive_cosine_and_never_exits_at_layer_one():
    logits = [[SURE, SURE]] * 3
    cosine = [[np.nan, 0.5, 0.99], [np.nan, 0.95, 0.2]]  # (B, L)
    assert decide_all(StateRule(0.9), logits, cosine) == [3, 2]
    assert decide_all(StateRule(0.0), logits, cosine) == [2, 2]


def test_budget_rule_exits_everyone_at_its_depth():
    logits = [[SURE, UNSURE]] * 3
    assert decide_all(BudgetRule(2), logits) == [2, 2]
    assert decide_all(BudgetRule(5), logits) == [3, 3]


def test_patience_state_follows_the_survivors():
    """After layer 1 a sample exits; the others' counters must stay with the right rows."""
    rule = PatienceRule(1)
    state = rule.initial_state(3, "cpu")
    logits = torch.tensor([SURE, OTHER, SURE])
    leaving, state = rule.exits(1, LayerSignals(logits, torch.full((3,), torch.nan)), state)
    assert not leaving.any() and state["previous"].tolist() == [0, 1, 0]
    keep = torch.tensor([True, False, True])
    state = {k: v[keep] for k, v in state.items()}
    leaving, _ = rule.exits(2, LayerSignals(torch.tensor([SURE, OTHER]), torch.zeros(2)), state)
    assert leaving.tolist() == [True, False]


def test_decide_gives_leavers_and_stayers_in_batch_order_and_everyone_leaves_at_l():
    rule, state = PatienceRule(1), PatienceRule(1).initial_state(6, "cpu")
    state["previous"] = torch.tensor([1, 0, 1, 0, 0, 0])
    logits = torch.tensor([SURE, SURE, SURE, SURE, SURE, OTHER])  # top-1: 0 0 0 0 0 1
    decision = decide(rule, 2, 3, LayerSignals(logits), state)
    assert (decision.count, decision.size) == (3, 6)
    assert decision.leaving.tolist() == [1, 3, 4] and decision.staying.tolist() == [0, 2, 5]
    assert decision.predictions.tolist() == [0, 0, 0]
    assert decision.state["previous"].tolist() == [0, 0, 1]  # the stayers' rows only
    nobody = decide(rule, 1, 3, LayerSignals(logits), rule.initial_state(6, "cpu"))
    assert nobody.count == 0 and nobody.leaving is None and nobody.predictions is None
    everyone = decide(rule, 3, 3, LayerSignals(logits), rule.initial_state(6, "cpu"))
    assert everyone.count == everyone.size == 6
    assert everyone.predictions.tolist() == [0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize("name, threshold, message", [
    ("gate", 0.5, "Unknown exit rule 'gate'"),
    ("confidence", 5, "confidence rule's threshold must be a number in .0, 1."),  # never exits
    ("entropy", -0.1, "entropy rule's threshold must be a number in .0, inf"),
    ("state", "high", "state rule's threshold must be a number in .-1, 1."),
    ("patience", 1.5, "patience rule's threshold is a number of layers"),
    ("budget", 0, "budget rule's threshold must be a number in .1, inf"),
])
def test_unknown_rule_or_meaningless_threshold_is_a_clear_error(name, threshold, message):
    with pytest.raises(ConfigError, match=message):
        make_rule(name, threshold)
    assert make_rule("patience", 2).threshold == 2.0  # whole numbers given as ints are fine
    assert make_rule("budget", math.inf).threshold == math.inf  # never exits early: allowed


# ----------------------------------------------------------------------------- operating point


def test_operating_point_is_the_shallowest_within_the_drop_on_val():
    curve = [  # threshold, val accuracy, mean exit layer
        {"threshold": 0.5, "accuracy": 0.90, "mean_exit_layer": 1.5},
        {"threshold": 0.7, "accuracy": 0.955, "mean_exit_layer": 2.5},
        {"threshold": 0.8, "accuracy": 0.962, "mean_exit_layer": 2.5},
        {"threshold": 0.9, "accuracy": 0.97, "mean_exit_layer": 3.5},
    ]
    assert choose_threshold(curve, full_accuracy=0.97, max_drop=0.01) == 0.8  # tie: more accurate
    assert choose_threshold(curve, full_accuracy=0.97, max_drop=0.1) == 0.5
    assert choose_threshold(curve, full_accuracy=0.99, max_drop=0.01) is None


def test_summary_selects_on_val_and_reports_on_test():
    rng = np.random.default_rng(0)
    def cache(n):  # noqa: E306
        return signals_of(rng.normal(size=(n, 3, 3)) * 3,
                          np.concatenate([np.full((n, 1), np.nan), rng.random((n, 2))], 1),
                          labels=rng.integers(0, 3, n))
    val, test = cache(40), cache(50)
    summary = early_exit_summary(val, test, max_drop=0.05)
    assert set(summary["rules"]) == set(RULES)
    for entry in summary["rules"].values():
        chosen = entry["chosen"]
        assert chosen == {**chosen, **next(p for p in entry["test_curve"]
                                           if p["threshold"] == chosen["threshold"])}
        assert chosen["threshold"] == choose_threshold(
            entry["val_curve"], summary["full_depth_accuracy"]["val"], 0.05)
        assert chosen["speedup"] == pytest.approx(3 / chosen["mean_exit_layer"])
    assert [p["mean_exit_layer"] for p in summary["rules"]["budget"]["test_curve"]] == [1, 2, 3]


# ----------------------------------------------------------------------------- real inference


def sharpen(system: LayerwiseClassifier) -> LayerwiseClassifier:
    """Float64, eval mode, and larger head weights so that a random model's confidences spread
    over (0, 1) and the rules exit at different layers."""
    system = system.double().eval()
    with torch.no_grad():
        for module in system.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == NUM_CLASSES:
                module.weight.mul_(30)
    return system


def between_observed(values: np.ndarray, quantile: float) -> float:
    """A threshold halfway between two neighbouring observed values near ``quantile``: no
    sample sits on it, so round-off cannot flip a decision."""
    distinct = np.unique(values[np.isfinite(values)])
    k = min(int(quantile * len(distinct)), len(distinct) - 2)
    return float((distinct[k] + distinct[k + 1]) / 2)


def rules_for(signals: ExitSignals) -> list[ExitRule]:
    return [ConfidenceRule(between_observed(signals.confidence, 0.5)),
            EntropyRule(between_observed(signals.entropy, 0.5)),
            PatienceRule(1), PatienceRule(2),
            StateRule(between_observed(signals.cosine, 0.5)),
            BudgetRule(2), BudgetRule(0.5), BudgetRule(2.5), BudgetRule(NUM_LAYERS + 1)]


@pytest.fixture(params=["vit-aligned", "vit-multiexit", "bert-aligned", "bert-multiexit"])
def model_and_data(request, tmp_path):
    family, loss = request.param.split("-")
    if family == "vit":
        return sharpen(tiny_vit_system(loss)), vit_batches(2, 32)
    return sharpen(tiny_bert_system(loss, tmp_path)), bert_batches(2, 32)


def curve(*points: tuple[float, float]) -> list[dict[str, float]]:
    return [{"mean_exit_layer": depth, "accuracy": accuracy} for depth, accuracy in points]


def test_accuracy_at_depth_reads_the_upper_envelope_linearly():
    points = curve((1.0, 0.80), (2.0, 0.90), (3.0, 0.88), (4.0, 0.95))
    assert accuracy_at_depth(points, 1.5) == pytest.approx(0.85)
    assert accuracy_at_depth(points, 3.0) == pytest.approx(0.90)  # 0.88 is dominated by depth 2
    assert accuracy_at_depth(points, 0.5) is None and accuracy_at_depth(points, 4.5) is None


def summary_of(full: float, points: list[dict[str, float]]) -> dict:
    return {"full_depth_accuracy": {"test": full}, "rules": {"confidence": {"test_curve": points}}}


def test_matched_comparison_only_inside_the_region_near_full_depth():
    ours = summary_of(0.95, curve((1.0, 0.70), (2.0, 0.94), (3.0, 0.95)))
    theirs = summary_of(0.96, curve((1.5, 0.80), (2.5, 0.95), (3.0, 0.96)))
    matched = matched_comparison(ours, theirs, region=0.02)["rules"]["confidence"]
    # Depth 1.0 is outside theirs; 1.5 and 2.0 are more than 2 points below a full depth.
    assert [p["mean_exit_layer"] for p in matched["points"]] == [2.5, 3.0]
    # 0.945 - 0.95 at depth 2.5, 0.95 - 0.96 at depth 3.0:
    assert matched["min_difference"] == pytest.approx(-0.01)
    assert matched["max_abs_difference"] == pytest.approx(0.01)


def test_matched_comparison_of_a_model_with_itself_is_zero():
    ours = summary_of(0.9, curve((1.0, 0.89), (2.0, 0.9)))
    matched = matched_comparison(ours, ours)["rules"]["confidence"]
    assert matched["points"] and matched["max_abs_difference"] == 0.0


def test_block_by_block_features_equal_layer_features(model_and_data):
    system, batches = model_and_data
    inputs, _ = unpack(batches[0])
    backbone = system.backbone
    with torch.no_grad():
        blockwise = LayerwiseBackbone.layer_features(backbone, inputs)
        torch.testing.assert_close(blockwise, backbone.layer_features(inputs))


def test_logits_at_a_layer_equal_that_layer_of_layer_logits(model_and_data):
    system, batches = model_and_data
    inputs, _ = unpack(batches[0])
    with torch.no_grad():
        features = system.backbone.layer_features(inputs)  # (L, B, D)
        stacked = system.objective.layer_logits(features, system.backbone.head)
        for layer in range(1, system.num_layers + 1):
            single = system.objective.logits_at(layer, features[layer - 1], system.backbone.head)
            torch.testing.assert_close(single, stacked[layer - 1])


def test_real_inference_equals_the_simulation_for_every_rule(model_and_data):
    """Exactly: same predictions, same exit layers, in float64 with thresholds between observed
    values (in float32, a block run on fewer rows can differ by ~1e-7 and flip a sample that sits
    on a threshold; the decision logic itself is shared)."""
    system, batches = model_and_data
    cache = collect_exit_signals(system, batches, progress=False)
    rules = rules_for(cache)
    exit_layers_seen = set()
    for rule in rules:
        simulated = simulate(rule, cache)
        real, labels = EarlyExitClassifier(system, rule).predict(batches)
        assert torch.equal(real.exit_layers, simulated.exit_layers), rule
        assert torch.equal(real.predictions, simulated.predictions), rule
        assert labels.tolist() == cache.labels.tolist()
        exit_layers_seen |= set(real.exit_layers.tolist())
    assert len(exit_layers_seen) >= 3  # the rules really exit at several depths


def test_pooled_inference_equals_the_simulation_for_every_rule(model_and_data):
    """Survivors of both batches (text: padded to different lengths) run blocks together."""
    system, batches = model_and_data
    cache = collect_exit_signals(system, batches, progress=False)
    for rule in rules_for(cache):
        simulated = simulate(rule, cache)
        pooled, labels = EarlyExitClassifier(system, rule).predict(batches, pool_size=20)
        assert torch.equal(pooled.exit_layers, simulated.exit_layers), rule
        assert torch.equal(pooled.predictions, simulated.predictions), rule
        assert labels.tolist() == cache.labels.tolist()


def test_float32_inference_agrees_with_the_simulation_for_every_rule():
    """Models are float32 in use (the exact tests above run in float64): every rule runs per
    batch, at batch 1 and pooled, and agrees with the simulation but for round-off at a
    threshold (at most 2 of 64 samples)."""
    system = sharpen(tiny_vit_system("aligned")).float()
    batches = [(images.float(), labels) for images, labels in vit_batches(2, 32)]
    cache = collect_exit_signals(system, batches, progress=False)
    ones = [(images[i:i + 1], labels[i:i + 1]) for images, labels in batches
            for i in range(len(images))]
    for rule in rules_for(cache):
        simulated = simulate(rule, cache)
        classifier = EarlyExitClassifier(system, rule)
        for result, _ in (classifier.predict(batches), classifier.predict(ones),
                          classifier.predict(batches, pool_size=20)):
            differ = (result.exit_layers != simulated.exit_layers) | (
                result.predictions != simulated.predictions)
            assert int(differ.sum()) <= 2, rule


def test_pooled_blocks_run_on_full_pools_until_the_final_flush():
    system = sharpen(tiny_vit_system("aligned"))
    batches = vit_batches(6, 16)
    rule = ConfidenceRule(0.6)
    calls = []  # (block, rows) per call
    hooks = [block.register_forward_hook(
        lambda m, args, out, layer=layer: calls.append((layer, len(args[0]))))
        for layer, block in enumerate(system.backbone.model.blocks, start=1)]
    result, _ = EarlyExitClassifier(system, rule).predict(batches, pool_size=32)
    for hook in hooks:
        hook.remove()
    for layer in range(1, NUM_LAYERS + 1):  # every sample that reached block l ran it once
        assert sum(rows for block, rows in calls if block == layer) == int(
            (result.exit_layers >= layer).sum())
    # Only the final flush, at most once per block, runs on fewer than pool_size samples.
    partial = [block for block, rows in calls if rows < 32]
    assert len(partial) == len(set(partial)) <= NUM_LAYERS
    assert len(calls) < NUM_LAYERS * len(batches)  # fewer, larger block calls than per batch


def test_a_fixed_budget_reads_out_only_at_its_depth():
    """Budget t costs t blocks and one read-out + head per sample: nothing is read before t."""
    system = sharpen(tiny_vit_system("aligned"))
    batches = vit_batches(2, 16)
    reads, blocks = [], []  # rows per read-out (the final norm runs only there), blocks run
    model = system.backbone.model
    hooks = [model.norm.register_forward_hook(lambda m, args, out: reads.append(len(args[0])))]
    hooks += [block.register_forward_hook(lambda m, args, out, layer=layer: blocks.append(layer))
              for layer, block in enumerate(model.blocks, start=1)]
    classifier = EarlyExitClassifier(system, BudgetRule(3))
    try:
        for pool_size in (None, 32):
            reads.clear()
            blocks.clear()
            result, _ = classifier.predict(batches, pool_size=pool_size)
            assert (result.exit_layers == 3).all()
            assert sum(reads) == 32, pool_size
            assert set(blocks) == {1, 2, 3}, pool_size
    finally:
        for hook in hooks:
            hook.remove()


def test_the_state_rule_runs_the_head_only_where_samples_leave():
    """The state rule reads the cosine, not the logits: one sample runs the head once, at its exit
    layer, while confidence needs it after every layer the sample reaches."""
    system = sharpen(tiny_vit_system("aligned"))
    (images, labels), = vit_batches(1, 8)
    cache = collect_exit_signals(system, [(images, labels)], progress=False)
    rules = rules_for(cache)
    state, confidence = rules[4], rules[0]
    heads = []
    hook = system.backbone.model.head.register_forward_hook(
        lambda m, args, out: heads.append(len(args[0])))
    try:
        for rule, head_calls in ((state, lambda layer: 1), (confidence, lambda layer: layer)):
            for image in images.split(1):
                heads.clear()
                result = EarlyExitClassifier(system, rule)(image)
                assert len(heads) == head_calls(int(result.exit_layers)), rule
    finally:
        hook.remove()


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_pool_size_must_be_a_positive_integer(size):
    system = sharpen(tiny_vit_system("aligned"))
    with pytest.raises(ValueError, match="pool_size must be a positive integer"):
        EarlyExitClassifier(system, ConfidenceRule(0.5)).predict(vit_batches(1, 4), size)


def test_results_are_normal_tensors_that_callers_may_edit():
    """Inference runs in inference mode; what it hands back must not be an inference tensor."""
    system = sharpen(tiny_vit_system("aligned"))
    batches = vit_batches(2, 8)
    classifier = EarlyExitClassifier(system, ConfidenceRule(0.5))
    results = [classifier(batches[0][0])]
    results += [classifier.predict(batches, pool_size=size)[0] for size in (None, 8)]
    for result in results:
        assert not result.predictions.is_inference()
        result.exit_layers.add_(0)  # in place: raises on an inference tensor


def test_a_rule_that_reads_the_cosine_must_read_from_layer_one():
    class LateStateRule(StateRule):
        def first_read_layer(self):
            return 2

    with pytest.raises(ValueError, match="must read from layer 1"):
        decide_all(LateStateRule(0.5), [[SURE]] * 3, [[0.9] * 3])


def test_batch_size_one_equals_batch_size_64():
    system = sharpen(tiny_vit_system("multiexit"))
    (images, labels), = vit_batches(1, 64)
    cache = collect_exit_signals(system, [(images, labels)], progress=False)
    for rule in rules_for(cache):
        classifier = EarlyExitClassifier(system, rule)
        whole = classifier(images)
        one_by_one = [classifier(images[i:i + 1]) for i in range(64)]
        assert torch.equal(whole.exit_layers, torch.cat([r.exit_layers for r in one_by_one]))
        assert torch.equal(whole.predictions, torch.cat([r.predictions for r in one_by_one]))


def test_exited_samples_are_not_computed_by_later_blocks():
    system = sharpen(tiny_vit_system("aligned"))
    (images, labels), = vit_batches(1, 64)
    rule = rules_for(collect_exit_signals(system, [(images, labels)], progress=False))[0]
    rows_seen = []
    hooks = [block.register_forward_hook(lambda m, args, out: rows_seen.append(len(args[0])))
             for block in system.backbone.model.blocks]
    result = EarlyExitClassifier(system, rule)(images)
    for hook in hooks:
        hook.remove()
    running = [int((result.exit_layers >= layer).sum()) for layer in range(1, NUM_LAYERS + 1)]
    assert rows_seen == [n for n in running if n > 0]  # block l ran on the survivors only
    assert rows_seen[0] == 64 and rows_seen[-1] < 64


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("name, paper", [("deit_small_patch16_224", 16.08),
                                         ("deit_base_patch16_224", 8.89)])
def test_parameter_saving_reproduces_the_papers_deit_figures(name, paper):
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    total = sum(p.numel() for p in model.parameters())
    shape = (len(model.blocks), model.num_features, 1000)
    # The paper's convention: head weights without biases, over the per-layer-head model.
    assert shared_head_saving(total, *shape, bias=False) == pytest.approx(paper, abs=0.005)
    assert shared_head_saving(total, *shape) > paper  # biases included: 16.11 / 8.90


def test_parameter_summary_counts_what_multiexit_adds():
    system = tiny_vit_system("multiexit")
    summary = parameter_summary(system.backbone)
    assert summary["per_layer_heads_extra"] == system.objective.extra_parameters()
    assert summary["model"] == sum(p.numel() for p in system.backbone.parameters())


def test_early_exit_on_a_regression_model_is_a_clear_error():
    # STS-B checkpoints have one output: no class probabilities for the rules to read, and
    # "predictions" of class 0 for every sample would be meaningless.
    torch.manual_seed(0)
    model = {"_target_": "aligned.models.backbones.timm_vit.TimmViT",
             "name": "vit_tiny_patch16_224",
             "num_classes": 1, "img_size": 8, "in_chans": 1, "patch_size": 4, "embed_dim": 16,
             "depth": 2, "num_heads": 2}
    system = LayerwiseClassifier(model, {"_target_": LOSSES["aligned"]}, metrics=("pearson",))
    rule = make_rule("confidence", 0.9)
    batches = [(torch.randn(4, 1, 8, 8), torch.randn(4))]
    for start in (lambda: EarlyExitClassifier(system, rule),
                  lambda: PooledEarlyExit(system, rule, pool_size=4),
                  lambda: collect_exit_signals(system, batches, progress=False)):
        with pytest.raises(ConfigError, match="this checkpoint is a regression model"):
            start()
