"""Loading a trained model and its run config from a checkpoint file, with clear errors."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path
from typing import Any

import torch

from aligned.config import ConfigError
from aligned.legacy import upgrade_targets
from aligned.training.system import LayerwiseClassifier

TIMM_TARGET = "aligned.models.backbones.timm_vit.TimmViT"
HF_TARGET = "aligned.models.backbones.hf_encoder.HFEncoder"
HF_DECODER_TARGET = "aligned.models.backbones.hf_decoder.HFDecoder"
# Model settings of how the blocks run, not of what they compute: any checkpoint takes them,
# even one saved before they existed (model.compile=true evaluates it compiled).
RUNTIME_MODEL_KEYS = ("compile", "compile_backend")
# What a checkpoint of train.py holds and the code reads: section -> the dicts inside it.
REQUIRED_SECTIONS = {"run_config": (), "hyper_parameters": ("model", "loss"), "state_dict": ()}
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive


def read_checkpoint(
    path: str | Path, mmap: bool = False, hint: str = "Use last.ckpt or another epoch's file.",
    key: str = "ckpt_path",
) -> dict[str, Any]:
    """The checkpoint dict (on the CPU; with ``mmap``, its tensors stay on disk until used).
    ``hint``: what to do instead when the file cannot be read; ``key``: the setting or flag
    that named the file (``compare_to``, ``--ckpt``), for the messages."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(directory_message(path, key))
    if not path.is_file():
        raise ConfigError(
            f"Checkpoint '{path}' does not exist. Pass {key}=<run dir>/checkpoints/<file>.ckpt "
            "(the path is printed at the end of train.py and stored in results.json)."
        )
    problem = archive_damage(path)
    if problem is None:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception as error:  # noqa: BLE001  (a damaged file raises many kinds, OSError too)
            problem = error_line(error)
    if problem is not None:
        raise ConfigError(
            f"Checkpoint '{path}' cannot be read ({problem}); the file is damaged (cut short or "
            f"changed since it was written) or not a PyTorch checkpoint. {hint}"
        )
    missing = [name for name, keys in REQUIRED_SECTIONS.items()
               if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get(name), dict)
                       and all(isinstance(checkpoint[name].get(key), dict) for key in keys))]
    if missing:
        raise ConfigError(f"'{path}' is not a checkpoint written by aligned's train.py (it has no "
                          f"{' and no '.join(missing)}); pass one that train.py saved: "
                          f"{key}=<run dir>/checkpoints/last.ckpt.")
    # A checkpoint from before the package layout names the old modules in its targets.
    for key in ("hyper_parameters", "run_config"):
        checkpoint[key] = upgrade_targets(checkpoint.get(key))
    return checkpoint


def archive_damage(path: Path) -> str | None:
    """What is wrong with the zip archive of a checkpoint, None when every member's checksum
    holds (or for the older non-zip format, which torch.load checks). torch.load reads the
    archive without its checksums: a changed byte in the weights loads as a different model."""
    try:
        with open(path, "rb") as file:
            if file.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                return None
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.CRC == 0 and member.file_size:  # saved without checksums (torch's
                    continue  # set_crc32_options(False)): nothing to check it against
                with archive.open(member) as data:  # raises at the end when the CRC differs
                    while data.read(1 << 24):
                        pass
    except Exception as error:  # noqa: BLE001  (a damaged archive raises many kinds)
        return error_line(error)
    return None


def error_line(error: BaseException) -> str:
    """An exception as one short line for a message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def directory_message(path: Path, key: str = "ckpt_path") -> str:
    """What to pass instead of a directory: the checkpoint a run directory (or its checkpoints/
    folder) holds, last.ckpt where there is one."""
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = sorted(folder.glob("*.ckpt"))
    if not found:
        where = ("a run directory whose checkpoints/ holds no .ckpt file yet"
                 if folder != path else "not a checkpoint file and holds no .ckpt file")
        return (f"Checkpoint '{path}' is a directory, {where}. Pass the checkpoint file: "
                f"{key}=<run dir>/checkpoints/last.ckpt (the path is printed at the end of "
                "train.py and stored in results.json).")
    chosen = folder / "last.ckpt" if (folder / "last.ckpt").is_file() else found[-1]
    others = [p.name for p in found if p != chosen]
    shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
    also = f" ({folder.name}/ also holds {shown})" if others else ""
    kind = "a run directory" if folder != path else "a directory of checkpoints"
    return (f"Checkpoint '{path}' is {kind}, not a checkpoint file; pass the file: "
            f"{key}={chosen}{also}.")


def load_system(
    checkpoint: dict[str, Any], model_overrides: dict | None = None
) -> LayerwiseClassifier:
    """Rebuild the model from the config saved in the checkpoint, then load its weights.

    ``model_overrides`` replace keys of the saved model config, e.g. ``name_or_path`` where an
    HF model's config files live on this machine (the checkpoint stores the training machine's).
    """
    hparams = copy.deepcopy(checkpoint["hyper_parameters"])
    overrides = {k: v for k, v in (model_overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(hparams["model"]) - set(RUNTIME_MODEL_KEYS)
    if unknown:
        raise ConfigError(f"This checkpoint's model config has no {', '.join(sorted(unknown))} "
                          f"(its keys: {', '.join(sorted(hparams['model']))}).")
    hparams["model"].update(overrides)
    # The trained weights follow; don't load the pretrained ones again (HF: the config suffices).
    if hparams["model"].get("_target_") == TIMM_TARGET:
        hparams["model"].update(pretrained=False, checkpoint_path=None)
    elif hparams["model"].get("_target_") in (HF_TARGET, HF_DECODER_TARGET):
        hparams["model"].update(pretrained=False)
    system = LayerwiseClassifier(**hparams)
    try:
        system.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ConfigError(
            "The checkpoint's weights do not fit the model its config describes "
            f"({str(error).splitlines()[0]})."
        ) from None
    return system.eval()
