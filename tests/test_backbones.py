"""Golden equivalence: the shared head on the last layer reproduces each backbone's own logits."""

from __future__ import annotations

import pytest
import timm
import torch
from tiny_models import TINY_VIT, tiny_bert_dir, token_batch
from transformers import (
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from aligned.config import ConfigError
from aligned.models.backbones.hf_encoder import HFEncoder
from aligned.models.backbones.timm_vit import TimmViT


@pytest.mark.parametrize(
    "name, extra",
    [
        ("vit_tiny_patch16_224", {}),  # CLS token
        ("vit_tiny_patch16_224", {"global_pool": "avg"}),  # avg pool, norm lives in fc_norm
        ("deit_tiny_patch16_224", {}),
    ],
)
def test_vit_shared_head_on_last_layer_equals_native_logits(name, extra):
    torch.manual_seed(0)
    backbone = TimmViT(name, num_classes=5, **TINY_VIT, **extra).eval()
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        layer_logits = backbone(images)  # (L, B, C)
        native = backbone.model(images)
    assert layer_logits.shape == (3, 4, 5)
    torch.testing.assert_close(layer_logits[-1], native)
    # Earlier layers are genuinely different read-outs, not copies of the last one.
    assert not torch.allclose(layer_logits[0], native)


def test_vit_features_match_timm_forward_intermediates():
    torch.manual_seed(0)
    backbone = TimmViT("vit_tiny_patch16_224", num_classes=5, **TINY_VIT).eval()
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ours = backbone.layer_features(images)
        spatial, prefix = zip(
            *backbone.model.forward_intermediates(
                images, norm=True, output_fmt="NLC", return_prefix_tokens=True,
                intermediates_only=True,
            ), strict=True,
        )
    for layer, (cls, _) in enumerate(zip(prefix, spatial, strict=True)):
        torch.testing.assert_close(ours[layer], cls[:, 0])


def test_vit_inputs_it_cannot_read_are_one_clear_error():
    backbone = TimmViT("vit_tiny_patch16_224", num_classes=5, **TINY_VIT).eval()
    images = torch.randn(2, 1, 8, 8)
    for bad, message in [((images, torch.zeros(2)), "got a tuple"),
                         (images[0], r"got \(1, 8, 8\)"),
                         (images.repeat(1, 3, 1, 1), r"Expected float images \(B, 1, H, W\)"),
                         (images.to(torch.uint8), "torch.uint8")]:
        with pytest.raises(ValueError, match=message):
            backbone(bad)


def test_vit_loads_local_pretrained_weights_and_starts_a_new_classifier(tmp_path):
    """A local copy of ImageNet-style weights (1000 classes) fine-tuned on 5 classes."""
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=1000, **TINY_VIT)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    loaded = TimmViT("vit_tiny_patch16_224", num_classes=5, checkpoint_path=str(path), **TINY_VIT)
    state = loaded.model.state_dict()
    for name, tensor in source.state_dict().items():
        if name.startswith("head."):
            assert state[name].shape[0] == 5
        else:
            torch.testing.assert_close(state[name], tensor)


def test_pretrained_weights_for_images_their_patches_do_not_tile_are_a_clear_error(tmp_path):
    # e.g. a patch-16 DeiT on 8x8 digits: checked before loading, not reported as a download
    # failure from timm's position-embedding resampling.
    path = tmp_path / "weights.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=10).state_dict(), path)
    with pytest.raises(ConfigError, match="Patches of 16 pixels do not tile images of 8"):
        TimmViT("vit_tiny_patch16_224", num_classes=10, checkpoint_path=str(path), img_size=8)
    assert TimmViT("vit_tiny_patch16_224", num_classes=10, checkpoint_path=str(path),
                   img_size=32).model.patch_embed.img_size == (32, 32)


def test_vit_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_path"):
        TimmViT("vit_tiny_patch16_224", num_classes=5, checkpoint_path=str(tmp_path / "no.pth"),
                **TINY_VIT)


