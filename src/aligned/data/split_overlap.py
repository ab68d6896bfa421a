"""Evaluation splits that stay honest: a data override that changes which samples a split holds
(another split seed or fraction) would put images the model trained on into its "test" split.
Such overrides are refused unless allowed, and then the overlap is measured."""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from omegaconf import OmegaConf

from aligned.config import ConfigError, build, with_defaults

STAGE_OF_SPLIT = {"train": "fit", "val": "validate", "test": "test"}


def split_keys(target: str) -> list[str]:
    """The data settings that choose which samples any split holds (the data module's
    ``split_settings``; e.g. digits: split_seed, val_fraction, test_fraction)."""
    declared = getattr(get_class(target), "split_settings", {})
    return sorted({key for keys in declared.values() for key in keys})


def changed_split_settings(run_data: dict, overrides: dict) -> dict[str, tuple[Any, Any]]:
    """The split settings ``overrides`` change: key -> (the checkpoint's value, the new one)."""
    stored = with_defaults(run_data)
    return {key: (stored.get(key), overrides[key]) for key in split_keys(run_data["_target_"])
            if overrides.get(key) is not None and overrides[key] != stored.get(key)}


def check_split_overrides(run_data: dict, overrides: dict, allowed: bool) -> dict:
    """The changed split settings (empty when none), or a ConfigError when not ``allowed``."""
    changed = changed_split_settings(run_data, overrides)
    if changed and not allowed:
        described = ", ".join(f"data.{key}={new} (trained with {old})"
                              for key, (old, new) in changed.items())
        raise ConfigError(
            f"{described} changes which samples the splits hold, so the evaluated split would "
            "share samples with the checkpoint's training split. Drop the override to evaluate "
            "on the checkpoint's own split, or pass allow_other_split=true to evaluate anyway "
            "with the overlap measured and recorded."
        )
    return changed


def sample_ids(data: dict, split: str) -> set | None:
    """Which samples ``split`` of the data module that ``data`` configures holds; None for a
    data module that cannot say (it has no ``sample_ids``)."""
    datamodule = build(OmegaConf.create(data))
    if not hasattr(datamodule, "sample_ids"):
        return None
    datamodule.setup(STAGE_OF_SPLIT[split])
    return datamodule.sample_ids(split)


def training_overlap(run_data: dict, overrides: dict, split: str) -> dict[str, Any]:
    """How many samples of the evaluated ``split`` (the checkpoint's data with ``overrides``)
    the checkpoint trained on."""
    trained = sample_ids(run_data, "train")
    evaluated = sample_ids({**run_data, **overrides}, split)
    if trained is None or evaluated is None:
        return {"split": split, "samples": None, "in_training_split": None,
                "note": "this data module does not say which samples a split holds"}
    shared = len(trained & evaluated)
    return {"split": split, "samples": len(evaluated), "in_training_split": shared,
            "fraction": shared / len(evaluated) if evaluated else 0.0}
