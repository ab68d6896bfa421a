"""One run per directory: a live run holds a lock on its directory, and a new run does not start
in a directory that already holds another run's results unless told to (``resume=`` continues
it, ``overwrite=true`` replaces it). Two runs sharing a directory would interleave their logs and
overwrite each other's checkpoints and ``results.json`` while both exit 0. ``evaluate.py`` follows
the same rule for its evaluations, and neither command writes into the other's directories.

A refused command leaves a directory as it was. Before Hydra writes into an existing directory
(``.hydra/``, the log), the directory is claimed: a copy of ``.hydra/`` and the logs' lengths
go into a hidden holding folder, ``.set_aside/``, and so do the outputs that ``overwrite=true``
replaces. A command that stops before its run starts (a config error, a signal, a crash) puts
them back; once the run has started (training: its first step; evaluate.py: its outputs are
complete) they are deleted. A holding folder that a killed command left is put back by the next
command in that directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from lightning.pytorch.callbacks import Callback as LightningCallback
from omegaconf import DictConfig

from aligned.config import ConfigError
from aligned.training.json_files import write_json

LOCK_FILE = ".run.lock"
HOLDING = ".set_aside"
MANIFEST = "manifest.json"  # in HOLDING, written last: what the directory held before
# What each command writes that another run must not mix with or overwrite (glob patterns).
OUTPUTS = {
    "train": ("results.json", "checkpoints", "csv"),
    "evaluate": ("evaluation.json", "report.md", "*.png"),
}
WHAT = {"train": "a run", "evaluate": "an evaluation"}
# What a command may create in its directory before its run starts: removed again, where the
# directory had none, when the command stops there. Nothing else is touched.
CREATED = (".hydra", "*.log", "wandb", *OUTPUTS["train"], *OUTPUTS["evaluate"])
# Set in the processes that Lightning (DDP), torchrun or SLURM start for ranks other than 0,
# which share the launching process's directory.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")

_held: dict[Path, IO[str]] = {}  # directory -> its open, locked lock file (for this process)


def is_launching_process() -> bool:
    """True unless this process is a non-zero rank of a distributed run."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def previous_outputs(run_dir: Path, command: str = "train") -> list[str]:
    """What of an earlier run of ``command`` ``run_dir`` already holds (empty when nothing)."""
    found = []
    for pattern in OUTPUTS[command]:
        for path in sorted(run_dir.glob(pattern)):
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                found.append(path.name)
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


def claim(run_dir: Path, resuming: bool, overwrite: bool, command: str = "train") -> None:
    """Lock ``run_dir`` for this run. A new run (not ``resuming``) in a directory that holds
    another run's outputs refuses, or with ``overwrite`` sets those outputs aside."""
    run_dir = run_dir.resolve()
    lock(run_dir)
    if is_launching_process():
        set_aside(run_dir, replaced_outputs(run_dir, resuming, overwrite, command))


def replaced_outputs(run_dir: Path, resuming: bool, overwrite: bool, command: str) -> list[str]:
    """What of an earlier run in ``run_dir`` a run of ``command`` replaces, or a ConfigError
    when it may not."""
    if resuming:
        return []
    for other in OUTPUTS.keys() - {command}:
        if found := previous_outputs(run_dir, other):
            raise ConfigError(
                f"Run directory {run_dir} holds {other}.py's outputs ({listed(found)}); give "
                f"{command}.py a directory of its own: leave hydra.run.dir at its default, "
                "which is unique per run."
            )
    found = previous_outputs(run_dir, command)
    if found and not overwrite:
        ways = f"Continue it with resume={run_dir}, replace it" if command == "train" \
            else "Replace it"
        raise ConfigError(
            f"Run directory {run_dir} already holds {WHAT[command]} ({listed(found)}). {ways} "
            "with overwrite=true, or leave hydra.run.dir at its default, which is unique per run."
        )
    return found


