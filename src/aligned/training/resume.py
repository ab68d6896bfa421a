"""Continuing a killed run in its own directory: which checkpoint, whether the settings still
fit it, checkpoint paths that survive a moved directory, and the CSV history kept."""

from __future__ import annotations

import csv
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from aligned.config import ConfigError, with_defaults
from aligned.training.checkpoints import read_checkpoint

log = logging.getLogger(__name__)

# Settings that say what is trained; a resumed run must keep them.
TRAINED_SECTIONS = ("model", "data", "loss", "optim", "seed")
# Keys within them that only say where things are, how they are loaded or how val/test batch.
IGNORED_KEYS = {"data_dir", "num_workers", "pin_memory", "persistent_workers",
                "checkpoint_path", "name_or_path", "tokenizer", "pretrained", "eval_batch_size",
                "compile", "compile_backend"}  # how the blocks run, not what they compute
# What LayerwiseClassifier calls with optim.
OPTIMISER = "aligned.training.optim.adamw_with_warmup_cosine"
# Trainer settings that change the total step count the LR schedule is laid over.
SCHEDULE_KEYS = ("max_epochs", "max_steps", "limit_train_batches", "accumulate_grad_batches",
                 "devices", "num_nodes")


AUTO = "auto"


def resume_checkpoint(resume: str | None, run_dir: str | Path | None = None) -> Path | None:
    """The checkpoint to resume from: ``<run dir>/checkpoints/last.ckpt``, or a .ckpt file in a
    run's ``checkpoints/`` folder (the run continues in that run's directory). ``auto``: this
    run's own ``run_dir``'s last.ckpt when there is one, else none (a job script that may be
    requeued writes ``resume=auto`` and gets a stable run directory, see ``run_name``)."""
    if not resume:
        return None
    if resume == AUTO:
        last = Path(os.path.abspath(Path(run_dir))) / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None
    # Absolute but not resolved: a symlinked checkpoints/ folder still belongs to this run.
    path = Path(os.path.abspath(Path(resume).expanduser()))
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(
            f"Cannot resume: '{path}' does not exist. Pass resume=<run dir> (containing "
            "checkpoints/last.ckpt) or resume=<run dir>/checkpoints/<file>.ckpt."
        )
    if path.parent.name != "checkpoints":
        raise ConfigError(
            f"Cannot resume from '{path}': a resumed run continues in the run directory that "
            "holds the checkpoint, so pass resume=<run dir> or resume=<run dir>/checkpoints/"
            "<file>.ckpt (this file is not in a run's checkpoints/ folder)."
        )
    return path


def run_dir_of(checkpoint_path: Path) -> Path:
    return checkpoint_path.parents[1]


