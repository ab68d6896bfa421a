"""Per-step training cost of each objective on the default model (ViT on digits batches).

    python benchmarks/step_cost.py [--steps 300] [--batch-size 64]

A step = forward through every layer, the objective's loss, backward, AdamW update. The
objectives are timed in interleaved rounds so drift in machine load hits them equally; the
median round is reported, with the plain timm forward + CE (no per-layer read-out) for reference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from aligned.training.system import LayerwiseClassifier

CONF = Path(__file__).resolve().parents[1] / "conf"


def build(loss: str) -> LayerwiseClassifier:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"loss={loss}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    torch.manual_seed(0)
    return LayerwiseClassifier(model=cfg.model, loss=cfg.loss, optim=cfg.optim)


def step_fn(system: LayerwiseClassifier, plain: bool):
    optimizer = torch.optim.AdamW(system.parameters(), lr=1e-4)

    def step(images: torch.Tensor, target: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        if plain:  # timm's own forward: last layer only, no per-layer read-out
            loss = F.cross_entropy(system.backbone.model(images), target)
        else:
            loss = system.objective(system(images), target)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    variants = {
        "timm forward + CE (reference)": step_fn(build("standard"), plain=True),
        "loss=standard": step_fn(build("standard"), plain=False),
        "loss=aligned": step_fn(build("aligned"), plain=False),
        "loss=multiexit": step_fn(build("multiexit"), plain=False),
    }
    images = torch.randn(args.batch_size, 1, 8, 8)
    target = torch.randint(0, 10, (args.batch_size,))
    for step in variants.values():  # warm-up
        for _ in range(20):
            step(images, target)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(images, target)
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)

    standard = statistics.median(times["loss=standard"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds (median round)")
    print(f"{'variant':<32} {'ms/step':>8} {'vs standard':>12}")
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"{name:<32} {ms:8.2f} {100 * (ms / standard - 1):+11.1f}%")


if __name__ == "__main__":
    main()
