"""Early-exit inference on inputs a user may hand it by mistake: other float precisions (cast,
same result), wrong image shapes, empty or unembeddable text batches, unlabelled batches in
predict(); per batch and pooled alike, and the caller's tensors stay as they were."""

from __future__ import annotations

import pytest
import torch
from conftest import OLD_CHECKPOINT
from tiny_models import NUM_CLASSES, bert_batches, tiny_bert_system, tiny_vit_system

from aligned.config import ConfigError
from aligned.early_exit.inference import EarlyExitClassifier, load_early_exit
from aligned.early_exit.pooled import PooledEarlyExit
from aligned.early_exit.rules import BudgetRule, ConfidenceRule, ExitResult

BATCH = 16


def inputs_of(batch):
    """The model inputs of a loader batch: (images, labels) or a dict with labels."""
    if isinstance(batch, dict):
        return {key: value for key, value in batch.items() if key != "labels"}
    return batch[0]


# Each way of running early exit on a list of labelled batches: per batch through __call__,
# and predict() per batch and pooled.
MODES = {
    "call": lambda classifier, batches: ExitResult.cat([classifier(inputs_of(b))
                                                        for b in batches]),
    "predict": lambda classifier, batches: classifier.predict(batches)[0],
    "pooled": lambda classifier, batches: classifier.predict(batches, pool_size=BATCH)[0],
}


def spread(system):
    """Eval mode (float32), with head weights large enough that the confidences of a random
    model spread and samples exit at different layers."""
    system.eval()
    with torch.no_grad():
        for module in system.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == NUM_CLASSES:
                module.weight.mul_(30)
    return system


@pytest.fixture(scope="module")
def vit():
    system = spread(tiny_vit_system("aligned"))
    images = torch.randn(BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # a threshold at the median confidence of layer 1: exits spread
        confidence = system.backbone(images)[0].softmax(-1).max(-1).values
    return EarlyExitClassifier(system, ConfidenceRule(float(confidence.median()))), images


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    system = spread(tiny_bert_system("aligned", tmp_path_factory.mktemp("bert")))
    return EarlyExitClassifier(system, ConfidenceRule(0.5))


def labelled(images: torch.Tensor) -> list:
    return [(images, torch.zeros(len(images), dtype=torch.long))]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_float_precisions_are_cast_and_agree_with_float32(vit, dtype, mode):
    classifier, images = vit
    given = images.to(dtype)
    before = given.clone()
    expected = MODES[mode](classifier, labelled(given.float()))  # the same values in float32
    result = MODES[mode](classifier, labelled(given))
    assert torch.equal(result.predictions, expected.predictions)
    assert torch.equal(result.exit_layers, expected.exit_layers)
    assert len(set(expected.exit_layers.tolist())) > 1  # the rule really decided per sample
    assert given.dtype == dtype and torch.equal(given, before)  # the caller's tensor as it was


@pytest.mark.parametrize("mode", MODES)
def test_the_callers_inputs_are_not_modified(vit, bert, mode):
    classifier, images = vit
    text = bert_batches(1, 8)[0]
    text["input_ids"] = text["input_ids"].int()  # int32 ids, as some tokenizers give
    for run, batch in ((classifier, (images.double(), torch.zeros(BATCH))), (bert, text)):
        given = list(batch.values()) if isinstance(batch, dict) else list(batch)
        before = [value.clone() for value in given]
        MODES[mode](run, [batch])
        for old, new in zip(before, given, strict=True):
            assert old.dtype == new.dtype and torch.equal(old, new)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(4, 1, 16, 16), (4, 3, 8, 8), (4, 1, 8, 4), (1, 8, 8)])
def test_images_of_another_shape_name_the_shape_the_model_expects(vit, shape, mode):
    classifier, _ = vit
    with pytest.raises(ConfigError, match=r"Expected float images .* = \(B, 1, 8, 8\), the size "
                                          rf"the model was built for .*got \({shape[0]}, "):
        MODES[mode](classifier, labelled(torch.randn(shape)))


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_batch_gives_an_empty_result_for_text_as_for_images(vit, bert, mode):
    classifier, images = vit
    text = bert_batches(2, 8)
    empty_text = {key: value[:0] for key, value in text[0].items()}  # (0, T) ids, (0,) labels
    for run, batches, empty in ((classifier, labelled(images), labelled(images[:0])),
                                (bert, text, [empty_text])):
        nothing = MODES[mode](run, empty)
        assert nothing.predictions.shape == nothing.exit_layers.shape == (0,)
        # An empty batch among others changes nothing for the others.
        both = MODES[mode](run, [*batches[:1], *empty, *batches[1:]])
        alone = MODES[mode](run, batches)
        assert torch.equal(both.predictions, alone.predictions)
        assert torch.equal(both.exit_layers, alone.exit_layers)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key, damage, message", [
    ("input_ids", lambda ids: ids.float(), r"input_ids must be integer ids in \[0, 50\) \(the "
                                           r"model's vocabulary size is 50\), got torch.float32"),
    ("input_ids", lambda ids: ids + 50, r"input_ids must be ids in \[0, 50\) \(the model's "
                                        "vocabulary size is 50\\); got ids from 50 to"),
    ("input_ids", lambda ids: ids - 100, r"got ids from -\d+ to"),
    ("input_ids", lambda ids: ids[:, :0], r"input_ids has no tokens \(shape \(8, 0\)\)"),
    ("input_ids", lambda ids: ids.repeat(1, 6), r"longer than the model's "
                                                r"max_position_embeddings=32"),
    ("token_type_ids", lambda types: types + 2, r"token_type_ids must be ids in \[0, 2\)"),
    ("attention_mask", lambda mask: mask[:, 1:], r"attention_mask has shape \(8, \d\) but "),
])
def test_token_ids_the_model_cannot_embed_are_one_clear_error(bert, mode, key, damage, message):
    batch = bert_batches(1, 8)[0]
    batch[key] = damage(batch[key])
    if key == "input_ids" and batch[key].shape[1] != batch["attention_mask"].shape[1]:
        batch["attention_mask"] = torch.ones(batch[key].shape, dtype=torch.long)
        batch["token_type_ids"] = torch.zeros(batch[key].shape, dtype=torch.long)
    with pytest.raises(ConfigError, match=message):
        MODES[mode](bert, [batch])


