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
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from aligned.config import ConfigError, build
from aligned.data import glue
from aligned.data.glue import GlueDataModule, find_task

MNLI_TRAIN_HEADER = (
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label",
)
MNLI_DEV_HEADER = (*MNLI_TRAIN_HEADER[:-1], "label2", "label3", "label4", "label5", "gold_label")
STSB_HEADER = (
    "index", "genre", "filename", "year", "old_index", "source1", "source2",
    "sentence1", "sentence2", "score",
)


def mnli_row(index: int, premise: str, hypothesis: str, labels: tuple[str, ...]) -> tuple:
    parse = "( ( a parse ) tree )"
    return (str(index), "31193", f"{index}n", "fiction", parse, parse, "(ROOT (S))", "(ROOT (S))",
            premise, hypothesis, *labels)


# Rows of each file as GLUE's download script writes them (tab-separated, first row the header
# except in CoLA), and the label ids the hub copy gives the same rows.
GLUE_FILES = {
    "CoLA": {
        "train.tsv": [
            ("gj04", "1", "", "Our friends won't buy this analysis, let alone the next one."),
            ("gj04", "1", "", "One more pseudo generalization and I'm giving up."),
            ("gj04", "0", "*", "They drank the pub."),
            ("clc95", "0", "*", "The more we study verbs, the crazier they get get."),
        ],
        "dev.tsv": [
            ("gj04", "1", "", "The sailors rode the breeze clear of the rocks."),
            ("gj04", "0", "*", "The weights were drank."),
        ],
    },
    "SST-2": {
        "train.tsv": [
            ("sentence", "label"),
            ("hide new secretions from the parental units ", "0"),
            ('" a stray quote opens this review , and never closes ', "1"),  # as in SST-2
            ("contains no wit , only labored gags ", "0"),
            ("the greatest musicians ", "1"),
        ],
        "dev.tsv": [
            ("sentence", "label"),
            ("it 's a charming and often affecting journey . ", "1"),
            ("unflinchingly bleak and desperate ", "0"),
        ],
    },
    "MRPC": {  # the header keeps the byte-order mark of Microsoft's msr_paraphrase_train.txt
        "train.tsv": [
            ("\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
            ("1", "702876", "702977", 'Amrozi accused his brother , whom he called " the witness '
             '" , of deliberately distorting his evidence .', 'Referring to him as only " the '
             'witness " , Amrozi accused his brother of deliberately distorting his evidence .'),
            ("0", "2108705", "2108831", "Yucaipa owned Dominick 's before selling the chain to "
             "Safeway in 1998 for $ 2.5 billion .", "Yucaipa bought Dominick 's in 1995 for $ 693 "
             "million and sold it to Safeway for $ 1.8 billion in 1998 ."),
        ],
        "dev.tsv": [
            ("\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
            ("1", "1355540", "1355592", "He said the foodservice pie business does not fit .",
             "The foodservice pie business does not fit , he said ."),
            ("0", "2029631", "2029565", "Magnarelli said Racicot hated the Iraqi regime .",
             "His wife said he was 100 percent behind George Bush ."),
        ],
    },
    "QQP": {
        "train.tsv": [
            ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
            ("133273", "213221", "213222", "How is the life of a math student?",
             "Which level of preparation is enough for the exam?", "0"),
            ("402555", "536040", "536041", "How do I control my emotions?",
             "How do you control your emotions?", "1"),
            ("201841", "303345"),  # a broken row, as QQP has: skipped like the hub copy skips it
            ("360472", "364011", "490273", "What causes stool color to change to yellow?",
             "What can cause stool to come out as little balls?", "0"),
        ],
        "dev.tsv": [
            ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
            ("40066", "64932", "64933", "What is the best way to learn Python?",
             "How do I learn Python quickly?", "1"),
            ("5984", "9720", "9721", "Why do cats purr?", "What is the capital of Peru?", "0"),
        ],
    },
    "STS-B": {
        "train.tsv": [
            STSB_HEADER,
            ("0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
             "A plane is taking off.", "An air plane is taking off.", "5.000"),
            ("1", "main-captions", "MSRvid", "2012test", "0004", "none", "none",
             "A man is playing a large flute.", "A man is playing a flute.", "3.800"),
            ("2", "main-news", "headlines", "2013", "0010", "none", "none",
             "Obama signs the bill.", "A cat sleeps on the sofa.", "0.000"),
        ],
        "dev.tsv": [
            STSB_HEADER,
            ("0", "main-captions", "MSRvid", "2012test", "0000", "none", "none",
             "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", "5.000"),
            ("1", "main-captions", "MSRvid", "2012test", "0002", "none", "none",
             "A young child is riding a horse.", "A child is riding a horse.", "4.750"),
        ],
    },
    "MNLI": {
        "train.tsv": [
            MNLI_TRAIN_HEADER,
            mnli_row(0, "Conceptually cream skimming has two basic dimensions - product and "
                     "geography.", "Product and geography are what make cream skimming work. ",
                     ("neutral", "neutral")),
            mnli_row(1, "you know during the season and i guess at at your level uh you lose "
                     "them to the next level", "You lose the things to the following level if "
                     "the people recall.", ("entailment", "entailment")),
            mnli_row(2, "One of our number will carry out your instructions minutely.",
                     "A member of my team will execute your orders with immense precision.",
                     ("entailment", "entailment")),
            mnli_row(3, "How do you know? All this is their information again.",
                     "This information belongs to them.", ("contradiction", "contradiction")),
        ],
        "dev_matched.tsv": [
            MNLI_DEV_HEADER,
            mnli_row(0, "The new rights are nice enough", "Everyone really likes the newest "
                     "benefits ", ("neutral",) * 6),
            mnli_row(1, "This site includes a list of all award winners.", "The Government "
                     "Executive articles housed on the website are not able to be searched.",
                     ("contradiction",) * 6),
        ],
        "dev_mismatched.tsv": [
            MNLI_DEV_HEADER,
            mnli_row(0, "Your contribution helped make it possible for us to provide our "
                     "students with a quality education.", "Your contributions were of no help.",
                     ("contradiction",) * 6),
            mnli_row(1, "The answer has nothing to do with their cause.", "The answer is "
                     "unrelated to their cause.", ("entailment",) * 6),
            mnli_row(2, "But there are two kinds of the pleasure of hoping.", "There are two "
                     "kinds of hope.", ("neutral",) * 6),
        ],
    },
    "QNLI": {
        "train.tsv": [
            ("index", "question", "sentence", "label"),
            ("0", "When did the third Digimon series begin?", "Unlike the two seasons before it, "
             "Digimon Tamers takes a darker and more realistic approach.", "not_entailment"),
            ("1", "What two things does Popper argue Tarski's theory involves?", "He bases this "
             "on two things: assertions and the facts to which they refer.", "entailment"),
        ],
        "dev.tsv": [
            ("index", "question", "sentence", "label"),
            ("0", "What came into force after the new constitution was herald?", "As of that "
             "day, the new constitution heralding the Second Republic came into force.",
             "entailment"),
        ],
    },
    "RTE": {
        "train.tsv": [
            ("index", "sentence1", "sentence2", "label"),
            ("0", "No Weapons of Mass Destruction Found in Iraq Yet.",
             "Weapons of Mass Destruction Found in Iraq.", "not_entailment"),
            ("1", "A place of sorrow, after Pope John Paul II died, became a place of "
             "celebration.", "Pope Benedict XVI is the new leader of the Church.", "entailment"),
        ],
        "dev.tsv": [
            ("index", "sentence1", "sentence2", "label"),
            ("0", "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung "
             "cancer at age 44.", "Christopher Reeve had an accident.", "not_entailment"),
            ("1", "Yet, we now are discovering that antibiotics are losing their "
             "effectiveness.", "Bacteria is winning the war against antibiotics.", "entailment"),
        ],
    },
    "WNLI": {
        "train.tsv": [
            ("index", "sentence1", "sentence2", "label"),
            ("0", "I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
             "The carrot had a hole.", "1"),
            ("1", "Steve follows Fred's example in everything. He influences him hugely.",
             "Steve influences him hugely.", "0"),
        ],
        "dev.tsv": [
            ("index", "sentence1", "sentence2", "label"),
            ("0", "The drain is clogged with hair. It has to be cleaned.",
             "The hair has to be cleaned.", "0"),
        ],
    },
}

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
    root = tmp_path_factory.mktemp("glue")
    for task, files in GLUE_FILES.items():
        (root / task).mkdir()
        for name, rows in files.items():
            lines = ("\t".join(row) + "\n" for row in rows)
            (root / task / name).write_text("".join(lines), encoding="utf-8")
    return root


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
        assert not glue.hub_reachable(timeout=2.0)
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
