"""Runs that survive and scale: kill-and-resume, and 2-process DDP on CPU."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY
from entry_points import RESUMABLE, completed_epoch, env, train_py

from aligned.training.callbacks import TrainingTime

pytestmark = pytest.mark.slow  # every test here starts train.py processes


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

    trained_before = torch.load(last, weights_only=False)["callbacks"]["TrainingTime"]["seconds"]
    # The run directory moves before the resume (another disk, a copy to a cluster): the stored
    # checkpoint paths must follow it.
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    run_dir, last = moved, moved / "checkpoints" / "last.ckpt"
    resumed = subprocess.run(
        train_py(*overrides, f"resume={run_dir}", f"hydra.run.dir={tmp_path}/resume"),
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    again = json.loads((run_dir / "results.json").read_text())  # written into the resumed run
    assert completed_epoch(last) == 3  # continued to epoch 4 of 4, not restarted
    assert Path(again["checkpoint"]).parent == run_dir / "checkpoints"
    assert len(list((run_dir / "checkpoints").glob("epoch*.ckpt"))) == 1  # the old best replaced
    assert again["train_time_s"] > trained_before  # counts the epochs before the kill too
    with open(run_dir / "csv" / "metrics.csv") as file:  # the whole run's history, once each
        rows = list(csv.DictReader(file))
    validated = [int(row["epoch"]) for row in rows if row.get("val/acc")]
    assert validated[:4] == [0, 1, 2, 3]  # then the best checkpoint's final validation
    steps = [int(row["step"]) for row in rows if row.get("train/loss")]
    assert steps and len(steps) == len(set(steps))  # a killed partial epoch's rows not repeated
    assert set(again) == set(full) and again["num_layers"] == full["num_layers"]
    # Deterministic mode, shuffle order from (seed, epoch), RNGs reseeded per epoch: the resumed
    # run trains on the same batches with the same draws, so the results are identical.
    assert again["layer_accuracy"] == full["layer_accuracy"]
    assert again["final_accuracy"] == full["final_accuracy"]


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
    from aligned.data.digits import DigitsDataModule
    from aligned.training.checkpoints import load_system, read_checkpoint

    system = load_system(read_checkpoint(results["checkpoint"]))
    data = DigitsDataModule()
    data.setup("test")
    images, labels = data.splits["test"].tensors
    with torch.no_grad():
        accuracy = (system(images).argmax(-1) == labels).float().mean(1)  # (L,)
    np.testing.assert_allclose(results["layer_accuracy"]["test"], accuracy.numpy(), atol=1e-6)


def test_resume_with_other_settings_a_stray_checkpoint_or_no_run_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.run(train_py(*TINY, f"hydra.run.dir={run_dir}"), cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    stray = tmp_path / "copy.ckpt"
    stray.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    for overrides, resume, expected in (
        (["loss=standard"], run_dir, "loss._target_"),
        (["seed=5"], run_dir, "seed: 0 in the run, 5 now"),
        ([], stray, "not in a run's checkpoints/ folder"),
        ([], tmp_path / "nothing", "Cannot resume"),
    ):
        done = subprocess.run(
            train_py(*TINY, *overrides, f"resume={resume}", f"hydra.run.dir={tmp_path}/again"),
            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and expected in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
    assert not (tmp_path.parent / "checkpoints").exists()  # nothing run from the stray's dir
    cut = tmp_path / "cut" / "checkpoints"  # a last.ckpt cut short by the kill
    cut.mkdir(parents=True)
    (cut / "last.ckpt").write_bytes(stray.read_bytes()[:1000])
    done = subprocess.run(
        train_py(*TINY, f"resume={cut.parent}", f"hydra.run.dir={tmp_path}/again"),
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "cannot be read" in done.stderr, done.stderr[-2000:]
    assert f"pass resume={cut}/<epochNNN>.ckpt" in done.stderr
    assert "Use last.ckpt" not in done.stderr  # last.ckpt is the file that is broken

    # A checkpoint written before TrainingTime, data.eval_batch_size and a written-out
    # loss.alternating existed still resumes, and keeps its best epoch: the callbacks store
    # their state under ModelCheckpoint's key (checked), and read the key they had for a while.
    last = run_dir / "checkpoints" / "last.ckpt"
    old = torch.load(last, weights_only=False)
    keys = [key for key in old["callbacks"] if key.startswith("ModelCheckpoint{")]
    assert len(keys) == 2
    for key in keys:
        old["callbacks"][key.replace("ModelCheckpoint", "RelocatableCheckpoint")] = \
            old["callbacks"].pop(key)
    del old["callbacks"]["TrainingTime"], old["run_config"]["data"]["eval_batch_size"]
    del old["run_config"]["loss"]["alternating"]  # its default: no change of settings
    torch.save(old, last)
    done = subprocess.run(
        train_py(*TINY, "trainer.max_epochs=2", f"resume={run_dir}", f"hydra.run.dir={tmp_path}/a"),
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "learning-rate schedule" in done.stdout + done.stderr  # max_epochs changed: warned
    assert len(list((run_dir / "checkpoints").glob("epoch*.ckpt"))) == 1


def test_training_time_adds_the_time_before_the_resume():
    timer = TrainingTime()
    timer.load_state_dict({"seconds": 100.0})  # restored from the checkpoint
    timer.on_fit_start(None, None)
    assert 100 <= timer.seconds < 101 and timer.state_dict()["seconds"] >= 100