def listed(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def snapshot(run_dir: Path) -> None:
    """Record what ``run_dir`` holds before this command writes into it (once per command): a
    copy of ``.hydra/``, which Hydra rewrites, and the logs' lengths, which it appends to."""
    holding, partial = run_dir / HOLDING, run_dir / f"{HOLDING}.partial"
    entries = sorted(entry.name for entry in run_dir.iterdir()
                     if entry.name not in (LOCK_FILE, HOLDING, partial.name))
    if holding.is_dir() or not entries:
        return
    shutil.rmtree(partial, ignore_errors=True)  # a command killed while it wrote one
    partial.mkdir()  # renamed once whole: a holding folder always has its manifest
    if (run_dir / ".hydra").is_dir():
        shutil.copytree(run_dir / ".hydra", partial / ".hydra", symlinks=True)
    logs = {path.name: path.stat().st_size for path in run_dir.glob("*.log") if path.is_file()}
    write_json(partial / MANIFEST, {"entries": entries, "logs": logs}, "run directory manifest")
    partial.rename(holding)


def set_aside(run_dir: Path, names: Iterable[str]) -> None:
    """Move ``names`` of ``run_dir`` into its holding folder, to be deleted once the run starts
    (``commit``) or put back if it does not (``put_back``)."""
    snapshot(run_dir)
    for name in names:
        # FileNotFoundError: another rank removed it first (discard_hpc_checkpoints).
        with suppress(FileNotFoundError):
            os.replace(run_dir / name, run_dir / HOLDING / name)


def put_back(run_dir: Path) -> None:
    """``run_dir`` as it was before the command that set things aside in it."""
    holding = run_dir / HOLDING
    if not holding.is_dir():
        return
    before = json.loads((holding / MANIFEST).read_text())
    for path in run_dir.iterdir():
        if path.name not in before["entries"] and any(path.match(p) for p in CREATED):
            remove(path)
    for name, size in before["logs"].items():
        if (run_dir / name).is_file() and (run_dir / name).stat().st_size > size:
            os.truncate(run_dir / name, size)
    for held in holding.iterdir():
        if held.name != MANIFEST:
            remove(run_dir / held.name)
            os.replace(held, run_dir / held.name)
    shutil.rmtree(holding)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def claimed() -> list[Path]:
    """The directories this process holds."""
    return list(_held)


def commit(run_dirs: Iterable[Path] | None = None) -> None:
    """The run has started: delete what was set aside in ``run_dirs`` (default: every directory
    this process holds)."""
    for run_dir in claimed() if run_dirs is None else run_dirs:
        shutil.rmtree(run_dir / HOLDING, ignore_errors=True)


def unlock(run_dir: Path) -> None:
    handle = _held.pop(run_dir.resolve(), None)
    if handle:
        handle.close()


def release_all() -> None:
    """Put back what a command whose run did not start set aside, and give up this process's
    locks (a multirun's jobs run one after another in one process)."""
    for run_dir in claimed():
        put_back(run_dir)
        unlock(run_dir)


class CommitWhenTrainingStarts(LightningCallback):
    """Lightning callback: ``commit`` when the first training step is about to run, after the
    data, the model and a resumed checkpoint have loaded (rank 0 alone, in whichever process)."""

    def __init__(self, run_dirs: list[Path]) -> None:
        self.run_dirs = run_dirs

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            commit(self.run_dirs)


def continues_or_replaces(config: DictConfig, run_dir: Path) -> tuple[bool, bool]:
    """Whether ``config`` continues the run in ``run_dir`` (``resume=``), and whether it may
    replace that run's outputs (``overwrite=true``; ``resume=auto`` with nothing to resume)."""
    from aligned.training.resume import AUTO, resume_checkpoint, run_dir_of  # it imports this

    overwrite = config.get("overwrite") is True
    checkpoint = resume_checkpoint(config.get("resume"), run_dir)
    if checkpoint is None:
        return False, overwrite or config.get("resume") == AUTO
    return run_dir_of(checkpoint).resolve() == run_dir.resolve(), overwrite


def job_directories(sweep_dir: Path) -> list[Path]:
    """The job directories an earlier sweep left in ``sweep_dir``."""
    if not sweep_dir.is_dir():
        return []
    return sorted(path for path in sweep_dir.iterdir() if (path / ".hydra").is_dir())


class RunDirectoryGuard(Callback):
    """Hydra callback: claims the run directory before Hydra writes its ``.hydra/`` files and
    its log into it, so that a refused command leaves another run's recorded config as it was.
    Registered under ``hydra.callbacks`` in conf/train.yaml (``command: train``) and
    conf/evaluate.yaml (``command: evaluate``); ``train`` claims again (a no-op in this
    process), and ``train``/evaluate.py put back or commit what was set aside."""

    def __init__(self, command: str = "train") -> None:
        self.command = command

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next: the dir interpolates it
        self.claim_or_exit([Path(config.hydra.run.dir)], config, replace=True)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A sweep into a sweep directory that holds an earlier sweep's jobs: each job directory
        # is checked and recorded now, before Hydra writes into it, then let go for its job to
        # claim (in this process or another); the job sets aside what it replaces.
        HydraConfig.instance().set_config(config)
        job_dirs = job_directories(Path(config.hydra.sweep.dir))
        self.claim_or_exit(job_dirs, config, replace=False)
        for job_dir in job_dirs:
            unlock(job_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Jobs that never claimed their directory (this sweep has fewer; train.py runs none after
        # a stopped one): what was recorded for them goes back. Listed after sweep_summary in
        # conf/train.yaml, so that this runs before its exit.
        if not is_launching_process():
            return
        for job_dir in job_directories(Path(config.hydra.sweep.dir)):
            if not (job_dir / HOLDING).is_dir():
                continue
            try:
                lock(job_dir)
            except ConfigError:  # a live command holds it: its own to put back
                continue
            put_back(job_dir.resolve())
            unlock(job_dir)

    def claim_or_exit(self, run_dirs: list[Path], config: DictConfig, replace: bool) -> None:
        """Claim each of ``run_dirs`` for ``config``'s run (``replace``: setting aside what it
        replaces), or print the error and exit with 2."""
        if not is_launching_process():
            return
        try:
            for run_dir in (path.resolve() for path in run_dirs):
                lock(run_dir)
                put_back(run_dir)  # what a command killed before its run started set aside
                replaced = replaced_outputs(run_dir, *continues_or_replaces(config, run_dir),
                                            command=self.command)
                set_aside(run_dir, replaced if replace else [])
        except ConfigError as error:
            release_all()
            print(f"Error: {error}", file=sys.stderr)
            sys.exit(2)
