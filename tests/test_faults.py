"""Nothing lost, nothing silently wrong: run directories that cannot collide, typed settings,
signals from schedulers, and files written whole or not at all."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import OLD_CHECKPOINT, ROOT, TINY
from entry_points import RESUMABLE, completed_epoch, env, train_py
from omegaconf import OmegaConf

from aligned.config import ConfigError
from aligned.training import run_directory
from aligned.training.atomic_files import AtomicCheckpointIO, write_atomically
from aligned.training.fit import train
from aligned.typed_settings import describe, matches

# ---------------------------------------------------------------- run directories


@pytest.mark.slow
def test_two_runs_started_together_get_their_own_directories(tmp_path):
    """Both with the default run directory, from the same working directory, in one second."""
    processes = [
        subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, f"seed={seed}"],
                         cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
        for seed in (0, 1)
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    run_dirs = sorted((tmp_path / "outputs" / "aligned").iterdir())
    assert len(run_dirs) == 2
    seeds = {json.loads((d / "results.json").read_text())["seed"] for d in run_dirs}
    assert seeds == {0, 1}
    for run_dir in run_dirs:  # each directory's recorded overrides are its own run's
        seed = json.loads((run_dir / "results.json").read_text())["seed"]
        assert f"seed={seed}" in (run_dir / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.slow
def test_a_directory_in_use_by_a_live_run_is_refused_and_left_alone(tmp_path):
    run_dir = tmp_path / "shared"
    holder = subprocess.Popen(  # a live run's lock, as train() takes it
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from aligned.training.run_directory import lock; lock(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(120)", str(run_dir)],
        stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text("- the live run's\n")
        done = subprocess.run(train_py(*TINY, f"hydra.run.dir={run_dir}"), cwd=ROOT, env=env(),
                              capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"Error: Run directory {run_dir} is in use by a live run (pid {holder.pid} on ")
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- the live run's\n"
    assert not (run_dir / "checkpoints").exists()


def test_a_used_directory_needs_resume_or_overwrite(tiny_train_cfg, tmp_path):
    first = train(tiny_train_cfg())
    run_dir = Path(first["checkpoint"]).parents[1]
    (run_dir / "checkpoints" / "epoch041.ckpt").write_bytes(b"an older run's file")
    with pytest.raises(ConfigError, match=r"already holds a run \(results.json, checkpoints\)"
                                          r".*resume=.*overwrite=true"):
        train(tiny_train_cfg("seed=1"))
    assert json.loads((run_dir / "results.json").read_text())["seed"] == 0  # untouched

    second = train(tiny_train_cfg("seed=1", "overwrite=true"))
    assert json.loads((run_dir / "results.json").read_text())["seed"] == 1
    assert second["seed"] == 1
    assert not (run_dir / "checkpoints" / "epoch041.ckpt").exists()  # nothing of the old run


@pytest.mark.slow
def test_the_lock_is_released_when_training_ends_and_ranks_above_zero_skip_it(tmp_path,
                                                                              monkeypatch):
    run_directory.lock(tmp_path / "a")
    run_directory.release_all()
    run_directory.lock(tmp_path / "a")  # free again
    run_directory.release_all()
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP process of the same run shares the directory
    assert not run_directory.is_launching_process()


# ---------------------------------------------------------------- typed settings


@pytest.mark.parametrize("override, message", [
    ("loss.alternating=no", "loss.alternating must be true or false, got 'no'."),
    ("loss.alternating=off", "loss.alternating must be true or false, got 'off'."),
    ("seed=1.5", "seed must be an integer, got 1.5."),
    ("seed=abc", "seed must be an integer, got 'abc'."),
    ("seed=-1", r"seed must be an integer in \[0, 2\*\*32\), got -1."),
    ("trainer.max_epochs=two", "trainer.max_epochs must be an integer or null, got 'two'."),
    ("loss.weighting=[a,b]", r"loss.weighting must be a string or a list of numbers, got \['a'"),
    ("data.batch_size=8.5", "data.batch_size must be an integer, got 8.5."),
    ("+data.val_fraction=x", "data.val_fraction must be a number, got 'x'."),
    ("optim.lr=fast", "optim.lr must be a number, got 'fast'."),
    ("+trainer.enable_checkpointing=maybe", "trainer.enable_checkpointing must be true or"),
    ("overwrite=yes", "overwrite must be true or false, got 'yes'."),
    ("+model.pretrained=no", "model.pretrained must be true or false, got 'no'."),
])
def test_a_setting_of_the_wrong_type_is_named_with_what_it_accepts(tiny_train_cfg, override,
                                                                   message):
    with pytest.raises(ConfigError, match=message):
        train(tiny_train_cfg(override))


@pytest.mark.slow
def test_evaluate_checks_its_own_keys(tmp_path):
    done = subprocess.run(
        [sys.executable, "evaluate.py", "ckpt_path=any.ckpt", "early_exit.enabled=no",
         f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env(), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == "Error: early_exit.enabled must be true or false, got 'no'."


def test_the_type_check_reads_unions_literals_and_lists():
    from typing import Literal

    assert matches(None, int | None) and matches(3, int | None) and not matches(3.5, int | None)
    assert matches(2, float) and not matches(True, float) and not matches(True, int)
    assert matches("bf16-mixed", Literal["bf16-mixed", 32]) and matches(32, Literal["32", 32])
    assert not matches("32 ", Literal["32", 32])
    assert matches(OmegaConf.create([1, 2.5]), list[float])
    assert not matches(OmegaConf.create([1, "a"]), list[float])
    assert matches(object(), torch.nn.Module)  # types its own code checks are left to it
    assert describe(Literal["test", "val"]) == "one of 'test', 'val'"


# ---------------------------------------------------------------- signals


@pytest.mark.slow
def test_sigterm_saves_says_how_to_resume_and_the_resumed_run_matches(tmp_path):
    overrides = RESUMABLE
    uninterrupted = subprocess.run(train_py(*overrides, f"hydra.run.dir={tmp_path}/full"),
                                   cwd=ROOT, env=env(), capture_output=True, text=True,
                                   timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    run_dir = tmp_path / "stopped"
    process = subprocess.Popen(train_py(*overrides, f"hydra.run.dir={run_dir}"), cwd=ROOT,
                               env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while completed_epoch(last) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # what a scheduler sends before it kills a job
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    message = process.stderr.read().strip().splitlines()[-1]
    assert message.startswith("Stopped by SIGTERM in epoch ")
    assert message.endswith(f"resume={run_dir}")
    assert "Resume with: python train.py " in message and "data.batch_size=8" in message
    assert not (run_dir / "results.json").exists()
    assert not list((run_dir / "checkpoints").glob(".*partial"))

    resumed = subprocess.run(train_py(*overrides, f"resume={run_dir}",
                                      f"hydra.run.dir={tmp_path}/resume"),
                             cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    again = json.loads((run_dir / "results.json").read_text())
    assert again["layer_accuracy"] == full["layer_accuracy"]


@pytest.mark.slow
def test_sigterm_in_a_sweep_stops_it_names_what_did_not_run_and_summarises_the_rest(tmp_path):
    sweep_dir = tmp_path / "sweep"
    process = subprocess.Popen(
        train_py("-m", *RESUMABLE, "trainer.max_epochs=2", "seed=0,1,2",
                 f"hydra.sweep.dir={sweep_dir}"),
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (sweep_dir / "0" / "results.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    while completed_epoch(sweep_dir / "1" / "checkpoints" / "last.ckpt") < 0 \
            and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # during job 1's second epoch
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Not run: the sweep was stopped by SIGTERM." in err  # job 2
    assert err.strip().splitlines()[-1] == \
        "The sweep was stopped by SIGTERM; jobs without results: 1, 2."
    summary = (sweep_dir / "summary.md").read_text()
    assert "| 1 (0) |" in summary  # job 0's row
    assert not (sweep_dir / "2" / "checkpoints").exists()


# ---------------------------------------------------------------- atomic files


def test_a_failed_or_interrupted_write_leaves_the_previous_file_and_no_partial(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"epoch 3")

    def half_then(error: BaseException):
        def write(file):
            file.write(b"half of epoch 4")
            raise error
        return write

    with pytest.raises(ConfigError, match=r"Cannot write the checkpoint .*last.ckpt: No space "
                                          r"left on device; free space on that disk"):
        write_atomically(path, half_then(OSError(errno.ENOSPC, "full")), "checkpoint")
    with pytest.raises(ConfigError, match="Read-only file system; the file system is read-only"):
        write_atomically(path, half_then(OSError(errno.EROFS, "ro")), "checkpoint")
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, half_then(KeyboardInterrupt()), "checkpoint")
    assert path.read_bytes() == b"epoch 3"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_full_disk_during_training_is_one_error_and_leaves_no_checkpoint(tiny_train_cfg,
                                                                         monkeypatch):
    def full_disk(checkpoint, file):
        file.write(b"PK\x03\x04 a zip header, then the disk was full")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    cfg = tiny_train_cfg()
    with pytest.raises(ConfigError, match="Cannot write the checkpoint") as raised:
        train(cfg)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    checkpoints = Path(cfg.run_dir) / "checkpoints"
    assert not list(checkpoints.glob("*.ckpt")) and not list(checkpoints.glob(".*"))


def test_checkpoints_written_by_the_atomic_io_load_as_lightning_writes_them(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 3, "w": torch.ones(2)}, tmp_path / "c" / "x.ckpt")
    loaded = io.load_checkpoint(tmp_path / "c" / "x.ckpt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], torch.ones(2))


# ---------------------------------------------------------------- evaluation splits


def test_the_checkpoints_own_split_shares_no_sample_with_its_training_split():
    from aligned.data.split_overlap import training_overlap

    digits = {"_target_": "aligned.data.digits.DigitsDataModule"}
    assert training_overlap(digits, {}, "test")["in_training_split"] == 0
    assert training_overlap(digits, {}, "val")["in_training_split"] == 0
    other = training_overlap(digits, {"split_seed": 5}, "test")
    assert other == {"split": "test", "samples": 360, "in_training_split": 227,
                     "fraction": 227 / 360}


@pytest.mark.slow
def test_evaluate_refuses_another_split_unless_allowed_and_then_records_the_overlap(tmp_path):
    def evaluate_py(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "evaluate.py", f"ckpt_path={OLD_CHECKPOINT}",
             "early_exit.enabled=false", f"hydra.run.dir={tmp_path}", *overrides],
            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)

    refused = evaluate_py("+data.split_seed=5")
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith(
        "Error: data.split_seed=5 (trained with 0) changes which samples the splits hold")
    assert "allow_other_split=true" in refused.stderr
    assert not (tmp_path / "evaluation.json").exists()

    allowed = evaluate_py("+data.split_seed=5", "allow_other_split=true")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "holds 227 of 360 samples the checkpoint trained on" in allowed.stdout + allowed.stderr
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["data_overrides"] == {"split_seed": 5}
    assert evaluation["split_overlap"]["in_training_split"] == 227

    same = evaluate_py("+data.split_seed=0", "overwrite=true")  # the value it trained with
    assert same.returncode == 0, same.stderr[-2000:]
    assert "split_overlap" not in json.loads((tmp_path / "evaluation.json").read_text())


# ---------------------------------------------------------------- misleading messages


def test_fast_dev_run_is_a_smoke_test_that_says_what_ran(tiny_train_cfg, capsys):
    assert train(tiny_train_cfg("+trainer.fast_dev_run=true")) is None
    assert "trainer.fast_dev_run: 1 training and 1 validation batch(es) ran" in \
        capsys.readouterr().out


def test_resuming_a_finished_run_adds_no_training_time(tiny_train_cfg, tmp_path):
    first = train(tiny_train_cfg())
    run_dir = Path(first["checkpoint"]).parents[1]
    stored = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    trained = stored["callbacks"]["TrainingTime"]["seconds"]  # at the last epoch's end
    again = train(tiny_train_cfg(f"resume={run_dir}"))  # max_epochs already reached
    assert again["train_time_s"] == round(trained, 2) <= first["train_time_s"]


@pytest.mark.slow
def test_a_missing_compare_to_names_compare_to(tmp_path):
    done = subprocess.run(
        [sys.executable, "evaluate.py", f"ckpt_path={OLD_CHECKPOINT}", "compare_to=/nope.ckpt",
         f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env(), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "Error: Checkpoint '/nope.ckpt' does not exist. Pass compare_to=<run dir>/checkpoints/"
        "<file>.ckpt (the path is printed at the end of train.py and stored in results.json).")


# ---------------------------------------------------------------- requeued jobs


def test_resume_auto_starts_afresh_then_continues_in_the_same_directory(tiny_train_cfg):
    first = train(tiny_train_cfg("resume=auto"))  # nothing to resume: a fresh run
    run_dir = Path(first["checkpoint"]).parents[1]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
    again = train(tiny_train_cfg("resume=auto", "trainer.max_epochs=2"))  # the requeued job
    assert Path(again["checkpoint"]).parents[1] == run_dir
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1


def test_resume_auto_replaces_what_an_attempt_without_a_complete_epoch_left(tiny_train_cfg):
    cfg = tiny_train_cfg("resume=auto")
    (Path(cfg.run_dir) / "csv").mkdir(parents=True)
    (Path(cfg.run_dir) / "csv" / "metrics.csv").write_text("epoch,step\n0,1\n")
    results = train(cfg)
    assert results["num_layers"] == 2


def test_the_run_name_is_stable_within_a_slurm_job(monkeypatch):
    from aligned import resolvers

    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert resolvers.run_name() == f"{resolvers.STARTED}_{resolvers.RUN_ID}"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert resolvers.run_name() == "slurm-4242"  # the same after a requeue
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "17")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert resolvers.run_name() == "slurm-17_3"
    cfg = OmegaConf.create({"name": "${run_name:}"})
    assert cfg.name == "slurm-17_3"


def test_the_stop_message_says_what_is_saved_for_each_moment_of_a_run(tmp_path):
    from aligned.training.interruption import Interrupted

    stop = Interrupted(signal.SIGINT)
    assert stop.exit_code == 130 and stop.signal_name == "SIGINT"
    assert stop.message("python train.py") == "Stopped by SIGINT before the run started."
    stop.run_dir, stop.epoch = tmp_path, 1
    assert "no epoch was complete, nothing to resume" in stop.message("python train.py")
    stop.saved = True
    assert stop.message("python train.py seed=1") == (
        f"Stopped by SIGINT in epoch 1 (it re-runs from its start). {tmp_path}/checkpoints/"
        f"last.ckpt holds every completed epoch. Resume with: python train.py seed=1 "
        f"resume={tmp_path}")
    stop.epoch = None
    assert stop.message("python train.py").startswith(
        "Stopped by SIGINT after training, while testing the best epoch.")
