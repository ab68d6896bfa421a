"""Runs that survive and scale: kill-and-resume, and 2-process DDP on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from conftest import ROOT, TINY

# Every training batch, small: each epoch takes long enough (~1-2 s) to kill the run mid-way.
RESUMABLE = [
    *(o for o in TINY if not o.startswith(("+trainer.limit_train_batches", "trainer.max_epochs"))),
    "+data.batch_size=8", "trainer.max_epochs=4", "+trainer.deterministic=true",
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


def test_killed_run_resumes_from_its_last_epoch(tmp_path):
    overrides = RESUMABLE
    uninterrupted = subprocess.run(
        train_py(*overrides, f"hydra.run.dir={tmp_path}/full"), cwd=ROOT, env=env(),
        capture_output=True, text=True, timeout=300,
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        train_py(*overrides, f"hydra.run.dir={run_dir}"), cwd=ROOT, env=env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while completed_epoch(last) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # a real kill, after epoch 2 of 4
    assert process.wait() == -signal.SIGKILL
    assert not (run_dir / "results.json").exists(), "the run finished before it was killed"
    assert 1 <= completed_epoch(last) < 3

    resumed = subprocess.run(
        train_py(*overrides, f"resume={run_dir}", f"hydra.run.dir={tmp_path}/resume"),
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    again = json.loads((run_dir / "results.json").read_text())  # written into the resumed run
    assert completed_epoch(last) == 3  # continued to epoch 4 of 4, not restarted
    assert set(again) == set(full) and again["num_layers"] == full["num_layers"]
    # Deterministic mode, shuffle order from (seed, epoch), RNGs reseeded per epoch: the resumed
    # run trains on the same batches with the same draws, so the results are identical.
    assert again["layer_accuracy"] == full["layer_accuracy"]
    assert again["final_accuracy"] == full["final_accuracy"]


def test_resume_from_a_missing_run_is_a_clear_error(tmp_path):
    done = subprocess.run(
        train_py(*TINY, f"resume={tmp_path}/nothing", f"hydra.run.dir={tmp_path}/run"),
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    assert "Cannot resume" in done.stderr and "Traceback" not in done.stderr


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    full_eval = ["+trainer.limit_val_batches=1.0", "+trainer.limit_test_batches=1.0"]
    overrides = [o for o in TINY if not o.startswith(("+trainer.limit_val", "+trainer.limit_test"))]
    done = subprocess.run(
        train_py(*overrides, *full_eval, "trainer=ddp_cpu", f"hydra.run.dir={tmp_path}/ddp"),
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # One run directory and one results.json, written by rank 0 only.
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())

    # The same checkpoint tested in this single process gives the same per-layer accuracy.
    from aligned.checkpoints import load_system, read_checkpoint
    from aligned.data.digits import DigitsDataModule

    system = load_system(read_checkpoint(results["checkpoint"]))
    data = DigitsDataModule()
    data.setup("test")
    images, labels = data.splits["test"].tensors
    with torch.no_grad():
        accuracy = (system(images).argmax(-1) == labels).float().mean(1)  # (L,)
    np.testing.assert_allclose(results["layer_accuracy"]["test"], accuracy.numpy(), atol=1e-6)
