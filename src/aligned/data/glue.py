"""GLUE's nine tasks from the standard TSV layout on disk, or from the Hugging Face hub copy.

Registers the OmegaConf resolver ``${glue_num_labels:<task>}`` on import (the data config's
``num_classes`` depends on the task; the model config interpolates it).
"""

from __future__ import annotations

import csv
import math
import numbers
from dataclasses import dataclass
from itertools import accumulate, chain
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import OmegaConf
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from aligned.config import ConfigError, positive_int
from aligned.data.sampling import shuffling
from aligned.data.split_loaders import SPLITS, SplitLoaders
from aligned.hub import hub_reachable, offline_mode

HUB_DATASET = "nyu-mll/glue"
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


@dataclass(frozen=True)
class GlueTask:
    """Where one task's examples live and how they are scored.

    Label ids follow the hub copy (its ClassLabel order), so local files and the hub agree.
    """

    name: str  # GLUE's directory name, e.g. "SST-2"
    hub_config: str  # the config of the hub dataset, e.g. "sst2"
    text_columns: tuple[str, ...]  # TSV columns with the sentence, or the pair
    hub_text_columns: tuple[str, ...]
    label_column: str
    num_classes: int = 2  # 1 = regression (STS-B)
    metrics: tuple[str, ...] = ("accuracy",)  # the first is the headline
    label_names: tuple[str, ...] = ()  # labels written as words in the TSV, in id order
    header: tuple[str, ...] | None = None  # column names of files without a header line (CoLA)
    dev_files: tuple[str, str] = ("dev.tsv", "dev.tsv")  # read as val, test
    hub_dev_splits: tuple[str, str] = ("validation", "validation")

    def file(self, split: str) -> str:
        return "train.tsv" if split == "train" else self.dev_files[split == "test"]

    def hub_split(self, split: str) -> str:
        return "train" if split == "train" else self.hub_dev_splits[split == "test"]


