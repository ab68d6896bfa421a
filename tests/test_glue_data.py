"""GLUE data: every task's real TSV layout, label ids as on the hub, pairs, padding, errors."""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_train
from data_files import GLUE_FILES, write_glue
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from aligned import hub
from aligned.config import ConfigError, build
from aligned.data import glue
from aligned.data.glue import GlueDataModule, find_task

# Label ids per split (val = dev, test = dev; MNLI: dev_matched, dev_mismatched), hub order.
EXPECTED_LABELS = {
    "CoLA": ([1, 1, 0, 0], [1, 0], [1, 0]),
    "SST-2": ([0, 1, 0, 1], [1, 0], [1, 0]),
    "MRPC": ([1, 0], [1, 0], [1, 0]),
    "QQP": ([0, 1, 0], [1, 0], [1, 0]),
    "STS-B": ([5.0, 3.8, 0.0], [5.0, 4.75], [5.0, 4.75]),
    "MNLI": ([1, 0, 0, 2], [1, 2], [2, 0, 1]),  # entailment 0, neutral 1, contradiction 2
    "QNLI": ([1, 0], [0], [0]),  # entailment 0, not_entailment 1
    "RTE": ([1, 0], [1, 0], [1, 0]),
    "WNLI": ([1, 0], [0], [0]),  # not_entailment 0, entailment 1
}
EXPECTED_TASK = {  # num_classes, metrics
    "CoLA": (2, ("matthews",)),
    "SST-2": (2, ("accuracy",)),
    "MRPC": (2, ("f1", "accuracy")),
    "QQP": (2, ("f1", "accuracy")),
    "STS-B": (1, ("pearson", "spearman")),
    "MNLI": (3, ("accuracy",)),
    "QNLI": (2, ("accuracy",)),
    "RTE": (2, ("accuracy",)),
    "WNLI": (2, ("accuracy",)),
}
SINGLE_SENTENCE = {"CoLA", "SST-2"}
SEP = "[SEP]"


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return write_glue(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """A BERT WordPiece tokenizer over the words of the test files: vocab.txt, no download."""
    words = {
        word
        for files in GLUE_FILES.values()
        for rows in files.values()
        for row in rows
        for cell in row
        for word in re.findall(r"\w+|[^\w\s]", cell.lower())
    }
    path = tmp_path_factory.mktemp("tokenizer")
    special = ["[PAD]", "[UNK]", "[CLS]", SEP, "[MASK]"]
    (path / "vocab.txt").write_text("\n".join(special + sorted(words)) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return str(path)


def make(glue_dir: Path, tokenizer_dir: str, task: str, **kwargs) -> GlueDataModule:
    module = GlueDataModule(task, tokenizer_dir, data_dir=str(glue_dir), **kwargs)
    module.setup()
    return module


def whole_split(module: GlueDataModule, split: str) -> dict[str, torch.Tensor]:
    loader = {"val": module.val_dataloader, "test": module.test_dataloader}[split]()
    return next(iter(loader))  # every split of the test files fits in one batch


@pytest.mark.parametrize("task", list(GLUE_FILES))
def test_every_task_reads_its_real_layout_with_hub_label_ids(glue_dir, tokenizer_dir, task):
    module = make(glue_dir, tokenizer_dir, task)
    assert module.task == task
    assert (module.num_classes, module.metrics) == EXPECTED_TASK[task]
    regression = task == "STS-B"
    for split, expected in zip(("train", "val", "test"), EXPECTED_LABELS[task], strict=True):
        labels = module.splits[split].labels
        assert labels.dtype == (torch.float32 if regression else torch.long)
        torch.testing.assert_close(labels, torch.tensor(expected, dtype=labels.dtype))
    batch = whole_split(module, "val")
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    seps = (batch["input_ids"] == tokenizer.convert_tokens_to_ids(SEP)).sum(1)
    second_segment = (batch["token_type_ids"] == 1).any(1)
    if task in SINGLE_SENTENCE:
        assert (seps == 1).all() and not second_segment.any()
    else:  # [CLS] a [SEP] b [SEP], token types 0 then 1
        assert (seps == 2).all() and second_segment.all()


def test_batches_match_the_tokenizer_and_are_padded_to_their_longest(glue_dir, tokenizer_dir):
    module = make(glue_dir, tokenizer_dir, "rte", batch_size=2)
    batch = whole_split(module, "val")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = GLUE_FILES["RTE"]["dev.tsv"][1:]
    expected = [tokenizer(row[1], row[2])["input_ids"] for row in rows]
    lengths = [len(ids) for ids in expected]
    assert batch["input_ids"].shape == (2, max(lengths)) and max(lengths) < module.max_length
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for ids, mask, reference in zip(batch["input_ids"], batch["attention_mask"], expected,
                                    strict=True):
        assert ids[mask.bool()].tolist() == reference
        assert (ids[~mask.bool()] == tokenizer.pad_token_id).all()
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


def test_long_pairs_are_truncated_to_max_length_keeping_both_sentences(glue_dir, tokenizer_dir):
    module = make(glue_dir, tokenizer_dir, "mnli", max_length=12)
    batch = next(iter(module.train_dataloader()))
    assert batch["input_ids"].shape[1] == 12  # the premises are longer
    assert (batch["attention_mask"].sum(1) <= 12).all()
    assert (batch["token_type_ids"] == 1).any(1).all()


def test_mnli_validates_on_matched_and_tests_on_mismatched(glue_dir, tokenizer_dir):
    module = make(glue_dir, tokenizer_dir, "MNLI")
    assert len(module.splits["val"]) == 2 and len(module.splits["test"]) == 3
    assert whole_split(module, "val")["labels"].tolist() == [1, 2]
    assert whole_split(module, "test")["labels"].tolist() == [2, 0, 1]


def test_other_tasks_use_dev_for_val_and_test(glue_dir, tokenizer_dir):
    module = make(glue_dir, tokenizer_dir, "sst2")
    assert module.splits["val"] is module.splits["test"]  # tokenised once


def test_train_subset_is_seeded_and_sized(tmp_path, tokenizer_dir):
    # Row i is "the" repeated i + 1 times: its length says which row it is.
    rows = [("sentence", "label"), *(("the " * (i + 1), str(i % 2)) for i in range(50))]
    (tmp_path / "SST-2").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "SST-2" / name).write_text("".join("\t".join(r) + "\n" for r in rows))

    def subset(seed: int, size: int | None = 10) -> list[int]:
        module = make(tmp_path, tokenizer_dir, "SST-2", train_subset=size, subset_seed=seed)
        train = module.splits["train"]
        return [len(train[i]["input_ids"]) - 3 for i in range(len(train))]  # row numbers

    first = subset(seed=0)
    assert len(first) == 10 and len(set(first)) == 10 and first != list(range(10))
    assert subset(seed=0) == first
    assert subset(seed=1) != first
    assert len(subset(seed=0, size=500)) == 50  # all of them when the task has fewer
    assert len(subset(seed=0, size=None)) == 50



def test_hub_copy_gives_the_same_batches_as_the_local_files(glue_dir, tokenizer_dir, monkeypatch):
    local = make(glue_dir, tokenizer_dir, "mnli")

    def hub_split(file: str, labels: list[int]) -> dict[str, list]:  # the hub's column names
        rows = GLUE_FILES["MNLI"][file][1:]
        return {
            "premise": [row[8] for row in rows],
            "hypothesis": [row[9] for row in rows],
            "label": labels,
            "idx": list(range(len(rows))),
        }

    train, matched, mismatched = EXPECTED_LABELS["MNLI"]
    hub = {
        "train": hub_split("train.tsv", train),
        "validation_matched": hub_split("dev_matched.tsv", matched),
        "validation_mismatched": hub_split("dev_mismatched.tsv", mismatched),
    }
    calls = []
    fake_datasets = SimpleNamespace(load_dataset=lambda *args: calls.append(args) or hub)
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets)  # no real package needed
    monkeypatch.setattr(glue, "hub_reachable", lambda: True)
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    from_hub = make(glue_dir / "absent", tokenizer_dir, "mnli")
    assert calls == [("nyu-mll/glue", "mnli")]
    for split in ("train", "val", "test"):
        ours, theirs = local.splits[split], from_hub.splits[split]
        assert ours.offsets == theirs.offsets
        for name in ("input_ids", "token_type_ids", "labels"):
            assert torch.equal(getattr(ours, name), getattr(theirs, name)), (split, name)

