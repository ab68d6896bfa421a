"""MiniLM (all-MiniLM-L6-v2, pretrained, offline) on the real SST-2: per-layer dev accuracy of
standard vs aligned vs multi-exit training, with mean and CLS pooling.

    python benchmarks/minilm_sst2.py [--glue-dir ../shared/data/glue] [--out benchmarks/out/minilm]
    python benchmarks/minilm_sst2.py --runs standard_mean aligned_mean --seeds 0 1 2

Each run is the real entry point, ``python train.py experiment=minilm_sst2 ...`` (16,000
shuffled training sentences, one pass, batch 32, max length 64, AdamW with 10% warm-up then
linear decay), so the numbers are what a user gets; a run takes 5–7 min on 2 CPU cores.
Prints a markdown table of dev accuracy per layer; with several seeds, the mean ± sample std
over seeds (standard training's early layers vary a lot from seed to seed).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from aligned.arguments import output_directory, positive_int, random_seed
from aligned.training.json_files import read_json

ROOT = Path(__file__).resolve().parents[1]
# (loss, pooling, learning rate): CLS pooling fine-tunes less stably at 1e-4, as in the probe.
RUNS = [
    ("standard", "mean", 1e-4),
    ("aligned", "mean", 1e-4),
    ("multiexit", "mean", 1e-4),
    ("standard", "cls", 5e-5),
    ("aligned", "cls", 5e-5),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--out", type=output_directory,
                        default=str(ROOT / "benchmarks" / "out" / "minilm_sst2"))
    parser.add_argument("--train-subset", type=positive_int, default=16000)
    parser.add_argument("--seeds", type=random_seed, nargs="+", default=[0])
    parser.add_argument("--runs", nargs="+", help="a subset of the runs (default: all five)",
                        choices=[f"{loss}_{pooling}" for loss, pooling, _ in RUNS])
    args = parser.parse_args(argv)
    if not (Path(args.glue_dir) / "SST-2" / "train.tsv").is_file():
        parser.error(f"SST-2 not found under {args.glue_dir}; pass --glue-dir <dir with SST-2/>.")

    rows = []
    for loss, pooling, lr in RUNS:
        if args.runs and f"{loss}_{pooling}" not in args.runs:
            continue
        per_seed = []
        for seed in args.seeds:
            run_dir = Path(args.out) / f"{loss}_{pooling}" / f"seed{seed}"
            per_seed.append(train(loss, pooling, lr, seed, run_dir, args))
        rows.append((loss, pooling, lr, per_seed))

    seeds = " ".join(map(str, args.seeds))
    layers = len(rows[0][3][0][0])
    print("\n| loss | pooling | lr | seeds | " + " | ".join(f"L{i}" for i in range(1, layers + 1))
          + " | wall s |")
    print("|---|---|---|---|" + "---|" * layers + "---|")
    for loss, pooling, lr, per_seed in rows:
        cells = [mean_std([100 * dev[layer] for dev, _ in per_seed]) for layer in range(layers)]
        wall = statistics.mean(wall for _, wall in per_seed)
        print(f"| {loss} | {pooling} | {lr:g} | {seeds} | " + " | ".join(cells)
              + f" | {wall:.0f} |")


def train(loss: str, pooling: str, lr: float, seed: int, run_dir: Path,
          args: argparse.Namespace) -> tuple[list[float], float]:
    """One run of the real entry point: per-layer dev accuracy and wall seconds."""
    command = [
        sys.executable, "train.py", "experiment=minilm_sst2", f"loss={loss}",
        f"model.pooling={pooling}", f"optim.lr={lr}", f"seed={seed}",
        f"data.data_dir={args.glue_dir}", f"data.train_subset={args.train_subset}",
        "logger=csv", f"hydra.run.dir={run_dir}", "+trainer.enable_progress_bar=false",
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    dev = read_json(run_dir / "results.json")["layer_accuracy"]["val"]
    print(f"{loss:>9} {pooling:>4} lr={lr:g} seed={seed}: "
          + " ".join(f"{100 * a:.1f}" for a in dev) + f"  ({wall:.0f} s)", flush=True)
    return dev, wall


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


if __name__ == "__main__":
    main()
