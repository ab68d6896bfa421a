"""Cluster runs that survive preemption: Lightning's SLURM requeue (SIGUSR1), the time limit
(callbacks=timer), the SLURM launcher config, and DDP inside a multirun."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, ROOT, TINY, compose_train
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf, open_dict

from aligned import resolvers
from aligned.config import ConfigError
from aligned.training.fit import train
from aligned.training.sweep_ranks import JOB_DIR_VARIABLE, job_command
from aligned.training.time_limit import TimeLimit, TimeLimitReached

# Three epochs of a few batches: long enough to stop a run inside epoch 2, fast enough for CI.
THREE_EPOCHS = [
    *(o for o in TINY if not o.startswith(("trainer.max_epochs", "+trainer.limit_train_batches"))),
    "trainer.max_epochs=3", "+trainer.limit_train_batches=6",
]
# What SLURM sets in a batch job of one task; Lightning then uses its SLURMEnvironment, whose
# SIGUSR1 handler saves hpc_ckpt_<n>.ckpt and calls `scontrol requeue <job id>`.
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1",
         "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
NOT_SLURM = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS_PER_NODE",
             "MASTER_ADDR", "MASTER_PORT")


class SignalAt(Callback):
    """Test helper: sends this process ``signal_name`` after batch ``batch`` of epoch ``epoch``
    (0-based), as a scheduler would at that moment."""

    def __init__(self, signal_name: str, epoch: int, batch: int) -> None:
        self.signum, self.epoch, self.batch = signal.Signals[signal_name], epoch, batch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)


def compose_in(run_dir_pattern: str, *overrides: str):
    """The train config with ``hydra.run.dir=run_dir_pattern``, its run_dir resolved from it."""
    cfg = compose_train([*THREE_EPOCHS, *overrides, f"hydra.run.dir={run_dir_pattern}"],
                        Path("unused"))
    with open_dict(cfg):
        cfg.run_dir = str(cfg.hydra.run.dir)
    return cfg


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """results.json of the three epochs run in one go."""
    return train(compose_in(str(tmp_path_factory.mktemp("full") / "run")))


def epoch_of(path: Path) -> tuple[int, int]:
    stored = torch.load(path, map_location="cpu", weights_only=False)
    return stored["epoch"], stored["global_step"]


# ---------------------------------------------------------------- SLURM requeue (SIGUSR1)


@pytest.mark.slow
def test_a_slurm_requeue_resumes_in_the_same_directory_with_the_same_results(
        tmp_path, monkeypatch, uninterrupted):
    calls = tmp_path / "scontrol.calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    # Records the call, then ends the job as SLURM does when it requeues one: SIGTERM.
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nkill -TERM $PPID\n')
    scontrol.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in NOT_SLURM}
    env.update(SLURM, PATH=f"{bin_dir}:{env['PATH']}", PYTHONWARNINGS="ignore",
               PYTHONPATH=f"{ROOT / 'tests'}:{env.get('PYTHONPATH', '')}")
    pattern = f"{tmp_path}/${{run_name:}}"  # slurm-<job id>: the same for the requeued job
    stopped = subprocess.run(
        [sys.executable, "train.py", *THREE_EPOCHS, "resume=auto", f"hydra.run.dir={pattern}",
         "+callbacks.usr1={_target_: test_cluster.SignalAt, signal_name: SIGUSR1, epoch: 1, "
         "batch: 2}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    run_dir = tmp_path / "slurm-4242"
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert calls.read_text() == "requeue 4242\n"  # Lightning's handler asked SLURM to requeue
    assert "Stopped by SIGTERM in epoch 2" in stopped.stderr
    assert not (run_dir / "results.json").exists()
    # Lightning's checkpoint is from the middle of epoch 2 (3 of its 6 steps); last.ckpt holds
    # epoch 1 whole.
    assert epoch_of(run_dir / "hpc_ckpt_1.ckpt") == (1, 9)
    assert epoch_of(run_dir / "checkpoints" / "last.ckpt") == (0, 6)

    for key in NOT_SLURM:
        monkeypatch.delenv(key, raising=False)
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    # A requeue after a stop inside epoch 1 finds no last.ckpt, and Lightning on SLURM would
    # restore the mid-epoch file by itself; it is removed and the run starts afresh instead.
    # (Here: that file, in a job directory of its own.)
    early = tmp_path / "slurm-4243"
    early.mkdir()
    (early / "hpc_ckpt_1.ckpt").write_bytes((run_dir / "hpc_ckpt_1.ckpt").read_bytes())
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    afresh = train(compose_in(pattern, "resume=auto"))
    assert not list(early.glob("hpc_ckpt_*.ckpt"))
    assert afresh["layer_accuracy"] == uninterrupted["layer_accuracy"]

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    requeued = compose_in(pattern, "resume=auto")  # the same job script, run again
    assert requeued.run_dir == str(run_dir)
    again = train(requeued)  # from last.ckpt, epoch 1 whole; the mid-epoch file removed
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert Path(again["checkpoint"]).parents[1] == run_dir
    assert again["layer_accuracy"] == uninterrupted["layer_accuracy"]
    assert again["final_accuracy"] == uninterrupted["final_accuracy"]


# ---------------------------------------------------------------- time limit (callbacks=timer)


@pytest.mark.slow
def test_a_time_limit_stops_at_epoch_ends_and_the_resumed_run_ends_as_one_run(
        tmp_path, uninterrupted):
    # A duration of 0: every job trains one epoch (at least one always runs), then stops.
    pattern = str(tmp_path / "run")
    for epochs_done in (1, 2):
        with pytest.raises(TimeLimitReached) as stop:
            train(compose_in(pattern, "callbacks=timer", "callbacks.timer.duration=0",
                             "resume=auto"))
        assert stop.value.epochs_done == epochs_done and stop.value.exit_code == 124
        assert epoch_of(tmp_path / "run" / "checkpoints" / "last.ckpt") == (epochs_done - 1,
                                                                            6 * epochs_done)
        assert not (tmp_path / "run" / "results.json").exists()  # not finished: no results
    message = stop.value.message("python train.py callbacks=timer")
    assert message.startswith("Stopped by the time limit of 0:00:00 (callbacks.timer.duration) "
                              "after epoch 2 of 3")
    assert message.endswith(f"Resume with: python train.py callbacks=timer resume={pattern}")
    # The third job's last epoch is the run's last: nothing to stop, results are written.
    done = train(compose_in(pattern, "callbacks=timer", "callbacks.timer.duration=0",
                            "resume=auto"))
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == done
    assert done["layer_accuracy"] == uninterrupted["layer_accuracy"]


@pytest.mark.parametrize("duration, message", [
    (None, "callbacks=timer needs the time a job may train"),
    ("11:30:00", "must be DD:HH:MM:SS (e.g. 00:11:30:00) or a number of seconds, got '11:30:00'"),
    (-5, "got -5"),
    (True, "got True"),
])
def test_a_missing_or_malformed_duration_is_one_clear_error(duration, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TimeLimit(duration)


def test_a_duration_may_be_seconds_or_a_mapping():
    # YAML reads an unquoted 1:30:00 as 5400: seconds, which is what it meant.
    assert TimeLimit(OmegaConf.create("d: 1:30:00").d)._duration == 5400
    assert TimeLimit(OmegaConf.create({"hours": 2}))._duration == 7200
    assert TimeLimit("01:00:00:00").shown == "1 day, 0:00:00"


# ---------------------------------------------------------------- SLURM launcher (submitit)


@pytest.mark.slow
def test_the_slurm_launcher_composes_with_train_and_follows_the_trainer(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="aligned[cluster]")
    from hydra.utils import instantiate

    cfg = compose_train(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                         "trainer.num_nodes=2", "hydra.launcher.partition=gpu"], tmp_path)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["max_num_timeout"] > 0 and params["partition"] == "gpu"


def test_the_sweep_directory_a_launcher_chose_survives_a_new_process(monkeypatch):
    """submitit pickles the launcher's config into each job (and its resubmissions), where
    Hydra's load_sweep_config composes the job's config and copies that config's resolver
    cache. ``${run_name:}`` must come from the cache, not from the job's new process (another
    start time, another id), or each job and each resubmission would get a sweep dir of its own."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    launching = loader.load_configuration("train", overrides=["seed=0,1"],
                                          run_mode=RunMode.MULTIRUN)
    chosen = str(launching.hydra.sweep.dir)  # the launching process's multirun/<time>_<id>
    shipped = pickle.loads(pickle.dumps(launching))
    monkeypatch.setattr(resolvers, "RUN_ID", "ffffff")  # what a new process would pick
    monkeypatch.setattr(resolvers, "STARTED", "2099-01-01_00-00-00")
    fresh = loader.load_configuration("train", overrides=[], run_mode=RunMode.MULTIRUN)
    assert str(fresh.hydra.sweep.dir) == "multirun/2099-01-01_00-00-00_ffffff"
    job = loader.load_sweep_config(shipped, ["seed=1"])
    assert str(job.hydra.sweep.dir) == chosen