def check_same_settings(cfg: DictConfig, checkpoint_path: Path) -> dict[str, Any]:
    """The resumed checkpoint (loaded on CPU), after checking that ``cfg`` trains what it
    trained: the same model, data, loss, optimiser and seed (trainer settings, e.g. more
    epochs, and paths may change)."""
    checkpoint = read_checkpoint(  # tensors stay on disk; last.ckpt may be cut short by a kill
        checkpoint_path, mmap=True, hint="To continue from the best epoch instead, pass "
        f"resume={checkpoint_path.parent}/<epochNNN>.ckpt.")
    stored = checkpoint["run_config"]
    current = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in (*TRAINED_SECTIONS, "trainer") if k in cfg]),
        resolve=True)
    if isinstance(stored.get("loss"), dict) and "seed" in (current.get("loss") or {}):
        # loss.seed (the draws of loss.layers_per_step) is the run's seed; older configs lack it.
        stored = {**stored, "loss": {"seed": stored.get("seed"), **stored["loss"]}}
    before = flatten({k: filled(stored.get(k), k) for k in TRAINED_SECTIONS})
    now = flatten({k: filled(current.get(k), k) for k in TRAINED_SECTIONS})
    changed = sorted(key for key in before.keys() | now.keys()
                     if before.get(key) != now.get(key)
                     and key.rsplit(".", 1)[-1] not in IGNORED_KEYS)
    if changed:
        shown = "; ".join(f"{key}: {before.get(key)!r} in the run, {now.get(key)!r} now"
                          for key in changed[:6])
        raise ConfigError(
            f"Cannot resume {run_dir_of(checkpoint_path)}: it was trained with other settings "
            f"({shown}{'; ...' if len(changed) > 6 else ''}). Pass the run's own overrides "
            "(its .hydra/overrides.yaml) with resume=; only trainer settings such as "
            "trainer.max_epochs and paths may change."
        )
    # Defaults filled: a key written out since (trainer.num_nodes: 1) is no change.
    trainer_before, trainer_now = (with_defaults(dict(config.get("trainer") or {}))
                                   for config in (stored, current))
    rescheduled = [key for key in SCHEDULE_KEYS if trainer_before.get(key) != trainer_now.get(key)]
    if rescheduled and rank_zero_only.rank == 0:
        log.warning(
            "Resuming with other %s: the learning-rate schedule (warm-up, decay) is laid over the "
            "new total step count from the restored step on, so the resumed run follows neither "
            "the original schedule nor that of a fresh run with these settings.",
            ", ".join(f"trainer.{key}" for key in rescheduled))
    max_epochs = trainer_now.get("max_epochs")
    if max_epochs is not None and 0 <= max_epochs <= checkpoint["epoch"] + 1 \
            and rank_zero_only.rank == 0:
        log.warning("The run has trained %d epochs already; trainer.max_epochs=%d trains none "
                    "(only the evaluation runs).", checkpoint["epoch"] + 1, max_epochs)
    return checkpoint


def filled(section: Any, name: str) -> Any:
    """``section`` with its target's defaults for the keys it leaves out (optim: those of the
    optimiser factory, which the module calls with it)."""
    if name == "optim" and isinstance(section, dict):
        return with_defaults({"_target_": OPTIMISER, **section})
    return with_defaults(section) if isinstance(section, dict) and "_target_" in section \
        else section


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class RelocatableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint for a run directory that may have moved between the kill and the resume.

    Lightning keeps the old best path but forgets the best score when the directory changed, so
    the first resumed epoch would count as best and the old best file would stay behind. Paths
    under the old directory are mapped to the same files under the new one.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:  # Lightning compares the strings too
            def moved(path: str) -> str:
                return os.path.join(self.dirpath, os.path.relpath(path, old)) if path else path

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": moved(state_dict.get("best_model_path", "")),
                "kth_best_model_path": moved(state_dict.get("kth_best_model_path", "")),
                "last_model_path": moved(state_dict.get("last_model_path", "")),
                "best_k_models": {moved(p): v
                                  for p, v in state_dict.get("best_k_models", {}).items()},
            }
        super().load_state_dict(state_dict)

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key: checkpoints written with it (older runs) restore into this.
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def on_load_checkpoint(self, trainer: Any, module: Any, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written while the state key was this class's name: restore them too
        # (Lightning calls this hook before it loads the callbacks' states).
        states = checkpoint.get("callbacks", {})
        own_name = super().state_key
        if self.state_key not in states and own_name in states:
            states[self.state_key] = states[own_name]


@rank_zero_only
def keep_csv_history(logger: Any, resumed_epoch: int, resumed_step: int) -> None:
    """A CSVLogger deletes the run's metrics.csv when it starts; on resume, write back the rows
    of the epochs the checkpoint holds (up to ``resumed_epoch``; rows without an epoch: before
    ``resumed_step``), so the file keeps the whole run. Rows logged after that checkpoint (a
    partial epoch before the kill) are dropped: those steps run again."""
    if type(logger).__name__ != "CSVLogger":
        return
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        keys = list(reader.fieldnames or [])
        rows = [row for row in reader
                if (int(float(row["epoch"])) <= resumed_epoch if row.get("epoch")
                    else row.get("step") and int(float(row["step"])) < resumed_step)]
    with warnings.catch_warnings():  # "previous log files will be deleted": written back here
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        writer = logger.experiment  # creating it deletes the old file
    writer.metrics_keys = keys
    with path.open("w", newline="") as file:
        out = csv.DictWriter(file, fieldnames=keys)
        out.writeheader()
        out.writerows(rows)
