"""Lightning's mid-epoch SLURM checkpoints, which a run never resumes from."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from aligned.training import run_directory

log = logging.getLogger(__name__)

# Lightning's SLURM auto-requeue (SIGUSR1, e.g. #SBATCH --signal=USR1@120) saves
# hpc_ckpt_<n>.ckpt into the run directory in the middle of an epoch before it requeues the job,
# and a fit() without ckpt_path on SLURM restores the newest such file by itself. A run resumed
# mid-epoch is not the run it would have been: the rest of that epoch is not replayed batch for
# batch, and every RNG is reseeded only when an epoch starts (EpochSeed); measured on the
# 3-epoch digits run of tests/test_cluster.py, restoring such a file gave per-layer val
# accuracies of 12.9/16.4% where the uninterrupted run has 10.9/18.8%. So runs resume from
# epoch ends only (last.ckpt: resume=auto, resume=<dir>), and these files are removed when a run
# starts in the directory; Lightning's requeue itself (scontrol requeue) is kept.
HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"


def discard_hpc_checkpoints(run_dir: Path) -> list[Path]:
    """Remove Lightning's mid-epoch SLURM checkpoints from ``run_dir``; the files removed.
    Every rank calls it before fit, so none of them finds one to restore. The launching process
    sets them aside, deleted once training starts: a command refused before then keeps them."""
    removed = sorted(run_dir.glob(HPC_CHECKPOINTS))
    if run_directory.is_launching_process():
        run_directory.set_aside(run_dir, [path.name for path in removed])
    for path in removed:
        path.unlink(missing_ok=True)  # another rank of this run may have removed it first
    if removed and rank_zero_only.rank == 0:
        log.info("Removed %s: Lightning's mid-epoch SLURM checkpoint; this run resumes from "
                 "epoch ends only (checkpoints/last.ckpt).", ", ".join(p.name for p in removed))
    return removed