@pytest.mark.parametrize(
    ("name", "canonical"),
    [("sst2", "SST-2"), ("SST-2", "SST-2"), ("stsb", "STS-B"), ("STS-B", "STS-B"),
     ("Mnli", "MNLI"), ("cola", "CoLA"), ("qnli", "QNLI")],
)
def test_task_names_are_case_and_dash_insensitive(name, canonical):
    assert find_task(name).name == canonical


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(ConfigError, match="Unknown GLUE task 'sst5'.*CoLA, SST-2, MRPC.*WNLI"):
        GlueDataModule("sst5", "unused")


def test_num_classes_override_that_contradicts_the_task_is_rejected():
    with pytest.raises(ConfigError, match="MNLI has num_classes=3"):
        GlueDataModule("mnli", "unused", num_classes=2)
    assert GlueDataModule("mnli", "unused", num_classes=3).num_classes == 3


def test_missing_files_offline_fail_fast_naming_the_expected_path(tmp_path, monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(flag, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))  # an empty cache
    if "datasets" in sys.modules:  # imported before: its config read the environment then
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", tmp_path)

    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", no_network)
    module = GlueDataModule("sst2", "unused", data_dir=str(tmp_path / "glue"))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        module.setup()
    assert time.perf_counter() - start < 15  # the hub client's retries take 25 s and more
    message = str(error.value)
    assert str(tmp_path / "glue" / "SST-2" / "train.tsv") in message
    assert "data.data_dir" in message and "SST-2/{train.tsv, dev.tsv}" in message


