"""What the evaluation passes share (aligned.analysis.similarity_pass, model_batches): the
classifier and cross-model passes give COS, minibatch CKA and the layer and class means equal to
direct computations on all the features, a batch under MIN_SAMPLES_CKA left out of CKA; a
causal LM's batch of 1-token sequences adds nothing; a pass with no batch large enough for CKA
is one error, in one wording that names what a sample is; and the model runs under autocast
while what the loop yields does not."""

from __future__ import annotations

import re
from functools import partial

import numpy as np
import pytest
import torch
from causal_lm_helpers import save_tiny_lm
from tiny_models import NUM_CLASSES, tiny_vit_system, vit_batches

from aligned.analysis.cka import minibatch_cka
from aligned.analysis.cos import cos_similarity
from aligned.analysis.cross_model_pass import run_cross_model_pass
from aligned.analysis.layerwise_pass import run_layerwise_pass
from aligned.analysis.model_batches import model_batches
from aligned.analysis.token_pass import run_token_pass, sampled_token_batches
from aligned.config import ConfigError
from aligned.placement import resolve_placement
from aligned.training.system import LayerwiseClassifier

BATCHES = vit_batches(3, 6)  # 18 samples in CKA's three minibatches
SHORT = vit_batches(1, 3)  # 3 samples: under minibatch CKA's 4, left out of it
NO_CKA = "Minibatch CKA needs batches of at least 4 {}; this split has {} in batches of fewer."


def all_features(system: LayerwiseClassifier, batches: list) -> torch.Tensor:
    """(L, N, D) features of every batch, the direct way."""
    with torch.no_grad():
        return torch.cat([system.backbone.layer_features(images) for images, _ in batches], 1)


def other_vit() -> LayerwiseClassifier:
    """The tiny ViT with perturbed weights: another model of the same width."""
    system = tiny_vit_system("aligned").eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in system.backbone.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return system


@pytest.mark.parametrize("centering", ["samples", "features", "none"])
def test_the_classifier_pass_equals_direct_computations(centering):
    system = tiny_vit_system("aligned").eval()
    outputs = run_layerwise_pass(system, BATCHES + SHORT, centering, progress=False)
    features = all_features(system, BATCHES + SHORT).double()  # (L, 21, D)
    labels = torch.cat([labels for _, labels in BATCHES + SHORT])
    np.testing.assert_allclose(outputs.cos, cos_similarity(features, centering=centering),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(outputs.cka, minibatch_cka(features[:, :18], batch_size=6),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(outputs.layer_means, features.mean(1), rtol=0, atol=1e-12)
    for label in range(NUM_CLASSES):
        chosen = labels == label
        expected = features[:, chosen].mean(1) if chosen.any() else 0.0
        np.testing.assert_allclose(outputs.class_means[:, label], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("centering", ["samples", "features"])
def test_the_cross_model_pass_equals_direct_computations(centering):
    systems = tiny_vit_system("aligned").eval(), other_vit()
    features = [all_features(system, BATCHES + SHORT).double() for system in systems]
    means = tuple(stack.mean(1).numpy() for stack in features)
    cross = run_cross_model_pass(systems, (BATCHES + SHORT,) * 2, means, centering,
                                 progress=False)
    assert cross["layers"] == [4, 4] and cross["widths"] == [16, 16]
    np.testing.assert_allclose(cross["cos"], cos_similarity(*features, centering=centering),
                               rtol=0, atol=1e-12)
    reference = minibatch_cka(features[0][:, :18], features[1][:, :18], batch_size=6)
    np.testing.assert_allclose(cross["cka"], reference, rtol=0, atol=1e-12)
    assert not np.allclose(cross["cka"], minibatch_cka(features[0][:, :18], batch_size=6))
    assert torch.is_grad_enabled()  # two streams read in step leak no grad mode


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> LayerwiseClassifier:
    directory = save_tiny_lm(tmp_path_factory.mktemp("similarity_pass") / "llama", "llama")
    model = {"_target_": "aligned.models.backbones.hf_decoder.HFDecoder",
             "name_or_path": str(directory)}
    system = LayerwiseClassifier(model, {"_target_": "aligned.models.objectives.AlignedObjective"})
    return system.eval()


def token_batch(*sequences: list[int]) -> dict[str, torch.Tensor]:
    """Sequences right-padded with 0 (labels -100 there)."""
    width = max(len(sequence) for sequence in sequences)
    ids = torch.tensor([sequence + [0] * (width - len(sequence)) for sequence in sequences])
    mask = (ids != 0).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def test_a_batch_of_one_token_sequences_adds_nothing_to_the_token_pass(tiny_lm):
    batch = token_batch([5, 6, 7, 8, 9], [9, 8, 7, 6])  # 4 + 3 predicted tokens
    plain = run_token_pass(tiny_lm, [batch], progress=False)
    padded = run_token_pass(tiny_lm, [token_batch([5], [6]), batch], progress=False)
    assert padded.num_sequences == 4 and plain.num_sequences == 2
    assert len(padded.labels) == 7 and padded.cka_tokens == 7
    for field in ("cos", "cka", "layer_means", "nll", "predictions", "layer_cosine"):
        np.testing.assert_array_equal(getattr(padded, field), getattr(plain, field))


def test_a_pass_without_a_batch_large_enough_for_cka_is_one_error_naming_its_samples(tiny_lm):
    system = tiny_vit_system("aligned").eval()
    with pytest.raises(ConfigError, match=re.escape(NO_CKA.format("samples", 6))):
        run_layerwise_pass(system, SHORT * 2, progress=False)
    means = (np.zeros((4, 16)),) * 2
    with pytest.raises(ConfigError, match=re.escape(NO_CKA.format("samples", 3))):
        run_cross_model_pass((system, system), (SHORT, SHORT), means, progress=False)
    short = [token_batch([5, 6, 7])]  # 2 predicted tokens
    with pytest.raises(ConfigError, match=re.escape(NO_CKA.format("predicted tokens", 2))):
        run_token_pass(tiny_lm, short, progress=False)
    means = (np.zeros((3, 32)),) * 2
    with pytest.raises(ConfigError, match=re.escape(NO_CKA.format("predicted tokens", 2))):
        run_cross_model_pass((tiny_lm, tiny_lm), (short, short), means, progress=False,
                             stream=partial(sampled_token_batches, max_tokens=4))


def test_the_model_runs_under_autocast_and_without_grad_and_what_it_yields_outside_both():
    system = tiny_vit_system("aligned")
    autocast = resolve_placement("cpu", "bf16-mixed").autocast
    inside = model_batches(
        system, [1, 2], lambda batch: (torch.is_autocast_enabled("cpu"), torch.is_grad_enabled()),
        "test", False, autocast)
    seen = [(forward, torch.is_autocast_enabled("cpu"), torch.is_grad_enabled())
            for forward in inside]
    assert seen == [((True, False), False, True)] * 2

