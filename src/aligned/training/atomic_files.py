"""Files written whole or not at all: a temporary file beside the target, then a rename. A full
disk, a read-only folder or a kill while writing leaves the previous file (or none), never a
truncated one that looks like a checkpoint; the failure is one line that says where and what to
do."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from aligned.config import ConfigError

# What to do about the errors a write meets in practice.
FIXES = {
    errno.ENOSPC: "free space on that disk, or start the run on another (hydra.run.dir=...)",
    errno.EDQUOT: "free space within your disk quota, or start the run elsewhere",
    errno.EROFS: "the file system is read-only: start the run elsewhere (hydra.run.dir=...)",
    errno.EACCES: "make the folder writable for this user, or start the run elsewhere",
    errno.EPERM: "make the folder writable for this user, or start the run elsewhere",
}


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], Any], what: str) -> None:
    """``write(file)`` into ``path`` through ``.<name>.partial`` beside it, renamed once it is
    complete and on disk. ``what`` names the file in the error (e.g. "checkpoint")."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException as error:  # a signal or Ctrl+C included: leave no partial file
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            reason = os.strerror(error.errno)
            fix = FIXES.get(error.errno, "check that the folder exists and can be written")
            raise ConfigError(f"Cannot write the {what} {path}: {reason}; {fix}.") from None
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint format, written atomically (``trainer.plugins``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if "://" in str(path):  # a remote file system (fsspec): Lightning's own write
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomically(path, lambda file: torch.save(checkpoint, file), "checkpoint")
