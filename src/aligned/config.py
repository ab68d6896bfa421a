"""The Hydra configs: where they are, and building objects from them with errors a user can act
on."""

from __future__ import annotations

import inspect
import numbers
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from aligned.legacy import current_target


class ConfigError(ValueError):
    """A configuration or input the user got wrong; the message says how to fix it."""


class TrainingDiverged(ConfigError):
    """The training loss became NaN or infinite; the message says what to try."""


def conf_dir() -> Path:
    """The directory of ``train.yaml``, ``evaluate.yaml`` and their groups: the package
    ``aligned.conf``, which is the checkout's ``conf/`` in an editable install (what train.py
    and evaluate.py read) and a copy of it in an installed wheel."""
    try:
        conf = Path(str(files("aligned.conf")))
    except ModuleNotFoundError:  # an editable install made before the configs were a package
        conf = None
    if conf is None or not (conf / "train.yaml").is_file():
        raise ConfigError(f"This installation of aligned lacks its configs (the package "
                          f"aligned.conf{f' at {conf}' if conf else ''} with train.yaml). "
                          "Reinstall it: pip install -e . in a checkout, or pip install .")
    return conf


def positive_int(key: str, value: Any) -> int:
    """``value`` of config key ``key`` as a positive integer, or a ConfigError naming the key."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}.")
    return int(value)


def number(key: str, value: Any, low: float, high: float, high_open: bool = False) -> float:
    """``value`` of config key ``key`` as a float in [low, high] (or [low, high)), else a
    ConfigError naming the key and the range."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and low <= value and (value < high if high_open else value <= high))
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{key} must be a number in [{low:g}, {high:g}{bracket}, got {value!r}.")
    return float(value)


def target_parameters(target: str | None) -> list[inspect.Parameter] | None:
    """The parameters a ``_target_`` takes (a class's constructor, or a function), without
    ``self``; None when it cannot be resolved."""
    try:
        parameters = inspect.signature(get_object(target)).parameters.values()
    except Exception:  # noqa: BLE001  (no or unknown target)
        return None
    return [p for p in parameters if p.name != "self"]


def with_defaults(section: dict) -> dict:
    """A ``_target_`` config section with the target's constructor defaults filled in for the
    keys it leaves out (an older config may lack a key added since, or a default written out)."""
    parameters = target_parameters(section.get("_target_"))
    if parameters is None:  # compare it as written
        return section
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **section}


def build(node: Any, *, surface: tuple[type[BaseException], ...] = (), **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces our own ConfigError instead of a wrapper.

    Hydra wraps every exception raised by a target in InstantiationException, and OmegaConf one
    raised by a resolver (e.g. an unknown GLUE task in ``${glue_num_labels:...}``) in
    InterpolationResolutionError; both bury the one line the user needs under the config path.
    A ConfigError, or an exception of a type in ``surface``, is re-raised as it was raised.
    """
    check_target_moved(node)
    try:
        return instantiate(node, **kwargs)
    except (InstantiationException, InterpolationResolutionError) as wrapped:
        cause: BaseException | None = wrapped
        while isinstance(cause, (InstantiationException, OmegaConfBaseException)):  # wrappers only
            cause = cause.__cause__ or cause.__context__  # OmegaConf may chain implicitly
        if isinstance(cause, (ConfigError, *surface)):
            raise cause from None
        unknown = unknown_setting(node, cause)
        if unknown:
            raise ConfigError(unknown) from None
        raise


def check_target_moved(node: Any) -> None:
    """A config written for the layout before one package per concern (e.g. ``_target_:
    aligned.backbones.timm_vit.TimmViT``) gets the target's new path instead of Hydra's
    "Error locating target"."""
    target = node.get("_target_") if hasattr(node, "get") else None
    if isinstance(target, str) and current_target(target) != target:
        raise ConfigError(f"_target_ {target} has moved to {current_target(target)}; "
                          "update the _target_ in your config.")


def unknown_setting(node: Any, error: BaseException | None) -> str | None:
    """The message for a key the target does not take (e.g. ``+loss.alternating=true`` with
    ``loss=multiexit``), or None when ``error`` is something else."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    target = node.get("_target_") if hasattr(node, "get") else None
    # Only a key written in this very config node, which the target's signature lacks; any
    # other TypeError (a nested target's, one from inside the code) stays as it is.
    if not isinstance(error, TypeError) or not found or not target or found.group(1) not in node:
        return None
    parameters = target_parameters(target)
    if parameters is None:
        return None
    accepted = [p.name for p in parameters]
    if found.group(1) in accepted or any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return (f"{target.rsplit('.', 1)[-1]} has no setting '{found.group(1)}' (its settings: "
            f"{', '.join(accepted)}); remove that override or fix its spelling.")


def user_message(error: ConfigError) -> str:
    """The message to print: a ConfigError raised in a DataLoader worker comes back wrapped
    ("Caught ConfigError in DataLoader worker process 0. Original Traceback ..."), whose last
    line is the message itself."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(f"{type(error).__name__}: ", 1)[-1]
    return text
