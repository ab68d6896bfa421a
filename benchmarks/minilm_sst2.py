"""MiniLM (all-MiniLM-L6-v2, pretrained, offline) on the real SST-2: per-layer dev accuracy of
standard vs aligned vs multi-exit training, with mean and CLS pooling.

    python benchmarks/minilm_sst2.py [--glue-dir ../shared/data/glue] [--out benchmarks/out/minilm]

Each run is the real entry point, ``python train.py experiment=minilm_sst2 ...`` (16,000
shuffled training sentences, one pass, batch 32, max length 64, AdamW with 10% warm-up then
linear decay), so the numbers are what a user gets; five runs take ~30 min on 2 CPU cores.
Prints a markdown table of dev accuracy per layer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (loss, pooling, learning rate): CLS pooling fine-tunes less stably at 1e-4, as in the probe.
RUNS = [
    ("standard", "mean", 1e-4),
    ("aligned", "mean", 1e-4),
    ("multiexit", "mean", 1e-4),
    ("standard", "cls", 5e-5),
    ("aligned", "cls", 5e-5),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "minilm_sst2"))
    parser.add_argument("--train-subset", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (Path(args.glue_dir) / "SST-2" / "train.tsv").is_file():
        sys.exit(f"SST-2 not found under {args.glue_dir}; pass --glue-dir <dir with SST-2/>.")

    rows = []
    for loss, pooling, lr in RUNS:
        run_dir = Path(args.out) / f"{loss}_{pooling}"
        command = [
            sys.executable, "train.py", "experiment=minilm_sst2", f"loss={loss}",
            f"model.pooling={pooling}", f"optim.lr={lr}", f"seed={args.seed}",
            f"data.data_dir={args.glue_dir}", f"data.train_subset={args.train_subset}",
            "logger=csv", f"hydra.run.dir={run_dir}", "+trainer.enable_progress_bar=false",
        ]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        results = json.loads((run_dir / "results.json").read_text())
        dev = results["layer_accuracy"]["val"]
        rows.append((loss, pooling, lr, dev, wall))
        print(f"{loss:>9} {pooling:>4} lr={lr:g}: " + " ".join(f"{100 * a:.1f}" for a in dev)
              + f"  ({wall:.0f} s)", flush=True)

    layers = len(rows[0][3])
    print("\n| loss | pooling | lr | " + " | ".join(f"L{i}" for i in range(1, layers + 1))
          + " | wall s |")
    print("|---|---|---|" + "---|" * layers + "---|")
    for loss, pooling, lr, dev, wall in rows:
        print(f"| {loss} | {pooling} | {lr:g} | " + " | ".join(f"{100 * a:.1f}" for a in dev)
              + f" | {wall:.0f} |")


if __name__ == "__main__":
    main()