@pytest.mark.parametrize(
    "name, message",
    [("resnet18", "supports timm VisionTransformer"), ("vit_nonexistent", "Unknown timm model")],
)
def test_unsupported_timm_models_are_rejected(name, message):
    with pytest.raises(ConfigError, match=message):
        TimmViT(name, num_classes=5)


def test_distilled_deit_is_rejected():
    with pytest.raises(ConfigError, match="VisionTransformerDistilled"):
        TimmViT("deit_tiny_distilled_patch16_224", num_classes=5, **TINY_VIT)


def test_bert_shared_head_on_last_layer_equals_native_logits(tmp_path):
    backbone = HFEncoder(tiny_bert_dir(tmp_path), num_classes=3, pooling="cls").eval()
    batch = token_batch()
    with torch.no_grad():
        layer_logits = backbone(batch)
        native = backbone.model(**batch).logits
    assert layer_logits.shape == (3, 2, 3)
    torch.testing.assert_close(layer_logits[-1], native)


def test_bert_inputs_that_are_not_tokenised_are_one_clear_error(tmp_path):
    backbone = HFEncoder(tiny_bert_dir(tmp_path), num_classes=3).eval()
    for bad in ("a sentence", ["a", "b"], {"text": "a sentence"}):
        with pytest.raises(ValueError, match="Expected tokenised text"):
            backbone.begin(bad)


def test_bert_loads_saved_weights(tmp_path):
    path = tiny_bert_dir(tmp_path)
    reference = BertForSequenceClassification.from_pretrained(path)
    backbone = HFEncoder(path, num_classes=3)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(backbone.model.state_dict()[name], tensor)


def test_bert_saved_with_another_label_count_gets_a_new_classifier(tmp_path):
    # e.g. an MNLI model (3 labels) fine-tuned on RTE (2): the encoder loads, the classifier
    # starts anew (HF's ignore_mismatched_sizes), as a timm model's head does.
    path = tiny_bert_dir(tmp_path, num_labels=3)
    reference = BertForSequenceClassification.from_pretrained(path).state_dict()
    state = HFEncoder(path, num_classes=2).model.state_dict()
    assert state["classifier.weight"].shape == (2, 16)
    for name, tensor in reference.items():
        if not name.startswith("classifier."):
            torch.testing.assert_close(state[name], tensor)


def test_bert_mean_pooling_is_masked_mean_then_pooler(tmp_path):
    backbone = HFEncoder(tiny_bert_dir(tmp_path), num_classes=3, pooling="mean").eval()
    batch = token_batch()
    with torch.no_grad():
        features = backbone.layer_features(batch)
        hidden = backbone.model.bert(**batch, output_hidden_states=True).hidden_states
        second = hidden[2][1, :3].mean(0)  # layer 2, sample 1 has 3 real tokens
        pooler = backbone.model.bert.pooler
        expected = torch.tanh(pooler.dense(second))
    torch.testing.assert_close(features[1, 1], expected)


def test_non_bert_encoder_is_rejected(tmp_path):
    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32)
    DistilBertForSequenceClassification(config).save_pretrained(tmp_path / "distil")
    with pytest.raises(ConfigError, match="supports BERT-family"):
        HFEncoder(str(tmp_path / "distil"), num_classes=2)


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        HFEncoder(str(tmp_path / "nowhere"), num_classes=2)


def test_unknown_pooling_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="pooling"):
        HFEncoder(tiny_bert_dir(tmp_path), num_classes=3, pooling="max")


def test_bert_trains_with_dropout_like_any_new_module(tmp_path):
    """from_pretrained hands back eval mode; the backbone must not train without dropout."""
    backbone = HFEncoder(tiny_bert_dir(tmp_path), num_classes=3)
    assert backbone.training and all(module.training for module in backbone.modules())