@pytest.mark.parametrize("batches, problem", [
    (lambda x: [x], r"one batch is a bare tensor of shape \(16, 1, 8, 8\)"),
    # Two images would unpack into one "image" and one "label" without the check.
    (lambda x: [x[:2]], r"one batch is a bare tensor of shape \(2, 1, 8, 8\)"),
    (lambda x: [[x]], "one batch is a list of 1 items"),
    (lambda x: [(x, torch.zeros(3))], r"inputs with labels of shape \(3,\) for 16 samples"),
    (lambda x: [(x, [0] * 16)], "inputs with labels a list for 16 samples"),
    (lambda x: x, "got one Tensor"),
])
@pytest.mark.parametrize("pool_size", [None, 4])
def test_predict_on_batches_without_labels_says_what_it_reads(vit, batches, problem, pool_size):
    classifier, images = vit
    with pytest.raises(ConfigError, match=rf"predict\(\) reads a data loader .*{problem}"):
        classifier.predict(batches(images), pool_size)


def test_predict_on_text_batches_without_labels_says_what_it_reads(bert):
    batch = {k: v for k, v in bert_batches(1, 4)[0].items() if k != "labels"}
    with pytest.raises(ConfigError, match="one batch is a dict without 'labels'"):
        bert.predict([batch])
    with pytest.raises(ConfigError, match="got one dict. For one batch of inputs, call"):
        bert.predict(batch)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_token_ids_of_other_integer_types_give_the_int64_result(bert, dtype):
    batch = inputs_of(bert_batches(1, 8)[0])
    expected = bert(batch)
    result = bert({**batch, "input_ids": batch["input_ids"].to(dtype),
                   "token_type_ids": batch["token_type_ids"].to(dtype)})
    assert torch.equal(result.predictions, expected.predictions)
    assert torch.equal(result.exit_layers, expected.exit_layers)
    features = bert.system.backbone.layer_features(
        {**batch, "input_ids": batch["input_ids"].to(dtype)})  # HF's own forward, too
    assert torch.equal(features, bert.system.backbone.layer_features(batch))


# -- bad numbers: non-finite inputs and thresholds -------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_images_are_one_clear_error_naming_the_samples(vit, mode, value):
    """Without the check a NaN image ran to the last layer and left with class 0."""
    classifier, images = vit
    damaged = images.clone()
    damaged[3, 0, 2, 5] = value
    damaged[11] = value
    with pytest.raises(ConfigError, match=r"NaN or inf \(after the model's embedding\) in "
                                          r"sample\(s\) 3, 11 of a batch of 16 \(0-based\)"):
        MODES[mode](classifier, labelled(damaged))


def test_a_checkpoint_loaded_for_early_exit_refuses_nan_images():
    classifier = load_early_exit(OLD_CHECKPOINT, "confidence", 0.5, device="cpu")
    with pytest.raises(ConfigError, match=r"NaN or inf .* sample\(s\) 0, 1 of a batch of 2"):
        classifier(torch.full((2, 1, 8, 8), float("nan")))


def test_non_finite_token_embeddings_are_refused_too(bert):
    """Text cannot be NaN, but a checkpoint's embedding can: the samples using it are named."""
    batch = bert_batches(1, 8)[0]
    token = int(batch["input_ids"][5, 1])
    embeddings = bert.system.backbone.model.get_input_embeddings().weight
    kept = embeddings[token].clone()
    with torch.no_grad():
        embeddings[token] = float("nan")
    try:
        users = sorted({int(row) for row in (batch["input_ids"] == token).nonzero()[:, 0]})
        with pytest.raises(ConfigError, match=rf"sample\(s\) {', '.join(map(str, users))} of"):
            bert(inputs_of(batch))
    finally:
        with torch.no_grad():
            embeddings[token] = kept


def test_pooled_inference_after_refused_inputs_gives_the_result_of_a_fresh_run(vit):
    classifier, images = vit
    pooled = PooledEarlyExit(classifier.system, classifier.rule, pool_size=4)
    damaged = images.clone()
    damaged[-1] = float("nan")
    with pytest.raises(ConfigError, match="NaN or inf"):
        pooled.run([images[:8], damaged])  # the first batch is queued when the second fails
    again = pooled.run([images])
    fresh = PooledEarlyExit(classifier.system, classifier.rule, pool_size=4).run([images])
    assert torch.equal(again.predictions, fresh.predictions)
    assert torch.equal(again.exit_layers, fresh.exit_layers)


@pytest.mark.parametrize("build", [
    lambda system, rule: EarlyExitClassifier(system, rule),
    lambda system, rule: PooledEarlyExit(system, rule, pool_size=4),
], ids=["per batch", "pooled"])
def test_a_rule_built_with_a_nan_threshold_is_refused(vit, build):
    classifier, _ = vit
    with pytest.raises(ConfigError, match=r"The confidence rule's threshold is NaN, which no "
                                          r"signal passes; give a number in \[0, 1\]"):
        build(classifier.system, ConfidenceRule(float("nan")))
    build(classifier.system, BudgetRule(0.5))  # a threshold beyond make_rule's range: meant
