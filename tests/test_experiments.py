"""Every experiment config composes and runs a couple of batches on tiny stand-ins (no network).

Stand-ins replace only what cannot exist here: pretrained weights (a tiny randomly initialised
model of the same family) and the data sets (tiny files in the real on-disk formats).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from causal_lm_helpers import save_tiny_lm, write_corpus
from conftest import CONF, compose_train
from data_files import (
    CLASSES,
    GLUE_FILES,
    trust_written_files,
    use_bbc_tree,
    write_bbc_tree,
    write_cifar10,
    write_cifar100,
    write_glue,
    write_image_tree,
    write_mnist_csv,
)
from entry_points import run_evaluate
from torchvision.datasets import CIFAR10, CIFAR100
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from aligned.training.fit import train

RUN_BRIEFLY = [
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "logger=none",
]
TINY_TIMM = ["model.pretrained=false", "+model.depth=2", "+model.embed_dim=32",
             "+model.num_heads=2"]
VISION = ["data.batch_size=4", "data.num_workers=0"]


def write_tiny_bert(path: Path) -> Path:
    """A 2-layer random BERT with a WordPiece vocabulary over the test sentences."""
    words = sorted({w for rows in GLUE_FILES["SST-2"].values() for row in rows
                    for w in row[0].lower().replace(".", " . ").split()})
    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                               *words]) + "\n")
    # vocab.txt + tokenizer_config.json is the on-disk format AutoTokenizer reads.
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.convert_tokens_to_ids(words[0]) == 5  # the vocabulary was read
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


def stand_ins(name: str, root: Path, monkeypatch) -> list[str]:
    if name in ("deit_s_cifar10", "deit_s_cifar100"):
        if name.endswith("100"):
            write_cifar100(root / "cifar")
            trust_written_files(monkeypatch, CIFAR100, root / "cifar" / "cifar-100-python")
        else:
            write_cifar10(root / "cifar")
            trust_written_files(monkeypatch, CIFAR10, root / "cifar" / "cifar-10-batches-py")
        return [*TINY_TIMM, *VISION, f"data.data_dir={root / 'cifar'}", "+data.val_size=10"]
    if name == "vit_imagenet":
        write_image_tree(root / "imagenet")
        return [*TINY_TIMM, *VISION, f"data.data_dir={root / 'imagenet'}",
                f"data.num_classes={len(CLASSES)}", "+data.val_fraction=0.25"]
    glue = [f"data.data_dir={write_glue(root / 'glue')}", "data.batch_size=4"]
    if name == "bert_glue":
        return [*glue, f"model.name_or_path={write_tiny_bert(root / 'bert')}", "data.task=sst2"]
    if name == "minilm_sst2":  # the real pretrained MiniLM ships with its package
        return [*glue, "data.train_subset=null"]
    if name == "vit_mnist":
        csv = write_mnist_csv(root / "mnist_5k.csv.gz")
        return ["model.depth=2", "model.embed_dim=32", "model.num_heads=2", "data.batch_size=8",
                f"+data.data_file={csv}"]
    if name == "minilm_bbc":  # the real MiniLM, a tiny corpus in the package's layout
        use_bbc_tree(monkeypatch, write_bbc_tree(root / "bbcnews" / "data"))
        return ["data.batch_size=4", "data.max_length=32"]
    if name == "gpt2_wikitext103":  # a tiny random GPT-2 on .txt files for the hub's
        lm, corpus = save_tiny_lm(root / "gpt2", layers=2), write_corpus(root / "corpus", 30)
        return [f"model.name_or_path={lm}", f"data.source={corpus}",
                f"data.cache_dir={root / 'cache'}", "data.max_length=16", "data.batch_size=4",
                "data.eval_batch_size=4", "+data.val_fraction=0.2", "+data.test_fraction=0.2",
                "trainer.max_steps=2", "trainer.accumulate_grad_batches=1"]
    if name == "lm_bbc":  # a LLaMA built from scratch, its tokenizer trained on .txt files
        corpus = write_corpus(root / "corpus", 30)
        return [f"data.source={corpus}", f"data.cache_dir={root / 'cache'}",
                "data.vocab_size=300", "data.max_length=16", "data.batch_size=4",
                "data.eval_batch_size=4", "+data.val_fraction=0.2", "+data.test_fraction=0.2",
                "model.architecture.num_hidden_layers=2", "model.architecture.hidden_size=32",
                "model.architecture.intermediate_size=64",
                "model.architecture.num_attention_heads=4",
                "model.architecture.num_key_value_heads=2"]
    if name == "smollm2_bbc":  # a tiny random LLaMA in SmolLM2's place, .txt files for BBC News
        lm = save_tiny_lm(root / "llama", "llama", layers=2)
        corpus = write_corpus(root / "corpus", 30)
        return [f"model.name_or_path={lm}", f"data.source={corpus}",
                f"data.cache_dir={root / 'cache'}", "data.max_length=16", "data.batch_size=4",
                "data.eval_batch_size=4", "+data.val_fraction=0.2", "+data.test_fraction=0.2",
                "loss=sampled", "loss.layers_per_step=1"]
    raise AssertionError(f"add tiny stand-ins for the new experiment config '{name}'")


EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))


def test_the_paper_setups_have_experiment_configs():
    assert {"deit_s_cifar10", "deit_s_cifar100", "vit_imagenet", "bert_glue",
            "minilm_sst2", "gpt2_wikitext103"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_on_tiny_stand_ins(name, tmp_path, monkeypatch):
    overrides = [f"experiment={name}", *RUN_BRIEFLY, *stand_ins(name, tmp_path, monkeypatch)]
    cfg = compose_train(overrides, tmp_path / "run")
    results = train(cfg)
    assert results["num_layers"] == (6 if name.startswith("minilm") else 2)
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results


@pytest.mark.slow
def test_an_hf_checkpoint_evaluates_after_its_model_directory_moved(tmp_path, monkeypatch):
    """The checkpoint stores where the model's config and tokenizer were when it trained; on
    another machine (here: the directory moved) evaluate.py says so and takes the new place."""
    overrides = ["experiment=bert_glue", *RUN_BRIEFLY, *stand_ins("bert_glue", tmp_path,
                                                                    monkeypatch)]
    dev = tmp_path / "glue" / "SST-2" / "dev.tsv"
    header, *rows = dev.read_text().splitlines(keepends=True)
    dev.write_text(header + "".join(rows * 4))  # batches of 4: enough for minibatch CKA
    checkpoint = train(compose_train(overrides, tmp_path / "run"))["checkpoint"]
    moved = (tmp_path / "bert").rename(tmp_path / "elsewhere")

    def evaluate(*extra: str):
        return run_evaluate(f"ckpt_path={checkpoint}", "early_exit.enabled=false", *extra,
                            out=tmp_path / "evaluation")

    done = evaluate()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pass model.name_or_path=" in done.stderr and "Traceback" not in done.stderr
    done = evaluate(f"model.name_or_path={moved}")
    assert done.returncode == 0, done.stderr[-2000:]
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert len(evaluation["layer_accuracy"]) == 2
