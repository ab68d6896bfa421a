"""Tiny random models, built by the test itself (nothing downloaded), and batches they read: a
4-block ViT and a 3-layer BERT as LayerwiseClassifiers, a saved BERT directory, the backbone
settings of a tiny ViT and the Hydra overrides of a tiny LLaMA."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from aligned.training.system import LayerwiseClassifier

LOSSES = {"aligned": "aligned.models.objectives.AlignedObjective",
          "multiexit": "aligned.models.objectives.MultiExitObjective"}
NUM_LAYERS, NUM_CLASSES = 4, 5

# TimmViT's settings for 8x8 one-channel images in 4 patches, 3 blocks.
TINY_VIT = dict(img_size=8, in_chans=1, patch_size=4, embed_dim=32, depth=3, num_heads=2)

# model=llama built from its config, small enough to train a few steps in seconds.
TINY_LLAMA = ["model.architecture.num_hidden_layers=3", "model.architecture.hidden_size=32",
              "model.architecture.intermediate_size=64", "model.architecture.num_attention_heads=4",
              "model.architecture.num_key_value_heads=2"]


def tiny_bert_dir(tmp_path, num_labels=3):
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=num_labels,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    return str(tmp_path / "bert")


def token_batch():
    input_ids = torch.tensor([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
    attention_mask = (input_ids != 0).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "token_type_ids": torch.zeros_like(input_ids)}


def tiny_vit_system(loss: str) -> LayerwiseClassifier:
    torch.manual_seed(0)
    model = {"_target_": "aligned.models.backbones.timm_vit.TimmViT",
             "name": "vit_tiny_patch16_224",
             "num_classes": NUM_CLASSES, "img_size": 8, "in_chans": 1, "patch_size": 4,
             "embed_dim": 16, "depth": NUM_LAYERS, "num_heads": 2}
    return LayerwiseClassifier(model, {"_target_": LOSSES[loss]})


def tiny_bert_system(loss: str, tmp_path) -> LayerwiseClassifier:
    model = {"_target_": "aligned.models.backbones.hf_encoder.HFEncoder",
             "name_or_path": tiny_bert_dir(tmp_path, NUM_CLASSES), "num_classes": NUM_CLASSES,
             "pooling": "mean"}
    torch.manual_seed(0)
    return LayerwiseClassifier(model, {"_target_": LOSSES[loss]})


def vit_batches(count: int, batch_size: int) -> list:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(batch_size, 1, 8, 8, generator=generator, dtype=torch.float64),
             torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator))
            for _ in range(count)]


def bert_batches(count: int, batch_size: int) -> list:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for index in range(count):
        width = 7 - 2 * (index % 2)  # batches padded to different lengths, as a loader pads
        ids = torch.randint(4, 50, (batch_size, width), generator=generator)
        lengths = torch.randint(2, width + 1, (batch_size,), generator=generator)
        mask = (torch.arange(width)[None] < lengths[:, None]).long()  # padding varies per sample
        batches.append({"input_ids": ids * mask, "attention_mask": mask,
                        "token_type_ids": torch.zeros_like(ids),
                        "labels": torch.randint(0, NUM_CLASSES, (batch_size,),
                                                generator=generator)})
    return batches
