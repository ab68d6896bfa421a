"""A model as it is (evaluate.py model=... data=... without ckpt_path) and the export of a trained
checkpoint to the libraries' own formats: timm's local directory and a Hugging Face directory,
written for real and loaded back by timm / transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import TINY, compose_evaluate, compose_train
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from aligned.config import ConfigError
from aligned.evaluation import evaluate
from aligned.export import export, export_system, main
from aligned.training.checkpoints import load_system, read_checkpoint
from aligned.training.fit import train
from aligned.training.system import LayerwiseClassifier

SST2 = {
    "train.tsv": ["the greatest musicians", "contains no wit , only labored gags",
                  "a charming journey", "bleak and desperate"],
    "dev.tsv": ["it 's a charming and often affecting journey .", "unflinchingly bleak and "
                "desperate", "the greatest gags", "no wit", "a journey", "labored and bleak",
                "charming musicians", "often desperate"],
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    overrides = [o for o in TINY if not o.startswith(("+trainer.limit_val", "+trainer.limit_test"))]
    return train(compose_train(overrides, tmp_path_factory.mktemp("run")))["checkpoint"]


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    """GLUE's SST-2 layout, a WordPiece tokenizer over its words, and a tiny BERT sentiment
    classifier saved with save_pretrained beside it: a 'hub model' on disk."""
    root = tmp_path_factory.mktemp("sst2")
    (root / "glue" / "SST-2").mkdir(parents=True)
    for name, sentences in SST2.items():
        rows = ["sentence\tlabel"] + [f"{s}\t{i % 2}" for i, s in enumerate(sentences)]
        (root / "glue" / "SST-2" / name).write_text("\n".join(rows) + "\n")
    words = sorted({w for sentences in SST2.values() for s in sentences for w in s.split()})
    model_dir = root / "bert-sst2"
    model_dir.mkdir()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (model_dir / "vocab.txt").write_text("\n".join(special + words) + "\n")
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    config = BertConfig(vocab_size=len(special) + len(words), hidden_size=16,
                        num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(model_dir)
    return root


def test_timm_export_loads_with_timm_and_gives_the_last_layer_logits(checkpoint, tmp_path, capsys):
    main([checkpoint, str(tmp_path / "vit")])
    printed = capsys.readouterr().out
    assert "load with timm.create_model('local-dir:...', pretrained=True)" in printed
    exported = timm.create_model(f"local-dir:{tmp_path / 'vit'}", pretrained=True).eval()
    system = load_system(read_checkpoint(checkpoint))
    images = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(exported(images), system(images)[-1])
    record = json.loads((tmp_path / "vit" / "export.json").read_text())
    assert (record["format"], record["num_layers"], record["shared_head"]) == ("timm", 2, True)


def test_hf_export_loads_with_transformers_and_gives_the_last_layer_logits(sst2, tmp_path):
    model = {"_target_": "aligned.models.backbones.hf_encoder.HFEncoder",
             "name_or_path": str(sst2 / "bert-sst2"), "num_classes": 2}
    system = LayerwiseClassifier(model, {"_target_": "aligned.models.objectives.AlignedObjective"})
    assert export_system(system.eval(), tmp_path / "hf", str(sst2 / "bert-sst2")) == "transformers"
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    batch = {"input_ids": torch.tensor([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
             "token_type_ids": torch.zeros(2, 5, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, system(batch)[-1])
    # The tokenizer came along: the directory alone serves the model.
    text = "a charming journey"
    assert (AutoTokenizer.from_pretrained(tmp_path / "hf")(text)["input_ids"]
            == AutoTokenizer.from_pretrained(sst2 / "bert-sst2")(text)["input_ids"])


def test_export_refuses_a_non_empty_directory(checkpoint, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not empty"):
        export(checkpoint, tmp_path / "used")


def test_the_export_evaluated_as_it_is_equals_the_checkpoint_evaluated(checkpoint, tmp_path):
    """Golden: the same weights through both paths give the same figures (the aligned shared
    head is the exported model's own classifier)."""
    export(checkpoint, tmp_path / "vit")
    common = ["early_exit.enabled=false", "device=cpu"]
    trained = evaluate(compose_evaluate([f"ckpt_path={checkpoint}", *common], tmp_path / "a"))
    as_is = evaluate(compose_evaluate(
        ["model=deit_s", f"model.name=local-dir:{tmp_path / 'vit'}", "data=digits", *common],
        tmp_path / "b"))
    assert as_is["names"] == {"model": "deit_s", "data": "digits", "loss": "pretrained"}
    assert as_is["checkpoint"] is None and as_is["pretrained"].startswith("local-dir:")
    assert as_is["layer_accuracy"] == trained["layer_accuracy"]
    np.testing.assert_allclose(as_is["similarity"]["cka"], trained["similarity"]["cka"],
                               atol=1e-6)
    assert (tmp_path / "b" / "report.md").is_file()
    assert (tmp_path / "b" / "similarity.png").is_file()


def test_a_saved_hf_classifier_is_analysed_as_it_is(sst2, tmp_path):
    cfg = compose_evaluate(["model=minilm", f"model.name_or_path={sst2 / 'bert-sst2'}",
                            "data=glue", "data.task=sst2", f"data.data_dir={sst2 / 'glue'}",
                            "device=cpu"], tmp_path)
    evaluation = evaluate(cfg)
    assert evaluation["num_samples"] == 8 and evaluation["num_layers"] == 3
    assert evaluation["pretrained"] == str(sst2 / "bert-sst2")
    assert len(evaluation["layer_accuracy"]) == 3
    assert np.isfinite(evaluation["similarity"]["cka"]).all()
    assert set(evaluation["early_exit"]["rules"]) >= {"confidence", "budget"}
    # Its own head is kept: the last layer's predictions are the saved model's.
    model = AutoModelForSequenceClassification.from_pretrained(sst2 / "bert-sst2").eval()
    assert model.classifier.out_features == 2


@pytest.mark.parametrize("overrides, message", [
    ([], "Give the checkpoint to analyse: .* or a pretrained model as it is: python evaluate.py "
         "model=<group> data=<group>"),
    (["model=deit_s"], "model=deit_s without a checkpoint needs the data it is evaluated on too"),
])
def test_missing_pieces_of_a_model_as_it_is_are_clear_errors(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        evaluate(compose_evaluate(overrides, tmp_path))


def test_the_export_of_a_gguf_model_keeps_the_tokenizer_the_gguf_file_holds(tmp_path, monkeypatch):
    """model=smollm2 names a .gguf file: its tokenizer is read from it with gguf_file=, as the
    data module reads it, so the exported directory decodes text on its own."""
    import transformers

    from aligned.export import save_tokenizer

    gguf = tmp_path / "weights" / "model.Q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    calls = []

    class Tokenizer:
        def save_pretrained(self, out):
            (Path(out) / "tokenizer.json").write_text("{}")

    def from_pretrained(name, **kwargs):
        calls.append((name, kwargs))
        return Tokenizer()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    save_tokenizer(str(gguf), tmp_path)
    assert calls == [(str(gguf.parent), {"gguf_file": gguf.name})]
    assert (tmp_path / "tokenizer.json").is_file()
