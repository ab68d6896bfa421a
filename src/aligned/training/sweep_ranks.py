"""DDP inside a multirun: the processes Lightning starts for ranks above 0 run their job, once.

Lightning's DDP launcher starts local rank k > 0 by running the script's command line again
(``sys.argv``, with ``hydra.run.dir`` set to the launching process's *run* directory). In a
multirun (``python train.py -m trainer=ddp_cpu seed=0,1``) that command is the whole sweep: rank 1
would start a sweep of its own, in a sweep directory of its own (``${run_name:}`` is resolved
again in a new process), try to run every job of it, and end with a summary of a sweep whose
results rank 0 writes elsewhere ("No sweep summary").

So a sweep job names its directory in ``ALIGNED_SWEEP_JOB_DIR`` before it trains (the processes
Lightning starts inherit the environment), and a rank > 0 process started with ``-m`` runs that
job alone instead: the overrides Hydra recorded in ``<job dir>/.hydra/overrides.yaml``, in run
mode, in that directory, without writing ``.hydra/`` there again (as Lightning does for a
single run).

The jobs of a sweep run one after another in the launching process, and Lightning leaves a DDP
job's process group and its rank variables (``LOCAL_RANK``, ``MASTER_PORT``, ...) behind: the
next job would take them to mean that its ranks were started already, and wait on the last
job's. Each job therefore starts with those variables as the first job found them, and no
process group.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

JOB_DIR_VARIABLE = "ALIGNED_SWEEP_JOB_DIR"
MULTIRUN_FLAGS = ("-m", "--multirun")


# What Lightning's DDP launcher sets in the launching process (and leaves there).
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_first_environment: dict[str, str | None] | None = None  # as the sweep's first job found them


def start_sweep_job(job_dir: str | Path) -> None:
    """Called by each job of a sweep before it trains: no process group or rank variables of
    the job before it, and the job's directory named for the rank processes it may start."""
    global _first_environment
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # its other ranks have ended
    if _first_environment is None:
        _first_environment = {name: os.environ.get(name) for name in LAUNCHER_VARIABLES}
    for name, value in _first_environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    os.environ[JOB_DIR_VARIABLE] = str(Path(job_dir).resolve())


def job_command(argv: list[str]) -> list[str]:
    """``argv``, or in a rank > 0 process that Lightning started for a sweep job, the command
    line of that one job."""
    job_dir = os.environ.get(JOB_DIR_VARIABLE)
    local_rank = os.environ.get("LOCAL_RANK", "0")
    if not job_dir or local_rank in ("", "0") or not set(argv[1:]) & set(MULTIRUN_FLAGS):
        return argv
    overrides = OmegaConf.to_container(OmegaConf.load(Path(job_dir) / ".hydra" / "overrides.yaml"))
    return [argv[0], *overrides, f'hydra.run.dir="{job_dir}"',
            f"hydra.job.name=train_ddp_process_{local_rank}", "hydra.output_subdir=null"]
