"""Stopping before a job's wall-clock limit, at the end of an epoch (``callbacks=timer``).

    python train.py callbacks=timer callbacks.timer.duration=00:11:30:00 resume=auto

Lightning's ``Timer``, changed in three ways for jobs that a scheduler ends and requeues:

- It stops only at the end of an epoch, and early enough that the next epoch (the longest one
  so far, its validation included) would not overrun the duration. A run resumes exactly only
  from an epoch's end (``last.ckpt``); a stop in the middle of an epoch would save a partial
  epoch as if it were complete.
- The duration is this job's: the time is not restored from the checkpoint (Lightning's Timer
  restores it, so a requeued job would stop again after one epoch, for ever).
- A run it stopped is not finished: ``train`` writes no ``results.json`` (its numbers would be
  those of a shorter schedule, and a sweep summary would count them) and raises
  ``TimeLimitReached``; train.py says how to go on and exits with 124, the code of ``timeout``.

At least one epoch runs in every job, however short the duration, so a requeued run always moves
on. The clock starts when training starts: leave room for start-up, and for the final test of
the best epoch after the last one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from aligned.config import ConfigError

EXIT_CODE = 124  # GNU timeout's code for "the time limit ended it"


class TimeLimitReached(Exception):  # noqa: N818  (a stop, like Interrupted, not a failure)
    """Training stopped at an epoch's end because the next epoch would pass the time limit."""

    exit_code = EXIT_CODE

    def __init__(self, run_dir: Path, epochs_done: int, max_epochs: int | None,
                 duration: str) -> None:
        super().__init__(f"time limit {duration} reached after epoch {epochs_done}")
        self.run_dir, self.epochs_done, self.max_epochs = run_dir, epochs_done, max_epochs
        self.duration = duration

    def message(self, command: str) -> str:
        """What happened and how to go on; ``command`` is the run's own command line."""
        of = f" of {self.max_epochs}" if self.max_epochs and self.max_epochs > 0 else ""
        return (f"Stopped by the time limit of {self.duration} (callbacks.timer.duration) after "
                f"epoch {self.epochs_done}{of}: the next would not have ended in time. "
                f"{self.run_dir}/checkpoints/last.ckpt holds every completed epoch; no "
                f"results.json, the run is not finished. Resume with: {command} "
                f"resume={self.run_dir}")


class TimeLimit(Timer):
    """Lightning's Timer for one job of a run that may be requeued; see the module docstring.

    ``duration``: DD:HH:MM:SS, seconds, a ``datetime.timedelta``, or a dict of its arguments.
    (YAML reads an unquoted ``1:30:00`` as the number 5400: seconds, which is what it meant.)
    """

    def __init__(self, duration: str | float | dict | timedelta | None = None) -> None:
        wrong = ConfigError(f"callbacks.timer.duration must be DD:HH:MM:SS (e.g. 00:11:30:00) "
                            f"or a number of seconds, got {duration!r}.")
        if duration is None:
            raise ConfigError("callbacks=timer needs the time a job may train: "
                              "callbacks.timer.duration=DD:HH:MM:SS (e.g. 00:11:30:00).")
        if isinstance(duration, bool):
            raise wrong
        if isinstance(duration, Mapping):  # a DictConfig from the YAML: Timer takes a dict
            duration = dict(duration)
        if isinstance(duration, (int, float)):
            if duration < 0:
                raise wrong
            duration = timedelta(seconds=duration)
        try:
            super().__init__(duration=duration, interval="epoch", verbose=False)
        except (MisconfigurationException, AttributeError, TypeError, ValueError):
            raise wrong from None
        self.shown = str(timedelta(seconds=self._duration))  # e.g. 11:30:00
        self.longest_epoch = 0.0  # seconds, validation included
        self.epoch_start: float | None = None
        self.stopped = False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing restored: the duration is this job's own."""

    def on_fit_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Lightning's Timer stops here when the restored time is spent; none is restored."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Never in the middle of an epoch."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Lightning validates before this hook, so the epoch's time includes its validation.
        if self.epoch_start is not None:
            self.longest_epoch = max(self.longest_epoch, time.monotonic() - self.epoch_start)
        if is_last_epoch(trainer):
            return
        late = self.time_elapsed() + self.longest_epoch > self._duration
        late = trainer.strategy.broadcast(late)  # every rank stops at the same epoch (DDP)
        if late:
            self.stopped = True
            trainer.should_stop = True
            rank_zero_info(f"Time limit {self.shown}: stopping after epoch "
                           f"{trainer.current_epoch + 1} (trained {self.time_elapsed():.0f} s; "
                           f"the longest epoch took {self.longest_epoch:.0f} s).")


def is_last_epoch(trainer: L.Trainer) -> bool:
    """Whether the epoch ending now is the run's last anyway (nothing left to stop)."""
    epochs = trainer.max_epochs
    if epochs is not None and epochs >= 0 and trainer.current_epoch + 1 >= epochs:
        return True
    return trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step


def raise_if_cut_short(trainer: L.Trainer, run_dir: Path) -> None:
    """``TimeLimitReached`` when a TimeLimit stopped this fit before its end; nothing when the run
    is complete (its last epoch, ``max_steps``, or early stopping ended it)."""
    limits = [callback for callback in trainer.callbacks
              if isinstance(callback, TimeLimit) and callback.stopped]
    if not limits:
        return
    # Early stopping ended the run at the same epoch: it is finished. (stopped_epoch is 0 when
    # it did not stop; it cannot stop at epoch 0 with a patience of 1 or more.)
    if any(isinstance(callback, EarlyStopping) and callback.stopped_epoch
           for callback in trainer.callbacks):
        return
    raise TimeLimitReached(run_dir, trainer.current_epoch, trainer.max_epochs, limits[0].shown)
