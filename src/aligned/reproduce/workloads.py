"""What the reproduction trains: workloads (a model on a data set, as train.py overrides) and
scales (which workloads, how many seeds, how long each run trains)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aligned.config import ConfigError

DEFAULT_LOSSES = ("standard", "aligned", "multiexit")
# alternating: the authors' GPT-2 variant; sampled: aligned on 2 hidden layers drawn per step
LOSSES = (*DEFAULT_LOSSES, "alternating", "sampled")


@dataclass(frozen=True)
class Workload:
    """One model on one data set. ``overrides`` are train.py's (an experiment config, mostly);
    ``glue`` workloads read GLUE from the reproduction's GLUE directory; ``benchmark``: the
    early-exit wall clock is measured on its checkpoints of ``benchmark_losses`` (a causal
    LM's: greedy decoding, full depth against lossless self-speculative decoding);
    ``losses``: what it trains unless --losses says otherwise."""

    name: str
    title: str
    overrides: tuple[str, ...]
    glue: bool = False
    benchmark: bool = False
    losses: tuple[str, ...] = DEFAULT_LOSSES
    benchmark_losses: tuple[str, ...] = ("aligned",)


@dataclass(frozen=True)
class Scale:
    """A set of workloads, each with this scale's extra overrides, and the seeds."""

    name: str
    description: str
    workloads: dict[str, tuple[str, ...]]  # workload name -> extra overrides at this scale
    seeds: tuple[int, ...]
    # Timed rounds of the early-exit benchmark: the median is reported, the spread decides
    # (claims.MIN_ROUNDS: fewer leave the timing verdict open).
    benchmark_rounds: int = 3
    benchmark_seeds: int | None = None  # benchmark only the first N seeds (None: all)
    default_report: str | None = None  # in the checkout, unless --out says otherwise
    notes: tuple[str, ...] = field(default=())


WORKLOADS = {w.name: w for w in (
    Workload("vit_digits", "ViT on digits 8x8", ("data=digits",)),
    Workload("vit_mnist", "ViT on MNIST-28", ("experiment=vit_mnist",),
             benchmark=True),
    Workload("minilm_sst2", "MiniLM-L6 on SST-2 (val = test = GLUE dev)",
             ("experiment=minilm_sst2",), glue=True),
    Workload("minilm_bbc", "MiniLM-L6 on BBC News", ("experiment=minilm_bbc",)),
    # The paper's causal-LM figures where no GPU is: a LLaMA trained from scratch, per token.
    Workload("lm_bbc", "LLaMA from scratch on BBC News (next token, per token)",
             ("experiment=lm_bbc",), losses=LOSSES, benchmark=True,
             benchmark_losses=("standard", "aligned")),
    # The paper's setups, for GPUs and their data sets (scale=paper; never run here).
    Workload("deit_s_cifar10", "DeiT-S on CIFAR-10 (224x224)", ("experiment=deit_s_cifar10",),
             benchmark=True),
    Workload("deit_s_cifar100", "DeiT-S on CIFAR-100 (224x224)", ("experiment=deit_s_cifar100",)),
    Workload("bert_sst2", "BERT-base on SST-2 (val = test = GLUE dev)",
             ("experiment=bert_glue", "data.task=sst2"), glue=True),
    Workload("bert_mnli", "BERT-base on MNLI", ("experiment=bert_glue", "data.task=mnli"),
             glue=True),
    Workload("gpt2_wikitext103", "GPT-2 on WikiText-103 (next token, per token)",
             ("experiment=gpt2_wikitext103",)),
)}

SCALES = {s.name: s for s in (
    Scale(
        "default",
        "the CPU report: every run as its config trains it (digits 100 epochs, MNIST 20, "
        "BBC News twice over 1,335 articles, the LLaMA from scratch one pass over BBC News) but "
        "SST-2 on 8,000 sentences once (half its config's 16,000, to fit the 36 classifier "
        "runs into 3 hours of 2 cores), 3 seeds",
        {"vit_digits": (), "vit_mnist": (), "minilm_sst2": ("data.train_subset=8000",),
         "minilm_bbc": (), "lm_bbc": ()},
        seeds=(0, 1, 2),
        default_report="docs/REPRODUCTION.md",
    ),
    Scale(
        "quick",
        "a smoke run: the same workloads cut short (digits 10 epochs, MNIST 6, SST-2 400 "
        "sentences, BBC News 160 articles at 64 tokens, the LM 50 steps), 1 seed",
        # MNIST at 6 epochs, not fewer: at 2 or 4 (25-29% test accuracy) every exit rule's
        # operating point is layer 1, where the timing sits within noise of its threshold.
        {"vit_digits": ("trainer.max_epochs=10",),
         "vit_mnist": ("trainer.max_epochs=6",),
         "minilm_sst2": ("data.train_subset=400",),
         "minilm_bbc": ("data.train_subset=160", "data.max_length=64", "trainer.max_epochs=1"),
         "lm_bbc": ("+trainer.limit_train_batches=50",)},
        seeds=(0,),
    ),
    Scale(
        "paper",
        "the paper's setups for GPUs: DeiT-S fine-tuned on CIFAR-10/100, BERT-base on SST-2 and "
        "MNLI, GPT-2 on WikiText-103 (its layer-wise figures are per token; its early exit is "
        "decoding, benchmarks/decoding.py, not the classifiers' sweep), 3 seeds",
        {"deit_s_cifar10": (), "deit_s_cifar100": (), "bert_sst2": (), "bert_mnli": (),
         "gpt2_wikitext103": ()},
        seeds=(0, 1, 2),
        benchmark_seeds=1,  # batch 1 over CIFAR's 10,000 test images: minutes per round
    ),
)}


def find(table: dict, name: str, what: str):
    if name not in table:
        raise ConfigError(f"Unknown {what} '{name}'; choose one of {', '.join(table)}.")
    return table[name]