_NLI = ("entailment", "not_entailment")
TASKS = {
    task.hub_config: task
    for task in (
        GlueTask(
            "CoLA", "cola", ("sentence",), ("sentence",), "label", metrics=("matthews",),
            header=("source", "label", "original_label", "sentence"),
        ),
        GlueTask("SST-2", "sst2", ("sentence",), ("sentence",), "label"),
        GlueTask(
            "MRPC", "mrpc", ("#1 String", "#2 String"), ("sentence1", "sentence2"), "Quality",
            metrics=("f1", "accuracy"),
        ),
        GlueTask(
            "QQP", "qqp", ("question1", "question2"), ("question1", "question2"), "is_duplicate",
            metrics=("f1", "accuracy"),
        ),
        GlueTask(
            "STS-B", "stsb", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score",
            num_classes=1, metrics=("pearson", "spearman"),
        ),
        GlueTask(
            "MNLI", "mnli", ("sentence1", "sentence2"), ("premise", "hypothesis"), "gold_label",
            num_classes=3, label_names=("entailment", "neutral", "contradiction"),
            dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
            hub_dev_splits=("validation_matched", "validation_mismatched"),
        ),
        GlueTask(
            "QNLI", "qnli", ("question", "sentence"), ("question", "sentence"), "label",
            label_names=_NLI,
        ),
        GlueTask(
            "RTE", "rte", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
            label_names=_NLI,
        ),
        GlueTask("WNLI", "wnli", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label"),
    )
}


def find_task(name: str) -> GlueTask:
    """The task called ``name``, in any case, with or without the dash: sst2, SST-2, STS-B."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        known = ", ".join(task.name for task in TASKS.values())
        raise ConfigError(f"Unknown GLUE task '{name}'; choose one of {known}.")
    return TASKS[key]


def glue_num_labels(task: str) -> int:
    """``${glue_num_labels:<task>}``: 2 or 3 classes, or 1 output for STS-B's regression."""
    return find_task(task).num_classes


OmegaConf.register_new_resolver("glue_num_labels", glue_num_labels, replace=True)


class Examples(NamedTuple):
    first: list[str]
    second: list[str] | None  # None for single-sentence tasks
    labels: list[int] | list[float]

    def subset(self, index: list[int]) -> Examples:
        def pick(values: list) -> list:
            return [values[i] for i in index]

        second = pick(self.second) if self.second is not None else None
        return Examples(pick(self.first), second, pick(self.labels))


def read_tsv(path: Path, task: GlueTask) -> Examples:
    """One GLUE TSV file; rows missing a field are skipped, as the hub copy skips them (QQP)."""
    columns = [*task.text_columns, task.label_column]
    texts: list[list[str]] = [[] for _ in task.text_columns]
    labels = []
    # utf-8-sig: MRPC's header starts with a byte-order mark. QUOTE_NONE: the files are not
    # CSV-quoted, and a sentence may hold a lone '"' that would swallow the following rows.
    with path.open(encoding="utf-8-sig", newline="") as file:
        rows = csv.DictReader(
            file, fieldnames=task.header, delimiter="\t", quoting=csv.QUOTE_NONE
        )
        try:
            missing = [column for column in columns if column not in (rows.fieldnames or [])]
            if missing:
                raise ConfigError(
                    f"{path} has no column {missing} ({task.name} expects {columns}); "
                    f"the header is {rows.fieldnames}."
                )
            for row in rows:
                values = [row[column] for column in columns]
                if None in values or not values[-1]:
                    continue
                for text, value in zip(texts, values[:-1], strict=True):
                    text.append(value)
                labels.append(_label_id(task, values[-1], f"{path}, line {rows.line_num}"))
        except UnicodeDecodeError:
            raise ConfigError(_not_utf8(path, task)) from None
        except csv.Error as error:  # e.g. a field over csv's size limit: not a GLUE TSV
            raise ConfigError(
                f"{path}, line {rows.line_num + 1}: {error}. It is not a {task.name} file in "
                "GLUE's TSV layout; download it again."
            ) from None
    if not labels:  # e.g. a header-less task's file with a header, or a header alone
        layout = (f"tab-separated fields {list(task.header)}, no header line" if task.header
                  else f"a header naming {columns}, then tab-separated rows")
        raise ConfigError(f"{path} holds no usable {task.name} rows; GLUE's layout is {layout}.")
    return Examples(texts[0], texts[1] if len(texts) > 1 else None, labels)


def _label_id(task: GlueTask, value: str, where: str) -> int | float:
    """The label id (the score for STS-B) of ``value``; ``where``: the file and line."""
    if task.num_classes == 1:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise ConfigError(f"{where}: the {task.name} score '{value}' is not a number; "
                              f"the {task.label_column} column holds similarity scores 0-5.")
        return score
    if value in task.label_names:
        return task.label_names.index(value)
    if value.isdigit() and int(value) < task.num_classes and not task.label_names:
        return int(value)
    expected = task.label_names or tuple(str(i) for i in range(task.num_classes))
    raise ConfigError(f"{where}: unexpected {task.name} label '{value}'; "
                      f"the {task.label_column} column holds {', '.join(expected)}.")


def _not_utf8(path: Path, task: GlueTask) -> str:
    """The message for a file that does not decode as UTF-8, naming the line of the first bad
    byte (the file is read again, as bytes, only to find it)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        where = f" (line {line} has the byte {data[error.start]:#04x})"
    return (f"{path} is not UTF-8 text{where}; GLUE's {task.name} files are UTF-8 TSV. "
            "Download the file again, or convert it (iconv -f <its encoding> -t utf-8).")


class _HubUnavailable(Exception):
    """The hub copy of GLUE cannot be loaded here; the message says why."""


def load_hub_examples(task: GlueTask, splits: list[str]) -> dict[str, Examples]:
    """``splits`` of ``task`` from the hub dataset (or the local Hugging Face cache)."""
    if not offline_mode() and not hub_reachable():
        raise _HubUnavailable("the hub is unreachable, and HF_DATASETS_OFFLINE is not set")
    try:
        import datasets  # only needed without a local copy
    except ImportError:
        raise _HubUnavailable("the package datasets is not installed") from None
    try:
        dataset = datasets.load_dataset(HUB_DATASET, task.hub_config)
    except Exception as error:  # no network, not cached, ...: all mean "not available here"
        raise _HubUnavailable(str(error).splitlines()[0] if str(error) else repr(error)) from None
    examples = {}
    for split in splits:
        rows = dataset[task.hub_split(split)]
        texts = [list(rows[column]) for column in task.hub_text_columns]
        second = texts[1] if len(texts) > 1 else None
        examples[split] = Examples(texts[0], second, list(rows["label"]))
    return examples


def load_tokenizer(name_or_path: str):
    """``AutoTokenizer`` from a local directory, or from the hub (its cache when offline)."""
    from transformers import AutoTokenizer

    local = Path(name_or_path).expanduser()
    if name_or_path.startswith((".", "/", "~")) and not local.is_dir():
        raise ConfigError(
            f"Tokenizer directory '{name_or_path}' does not exist. For a checkpoint trained on "
            "another machine, pass model.name_or_path=<the model's directory here> (or "
            "data.tokenizer=) to evaluate.py."
        )
    offline = not local.is_dir() and (offline_mode() or not hub_reachable())
    try:
        return AutoTokenizer.from_pretrained(
            str(local) if local.is_dir() else name_or_path, local_files_only=offline
        )
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"Could not load the tokenizer '{name_or_path}' ({str(error).splitlines()[0]}). "
            "Without internet access, save it with save_pretrained() elsewhere and set "
            "data.tokenizer (it follows model.name_or_path) to its local directory."
        ) from None


class TokenizedText(Dataset):
    """One split's token ids, tokenised once and stored ragged: all sequences concatenated
    (int32) plus offsets, so MNLI's 393k pairs take ~70 MB instead of ~1 GB of Python lists."""

    def __init__(self, input_ids, token_type_ids, lengths: list[int], labels: torch.Tensor):
        self.input_ids = input_ids  # (total tokens,)
        self.token_type_ids = token_type_ids  # (total tokens,) or None
        self.offsets = list(accumulate(lengths, initial=0))
        self.labels = labels  # (N,) long, or float32 for regression

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start, end = self.offsets[index], self.offsets[index + 1]
        item = {"input_ids": self.input_ids[start:end], "labels": self.labels[index]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[start:end]
        return item


def tokenize(tokenizer, examples: Examples, max_length: int, regression: bool) -> TokenizedText:
    """Token ids (a pair is one sequence with token types 0/1), truncated to ``max_length``."""
    chunk = 8192  # bounds the Python lists alive at once
    ids, types, lengths = [], [], []
    for start in range(0, len(examples.labels), chunk):
        part = slice(start, start + chunk)
        encoded = tokenizer(
            examples.first[part],
            examples.second[part] if examples.second is not None else None,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,  # rebuilt per batch from the lengths
        )
        lengths.extend(map(len, encoded["input_ids"]))
        ids.append(_flat(encoded["input_ids"]))
        if "token_type_ids" in encoded:
            types.append(_flat(encoded["token_type_ids"]))
    dtype = torch.float32 if regression else torch.long
    return TokenizedText(
        torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int32),
        torch.cat(types) if types else None,
        lengths,
        torch.tensor(examples.labels, dtype=dtype),
    )


def _flat(sequences: list[list[int]]) -> torch.Tensor:
    return torch.tensor(list(chain.from_iterable(sequences)), dtype=torch.int32)


@dataclass(frozen=True)
class PadToLongest:
    """Collate: pad each batch to its own longest sequence (right padding, BERT style)."""

    pad_token_id: int

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        ids = [item["input_ids"] for item in items]
        lengths = torch.tensor([len(sequence) for sequence in ids])  # (B,)
        input_ids = pad_sequence(ids, batch_first=True, padding_value=self.pad_token_id)  # (B, T)
        positions = torch.arange(input_ids.shape[1])
        batch = {
            "input_ids": input_ids.long(),
            "attention_mask": (positions[None, :] < lengths[:, None]).long(),  # (B, T)
        }
        if "token_type_ids" in items[0]:
            types = [item["token_type_ids"] for item in items]
            batch["token_type_ids"] = pad_sequence(types, batch_first=True).long()
        batch["labels"] = torch.stack([item["labels"] for item in items])
        return batch


class GlueDataModule(SplitLoaders):
    """A GLUE task, tokenised once by the backbone's tokenizer, in dynamically padded batches.

    Sources: ``{data_dir}/{task}/train.tsv`` and the dev files in the layout of GLUE's download
    script (``SST-2/dev.tsv``, ``MNLI/dev_matched.tsv``, ...); without them, the hub dataset
    ``nyu-mll/glue`` (needs the package ``datasets`` and internet, or its cache with
    ``HF_DATASETS_OFFLINE=1``). GLUE's test labels are not public, so ``val`` and ``test`` are
    both the dev set; for MNLI, ``val`` is dev_matched and ``test`` is dev_mismatched.

    Batches are dicts of ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the
    tokenizer makes them) and ``labels`` (long; float32 scores for STS-B). ``train_subset``
    keeps a random N training examples (all if the task has fewer), chosen by ``subset_seed``.
    ``num_classes`` (1 for STS-B's regression), ``metrics`` (GLUE's, headline first) and
    ``task`` (the canonical name) are facts of the task; a different ``num_classes`` is an error.
    """

    inputs = "text"  # what its batches hold; train.py checks that model and data agree

    def __init__(
        self,
        task: str,
        tokenizer: str,
        data_dir: str | None = "./data/glue",
        max_length: int = 128,
        batch_size: int = 32,
        train_subset: int | None = None,
        subset_seed: int = 0,
        num_workers: int = 0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.spec = find_task(task)
        if num_classes is not None and num_classes != self.spec.num_classes:
            raise ConfigError(
                f"GLUE {self.spec.name} has num_classes={self.spec.num_classes}, got "
                f"data.num_classes={num_classes}. Use ${{glue_num_labels:${{data.task}}}}."
            )
        if train_subset is not None and (isinstance(train_subset, bool) or not isinstance(
                train_subset, numbers.Integral) or train_subset < 1):
            raise ConfigError(f"data.train_subset is a number of training examples, a positive "
                              f"integer (or null for all of them); got {train_subset!r}.")
        self.task = self.spec.name
        self.num_classes = self.spec.num_classes
        self.metrics = self.spec.metrics
        self.tokenizer_name = tokenizer  # a hub name or a local directory
        self.data_dir = Path(data_dir).expanduser().absolute() if data_dir else None
        self.max_length = positive_int("data.max_length", max_length)
        self.batch_size = positive_int("data.batch_size", batch_size)
        self.train_subset = train_subset
        self.subset_seed = subset_seed
        self.num_workers = num_workers
        self.splits: dict[str, TokenizedText] = {}
        self.collate: PadToLongest | None = None

    def setup(self, stage: str | None = None) -> None:
        wanted = [split for split in STAGE_SPLITS.get(stage, SPLITS) if split not in self.splits]
        if not wanted:
            return
        examples = self._read(wanted)
        tokenizer = load_tokenizer(self.tokenizer_name)
        # Any pad id works (the attention mask hides it); BERT-family tokenizers all have one.
        pad = tokenizer.pad_token_id
        self.collate = PadToLongest(pad if pad is not None else 0)
        by_source: dict[str, TokenizedText] = {}  # val and test read one dev file (not in MNLI)
        regression = self.num_classes == 1
        for split in wanted:
            source = self.spec.file(split)
            if source not in by_source:
                by_source[source] = tokenize(
                    tokenizer, examples[split], self.max_length, regression
                )
            self.splits[split] = by_source[source]

    def _read(self, splits: list[str]) -> dict[str, Examples]:
        folder = self.data_dir / self.task if self.data_dir else None
        if folder is not None and (folder / "train.tsv").is_file():
            examples = {}
            for split in splits:
                path = folder / self.spec.file(split)
                if not path.is_file():
                    raise ConfigError(f"{path} is missing; {folder} has train.tsv but not it.")
                examples[split] = read_tsv(path, self.spec)
        else:
            try:
                examples = load_hub_examples(self.spec, splits)
            except _HubUnavailable as why:
                raise ConfigError(self._not_found(why)) from None
        if "train" in examples and self.train_subset is not None:
            examples["train"] = examples["train"].subset(self._subset_index(examples["train"]))
        return examples

    def _subset_index(self, train: Examples) -> list[int]:
        generator = torch.Generator().manual_seed(self.subset_seed)
        chosen = torch.randperm(len(train.labels), generator=generator)[: self.train_subset]
        return chosen.sort().values.tolist()  # keep the file's order

    def _not_found(self, why: Exception) -> str:
        files = ", ".join(dict.fromkeys(self.spec.file(split) for split in SPLITS))
        where = (
            f"No local copy at {self.data_dir / self.task / 'train.tsv'}"
            if self.data_dir
            else "data.data_dir is null"
        )
        return (
            f"GLUE {self.task} not found. {where}, and the Hugging Face hub copy "
            f"({HUB_DATASET}, {self.spec.hub_config}) could not be loaded: {why}. Either download "
            "GLUE on a machine with internet (the GLUE download script, or load_dataset once and "
            "then set HF_DATASETS_OFFLINE=1 to use the cache), or point data.data_dir at a "
            f"directory holding {self.task}/{{{files}}} in the standard GLUE TSV layout."
        )

    def loader(self, split: str) -> DataLoader:
        if split not in self.splits:
            self.setup()
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            **shuffling(self.splits[split], split == "train"),
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