# ---------------------------------------------------------------- DDP inside a multirun


@pytest.mark.slow
def test_a_ddp_rank_above_zero_runs_its_sweep_job_alone(tmp_path, monkeypatch):
    job_dir = tmp_path / "sweep" / "0"
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text("- trainer=ddp_cpu\n- seed=0\n")
    argv = ["train.py", "-m", "trainer=ddp_cpu", "seed=0,1", 'hydra.run.dir="outputs/x"']
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv(JOB_DIR_VARIABLE, str(job_dir))
    assert job_command(argv) == argv  # rank 0: the sweep itself
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert job_command(argv) == [
        "train.py", "trainer=ddp_cpu", "seed=0", f'hydra.run.dir="{job_dir}"',
        "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    assert job_command(argv[:1] + argv[2:]) == argv[:1] + argv[2:]  # a single run: Lightning's
    monkeypatch.delenv(JOB_DIR_VARIABLE)
    assert job_command(argv) == argv


@pytest.mark.slow
def test_each_sweep_job_starts_without_the_process_group_and_ranks_of_the_last(
        tmp_path, monkeypatch):
    import torch.distributed as dist

    from aligned.training import sweep_ranks

    monkeypatch.setattr(sweep_ranks, "_first_environment", None)
    before = dict(os.environ)
    try:
        os.environ.pop("LOCAL_RANK", None)
        sweep_ranks.start_sweep_job(tmp_path / "0")
        assert os.environ[JOB_DIR_VARIABLE] == str(tmp_path / "0")
        # What a DDP job leaves in the launching process: Lightning's rank variables and the
        # process group (the next job would take them for ranks started already).
        os.environ.update(LOCAL_RANK="0", NODE_RANK="0", WORLD_SIZE="2", MASTER_PORT="12345")
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/group", rank=0,
                                world_size=1)
        sweep_ranks.start_sweep_job(tmp_path / "1")
        assert not dist.is_initialized()
        assert not {"LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT"} & set(os.environ)
        assert os.environ[JOB_DIR_VARIABLE] == str(tmp_path / "1")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(before)


@pytest.mark.slow
def test_ddp_inside_a_multirun_leaves_one_job_directory_and_one_summary(tmp_path):
    done = subprocess.run(  # the default sweep directory, multirun/<date_time>_<id>, under cwd
        [sys.executable, str(ROOT / "train.py"), "-m", *TINY, "trainer=ddp_cpu", "seed=0"],
        cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True,
        text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "No sweep summary" not in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["multirun"]  # no outputs/ of a rank-1 run
    [sweep] = (tmp_path / "multirun").iterdir()  # rank 1 started no sweep of its own
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == [
        "0", "multirun.yaml", "summary.csv", "summary.md"]
    assert (sweep / "0" / "results.json").is_file()
    assert "| vit digits aligned | 1 (0) |" in (sweep / "summary.md").read_text()
