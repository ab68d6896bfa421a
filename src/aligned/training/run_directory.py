"""One run per directory: a live run holds a lock on its directory, and a new run does not start
in a directory that already holds another run's results unless told to (``resume=`` continues
it, ``overwrite=true`` replaces it). Two runs sharing a directory would interleave their logs and
overwrite each other's checkpoints and ``results.json`` while both exit 0."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import IO, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aligned.config import ConfigError

LOCK_FILE = ".run.lock"
# What a run writes that another run must not mix with or overwrite.
RUN_OUTPUTS = ("results.json", "checkpoints", "csv")
# Set in the processes that Lightning (DDP), torchrun or SLURM start for ranks other than 0,
# which share the launching process's directory.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")

_held: dict[Path, IO[str]] = {}  # directory -> its open, locked lock file (for this process)


def is_launching_process() -> bool:
    """True unless this process is a non-zero rank of a distributed run."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def previous_outputs(run_dir: Path) -> list[str]:
    """What of another run ``run_dir`` already holds (empty when nothing)."""
    found = []
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name)
    return found


def lock(run_dir: Path) -> None:
    """Hold ``run_dir``'s lock until this process ends, or a clear error naming the process
    that holds it. The lock is the kernel's (flock): a killed run leaves none behind."""
    run_dir = run_dir.resolve()
    if run_dir in _held or not is_launching_process():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115  (held open while the run lives)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"Run directory {run_dir} is in use by a live run ({owner}). Wait for it to end, or "
            "start this run elsewhere (leave hydra.run.dir at its default: unique per run)."
        ) from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _held[run_dir] = handle


def claim(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Lock ``run_dir`` for this run. A new run (not ``resuming``) in a directory that holds
    another run's outputs refuses, or with ``overwrite`` removes those outputs first."""
    run_dir = run_dir.resolve()
    lock(run_dir)
    if resuming or not is_launching_process():
        return
    found = previous_outputs(run_dir)
    if found and not overwrite:
        raise ConfigError(
            f"Run directory {run_dir} already holds a run ({', '.join(found)}). Continue it with "
            f"resume={run_dir}, replace it with overwrite=true, or leave hydra.run.dir at its "
            "default, which is unique per run."
        )
    for name in found:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def release_all() -> None:
    """Give up this process's locks (a multirun's jobs run one after another in one process)."""
    for handle in _held.values():
        handle.close()
    _held.clear()


class RunDirectoryGuard(Callback):
    """Hydra callback: claims the run directory before Hydra writes its ``.hydra/`` files into
    it, so that a refused run leaves another run's recorded config as it was. Registered under
    ``hydra.callbacks`` in conf/train.yaml; ``train`` claims again (a no-op in this process)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next: the dir interpolates it
        try:
            claim(Path(config.hydra.run.dir), resuming=bool(config.get("resume")),
                  overwrite=config.get("overwrite") is True)
        except ConfigError as error:
            print(f"Error: {error}", file=sys.stderr)
            sys.exit(2)
