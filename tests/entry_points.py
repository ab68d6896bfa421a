"""train.py and evaluate.py run as a user runs them, in their own process: the command lines, the
environment they run in, the tiny settings a run long enough to kill and resume needs, and the
epoch a run's last checkpoint holds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ROOT, TINY

# Every training batch, small: each epoch takes long enough (~1-2 s) to kill the run mid-way.
RESUMABLE = [
    *(o for o in TINY
      if not o.startswith(("+trainer.limit_train_batches", "trainer.max_epochs", "logger="))),
    "data.batch_size=8", "trainer.max_epochs=4", "+trainer.deterministic=true", "logger=csv",
]


def train_py(*overrides: str) -> list[str]:
    return [sys.executable, "train.py", *overrides]


def env() -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def completed_epoch(last: Path) -> int:
    """The epoch stored in last.ckpt, or -1 while it is missing or still being written."""
    try:
        return int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # noqa: BLE001  (partially written file)
        return -1


def run_evaluate(*overrides: str, out: Path, env: dict | None = None):
    """evaluate.py run into ``out``; ``env`` adds to the environment (e.g. W&B's offline mode)."""
    return subprocess.run(
        [sys.executable, "evaluate.py", f"hydra.run.dir={out}", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )
