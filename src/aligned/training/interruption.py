"""Stopping on SIGTERM or SIGINT: what schedulers (SLURM, Kubernetes, most others) send before
they kill a job, and Ctrl+C. The run stops at once; ``last.ckpt`` keeps the last completed epoch
(written atomically, so never half a file), the user is told how to resume, and the process exits
with 128 + the signal's number, so a job script sees that the job did not finish.

The epoch in progress is not saved half-way: a resume re-runs it from its start, which keeps a
resumed run identical to an uninterrupted one (the shuffle order and the RNGs are per epoch).
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):  # noqa: N818  (BaseException: no `except Exception` keeps it)
    """The run was stopped by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        # Filled in by train(): the run's directory, the epoch (1-based) it stopped in (None
        # when training had ended), and whether last.ckpt exists to resume from.
        self.run_dir: Path | None = None
        self.epoch: int | None = None
        self.saved = False

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for a process ended by a signal

    def message(self, command: str) -> str:
        """What happened and how to go on; ``command`` is the run's own command line."""
        where = f"Stopped by {self.signal_name}"
        if self.run_dir is None:
            return f"{where} before the run started."
        if not self.saved:
            return f"{where} in epoch 1 of {self.run_dir}: no epoch was complete, nothing to " \
                   "resume; start the run again."
        during = "after training, while testing the best epoch" if self.epoch is None \
            else f"in epoch {self.epoch} (it re-runs from its start)"
        return (f"{where} {during}. {self.run_dir}/checkpoints/last.ckpt holds every completed "
                f"epoch. Resume with: {command} resume={self.run_dir}")


_received: Interrupted | None = None


def stop_on_signals() -> None:
    """From now on, SIGTERM and SIGINT raise ``Interrupted`` in the main thread (once: a second
    signal while stopping is only recorded). Lightning calls this handler after its own."""
    for signum in SIGNALS:
        signal.signal(signum, _raise_interrupted)


def received() -> Interrupted | None:
    """The signal that stopped this process's work, if one did."""
    return _received


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None:
        return
    _received = Interrupted(signum)
    raise _received
