"""Continuing a killed run in its own directory: which checkpoint, whether the settings still
fit it, checkpoint paths that survive a moved directory, and the CSV history kept."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from aligned.config import ConfigError

# Settings that say what is trained; a resumed run must keep them.
TRAINED_SECTIONS = ("model", "data", "loss", "optim", "seed")
# Keys within them that only say where things are or how they are loaded.
LOCATION_KEYS = {"data_dir", "num_workers", "pin_memory", "persistent_workers",
                 "checkpoint_path", "name_or_path", "tokenizer", "pretrained"}


def resume_checkpoint(resume: str | None) -> Path | None:
    """The checkpoint to resume from: ``<run dir>/checkpoints/last.ckpt``, or a .ckpt file in a
    run's ``checkpoints/`` folder (the run continues in that run's directory)."""
    if not resume:
        return None
    path = Path(resume).expanduser().resolve()
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
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False, mmap=True)
    stored = checkpoint.get("run_config")
    if stored is None:
        raise ConfigError(f"Cannot resume from '{checkpoint_path}': it has no run config (not "
                          "written by aligned's train.py).")
    current = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in TRAINED_SECTIONS if k in cfg]), resolve=True)
    before = flatten({k: stored.get(k) for k in TRAINED_SECTIONS})
    now = flatten({k: current.get(k) for k in TRAINED_SECTIONS})
    changed = sorted(key for key in before.keys() | now.keys()
                     if before.get(key) != now.get(key)
                     and key.rsplit(".", 1)[-1] not in LOCATION_KEYS)
    if changed:
        shown = "; ".join(f"{key}: {before.get(key)!r} in the run, {now.get(key)!r} now"
                          for key in changed[:6])
        raise ConfigError(
            f"Cannot resume {run_dir_of(checkpoint_path)}: it was trained with other settings "
            f"({shown}{'; ...' if len(changed) > 6 else ''}). Pass the run's own overrides "
            "(its .hydra/overrides.yaml) with resume=; only trainer settings such as "
            "trainer.max_epochs and paths may change."
        )
    return checkpoint


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
        if old and self.dirpath and os.path.realpath(old) != os.path.realpath(self.dirpath):
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


@rank_zero_only
def keep_csv_history(logger: Any, resumed_epoch: int) -> None:
    """A CSVLogger deletes the run's metrics.csv when it starts; on resume, write back the rows
    of the epochs the checkpoint holds (up to ``resumed_epoch``), so the file keeps the whole
    run. Rows logged after that checkpoint (a partial epoch before the kill) are dropped: those
    steps run again."""
    if type(logger).__name__ != "CSVLogger":
        return
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        keys = list(reader.fieldnames or [])
        rows = [row for row in reader
                if row.get("epoch") and int(float(row["epoch"])) <= resumed_epoch]
    writer = logger.experiment  # creating it deletes the old file
    writer.metrics_keys = keys
    with path.open("w", newline="") as file:
        out = csv.DictWriter(file, fieldnames=keys)
        out.writeheader()
        out.writerows(rows)
