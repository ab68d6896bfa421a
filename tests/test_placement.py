"""The device and precision of inference (aligned.placement): resolved through Fabric, a clear
error for a device the machine lacks, autocast around the model only (never the float64
accumulators), and evaluate.py / early exit run through it."""

from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from conftest import TINY, compose_evaluate, compose_train
from tiny_models import tiny_vit_system, vit_batches

from aligned.analysis import cka, similarity
from aligned.analysis.layerwise_pass import run_layerwise_pass
from aligned.config import ConfigError
from aligned.early_exit.inference import EarlyExitClassifier, load_early_exit
from aligned.early_exit.rules import BudgetRule, ConfidenceRule
from aligned.early_exit.signals import collect_exit_signals
from aligned.evaluation import evaluate
from aligned.placement import resolve_placement
from aligned.training.fit import train


def test_cpu_in_float32_is_the_plain_model():
    placement = resolve_placement("cpu", "32")
    assert placement.device == torch.device("cpu")
    assert placement.precision == "32-true"
    assert isinstance(placement.autocast(), nullcontext)
    assert placement.describe() == {"device": "cpu", "device_name": "cpu",
                                    "precision": "32-true"}


def test_auto_is_the_cpu_on_a_machine_without_a_gpu():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_placement("auto", 32).device == torch.device("cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "gpu"])
def test_a_gpu_the_machine_lacks_is_one_clear_error(device):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=rf"device={device}: .*This machine has: cpu; use "
                                          "device=auto"):
        resolve_placement(device, "32")


@pytest.mark.parametrize("device, precision, message", [
    ("tpu0", "32", "device must be one of auto, cpu, cuda, cuda:<index>, gpu, mps, got 'tpu0'"),
    ("cuda:x", "32", "device must be one of .* got 'cuda:x'"),
    ("cpu", "bf16", "precision must be one of 32, 32-true, bf16-mixed, 16-mixed, got 'bf16'"),
    ("cpu", "bf16-true", "precision must be one of .* got 'bf16-true'"),
])
def test_unknown_device_or_precision_is_one_clear_error(device, precision, message):
    with pytest.raises(ConfigError, match=message):
        resolve_placement(device, precision)


def test_bf16_autocast_wraps_the_model_but_never_the_accumulators(monkeypatch):
    """The forward runs in bf16; COS, CKA and the class-mean sums see no autocast (they would
    lose float64/float32 precision to bf16 matmuls)."""
    system = tiny_vit_system("aligned").eval()
    seen = {"blocks": [], "accumulators": []}
    block = system.backbone.run_block

    def run_block(layer, state):
        seen["blocks"].append(torch.is_autocast_enabled("cpu"))
        return block(layer, state)

    monkeypatch.setattr(system.backbone, "run_block", run_block)
    for accumulator in (cka.MinibatchCKA, similarity.CosAccumulator):
        update = accumulator.update

        def recording(self, features, update=update):
            seen["accumulators"].append(torch.is_autocast_enabled("cpu"))
            return update(self, features)

        monkeypatch.setattr(accumulator, "update", recording)
    placement = resolve_placement("cpu", "bf16-mixed")
    batches = [(images.float(), labels) for images, labels in vit_batches(2, 16)]
    outputs = run_layerwise_pass(system, batches, progress=False, autocast=placement.autocast)
    assert seen["blocks"] and all(seen["blocks"])
    assert len(seen["accumulators"]) == 4 and not any(seen["accumulators"])  # CKA, 2x COS
    assert np.isfinite(outputs.cka).all() and np.isfinite(outputs.cos).all()
    plain = run_layerwise_pass(system, batches, progress=False)
    # bf16 keeps ~3 significant digits: the similarities move, but only by its round-off.
    np.testing.assert_allclose(outputs.cka, plain.cka, atol=0.05)
    signals = collect_exit_signals(system, batches, progress=False, autocast=placement.autocast)
    np.testing.assert_array_equal(signals.top1, outputs.predictions)
    np.testing.assert_allclose(signals.confidence, outputs.confidences)
    np.testing.assert_allclose(signals.entropy, outputs.entropies)
    np.testing.assert_allclose(signals.cosine, outputs.layer_cosine)


def test_early_exit_runs_its_blocks_under_the_autocast_it_is_given(monkeypatch):
    system = tiny_vit_system("aligned").eval()
    seen = []
    block = system.backbone.run_block
    monkeypatch.setattr(system.backbone, "run_block",
                        lambda layer, state: seen.append(torch.is_autocast_enabled("cpu"))
                        or block(layer, state))
    images = vit_batches(1, 8)[0][0].float()
    placement = resolve_placement("cpu", "bf16-mixed")
    result = EarlyExitClassifier(system, BudgetRule(2), placement.autocast)(images)
    assert seen == [True, True] and result.exit_layers.tolist() == [2] * 8
    seen.clear()
    pooled, _ = EarlyExitClassifier(system, BudgetRule(2), placement.autocast).predict(
        vit_batches(2, 8), pool_size=8)
    assert seen and all(seen) and len(pooled.predictions) == 16
    seen.clear()
    EarlyExitClassifier(system, BudgetRule(2))(images)  # the default: no autocast
    assert seen == [False, False]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return train(compose_train(TINY, run_dir))["checkpoint"]


def test_load_early_exit_takes_a_device_and_rejects_one_the_machine_lacks(checkpoint):
    classifier = load_early_exit(checkpoint, "confidence", 0.9, device="cpu")
    assert classifier.system.device == torch.device("cpu")
    assert isinstance(classifier.rule, ConfidenceRule)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device=cuda"):
            load_early_exit(checkpoint, "confidence", 0.9, device="cuda")


def test_evaluate_records_the_device_and_gives_the_same_numbers_on_it(checkpoint, tmp_path):
    """device=cpu precision=32 is the default path on this machine: the same figures, and
    evaluation.json says where they were computed."""
    plain = evaluate(compose_evaluate([f"ckpt_path={checkpoint}", "early_exit.enabled=false",
                                       "device=cpu"], tmp_path / "a"))
    mixed = evaluate(compose_evaluate([f"ckpt_path={checkpoint}", "early_exit.enabled=false",
                                       "device=cpu", "precision=bf16-mixed"], tmp_path / "b"))
    written = json.loads((tmp_path / "b" / "evaluation.json").read_text())
    assert (plain["device"], plain["precision"]) == ("cpu", "32-true")
    assert (written["device"], written["precision"]) == ("cpu", "bf16-mixed")
    np.testing.assert_allclose(mixed["similarity"]["cka"], plain["similarity"]["cka"], atol=0.05)
    assert abs(np.subtract(mixed["layer_accuracy"], plain["layer_accuracy"])).max() <= 0.05
    with pytest.raises(ConfigError, match="precision must be one of"):
        evaluate(compose_evaluate([f"ckpt_path={checkpoint}", "precision=8"], tmp_path / "c"))