def test_unreachable_hub_is_reported_without_calling_the_hub_client(tmp_path, monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    monkeypatch.setattr(glue, "hub_reachable", lambda: False)
    module = GlueDataModule("MNLI", "unused", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="unreachable") as error:
        module.setup("fit")
    assert "MNLI/{train.tsv, dev_matched.tsv, dev_mismatched.tsv}" in str(error.value)


def test_hub_reachable_fails_fast_on_a_closed_port(monkeypatch):
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    with socket.socket() as server:  # a port that is bound but never accepts
        server.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.perf_counter()
        assert not hub.hub_reachable(timeout=2.0)
    assert time.perf_counter() - start < 3


def test_missing_tokenizer_directory_is_a_config_error(glue_dir, tmp_path):
    module = GlueDataModule("sst2", str(tmp_path / "no_tokenizer"), data_dir=str(glue_dir))
    with pytest.raises(ConfigError, match="Tokenizer directory"):
        module.setup()


def test_resolver_gives_each_task_its_label_count():
    cfg = OmegaConf.create({"task": "sst2", "n": "${glue_num_labels:${task}}"})
    counts = {}
    for task in ("sst2", "STS-B", "mnli", "cola"):
        cfg.task = task
        counts[task] = cfg.n
    assert counts == {"sst2": 2, "STS-B": 1, "mnli": 3, "cola": 2}


def test_unknown_task_in_the_real_config_is_our_error_not_a_resolver_traceback(tmp_path):
    """The task is read while ${glue_num_labels:...} resolves; OmegaConf wraps what a resolver
    raises, and build() hands back our one-line error."""
    cfg = compose_train(["model=minilm", "data=glue", "data.task=foo"], tmp_path / "run")
    with pytest.raises(ConfigError, match="Unknown GLUE task 'foo'"):
        build(cfg.data)


def test_real_config_with_the_bundled_minilm_tokenizer_encodes_pairs(glue_dir, tmp_path):
    cfg = compose_train(
        ["model=minilm", "data=glue", "data.task=stsb", f"data.data_dir={glue_dir}"],
        tmp_path / "run",
    )
    assert cfg.data.num_classes == cfg.model.num_classes == 1
    assert Path(cfg.data.tokenizer) == Path(cfg.model.name_or_path)  # the bundled MiniLM
    module = build(cfg.data)
    module.setup("validate")
    batch = whole_split(module, "val")
    assert batch["labels"].dtype == torch.float32
    tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer)
    text = tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert text == (
        "[CLS] a man with a hard hat is dancing. [SEP] a man wearing a hard hat is dancing. [SEP]"
    )
    assert (batch["token_type_ids"][0] == 1).sum() == len(tokenizer.tokenize(
        "A man wearing a hard hat is dancing.")) + 1


@pytest.mark.parametrize("task, text, message", [
    # A CoLA copy with a header line: no row has CoLA's four fields.
    ("CoLA", "sentence\tlabel\nThe book fell.\t1\n", "tab-separated fields .'source', 'label'"),
    ("SST-2", "sentence\tlabel\n", "a header naming .'sentence', 'label'."),  # a header alone
])
def test_a_file_without_usable_rows_is_a_clear_error(tmp_path, task, text, message):
    path = tmp_path / "train.tsv"
    path.write_text(text, encoding="utf-8")
    expected = f"holds no usable {task} rows; GLUE's layout is {message}"
    with pytest.raises(ConfigError, match=expected):
        glue.read_tsv(path, find_task(task))
