"""Every setting checked against the type its target declares, before anything runs.

Hydra hands values over as parsed from the command line: ``loss.alternating=no`` arrives as the
string 'no', which Python reads as true; ``seed=1.5`` as a float that seeding truncates. Each
config section with a ``_target_`` is checked against that target's own annotations (a class's
``__init__``, or a function), so a new setting of any model, data module, objective or of the
Lightning Trainer is checked without being listed here; the entry points' own keys are listed,
the numeric ones with their ranges. NaN, which no setting means, is refused for every number.
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import numbers
import os
import pathlib
import types
import typing
from typing import Any, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aligned.config import ConfigError

# Keys of train.py's and evaluate.py's own (not a target's), by dotted path.
TRAIN_KEYS: dict[str, Any] = {"seed": int, "resume": str | None, "overwrite": bool}
# The config sections train() checks against their targets' annotations.
TRAIN_SECTIONS = ("model", "data", "loss", "optim", "trainer", "logger")
EVALUATE_KEYS: dict[str, Any] = {
    "ckpt_path": str | None,
    "compare_to": str | None,
    "split": Literal["test", "val"],
    "allow_other_split": bool,
    "cos_centering": Literal["samples", "features", "none"],
    "minimal_depth_epsilon": float,
    "monotone_tolerance": float,
    "early_exit.enabled": bool,
    "early_exit.max_drop": float,
    "early_exit.run": bool,
    "model.compile": bool | None,
    "model.compile_backend": str | None,
    "wandb": bool,
    "wandb_project": str,
    "overwrite": bool,
    "device": str,
    "precision": str | int,
    "similarity.measures": list[str],
    "similarity.max_samples": int,
    "similarity.max_tokens": int,
    "max_sequences": int | None,
}
# The fewest samples minibatch CKA takes (aligned.analysis.feature_stacks.MIN_SAMPLES_CKA, which
# cannot be imported here: the analysis package imports the training package, which imports this).
MIN_SAMPLES_CKA = 4
# The numeric keys' ranges, checked after their types: (low, high, whether high is excluded).
RANGES: dict[str, tuple[float, float, bool]] = {
    "seed": (0, 2**32, True),  # numpy's seeding range
    "minimal_depth_epsilon": (0, 1, False),  # fractions of accuracy (0.01 = one point)
    "monotone_tolerance": (0, 1, False),
    "early_exit.max_drop": (0, 1, True),
    "similarity.max_samples": (MIN_SAMPLES_CKA, math.inf, False),  # samples a measure reads
    "similarity.max_tokens": (MIN_SAMPLES_CKA, math.inf, False),  # a CKA minibatch
    "max_sequences": (1, math.inf, False),
}
# Sections whose target is named in code, not in the config.
IMPLIED_TARGETS = {"optim": "aligned.training.optim.adamw_with_warmup_cosine"}


def check_settings(cfg: DictConfig, keys: dict[str, Any], sections: tuple[str, ...]) -> None:
    """A ConfigError naming the first setting whose value does not have its declared type, or
    lies outside its range (``RANGES``)."""
    for key, annotation in keys.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        check(key, value, annotation)
        if key in RANGES and value is not None:
            check_range(key, value, annotation, *RANGES[key])
    for name in sections:
        node = cfg.get(name)
        if not isinstance(node, DictConfig):
            continue
        target = node.get("_target_") or IMPLIED_TARGETS.get(name)
        hints = annotations_of(target)
        for key in node:
            if key in hints:
                try:
                    value = node[key]
                except OmegaConfBaseException:  # an interpolation that fails: reported later
                    continue
                check(f"{name}.{key}", value, hints[key])


def check_seed(cfg: DictConfig) -> None:
    if cfg.seed < 0 or cfg.seed >= 2**32:  # numpy's seeding range
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {cfg.seed}.")


def annotations_of(target: str | None) -> dict[str, Any]:
    """The annotated parameters of a target, evaluated; {} for what cannot be resolved."""
    if not isinstance(target, str):
        return {}
    try:
        obj = get_object(target)
        function = obj.__init__ if inspect.isclass(obj) else obj
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001  (no target, or an annotation that does not evaluate)
        return {}
    hints.pop("return", None)
    return hints


def check(key: str, value: Any, annotation: Any) -> None:
    if not matches(value, annotation) or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{key} must be {describe(annotation)}, got {shown(value)}.")


def check_range(key: str, value: float, annotation: Any, low: float, high: float,
                high_open: bool) -> None:
    """A ConfigError naming the key and its range when ``value`` lies outside it."""
    if low <= value and (value < high if high_open else value <= high):
        return
    integer = annotation is int or int in typing.get_args(annotation)
    if integer and high == math.inf:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}.")
    kind = "an integer" if integer else "a number"
    high_text = "2**32" if high == 2**32 else f"{high:g}"
    raise ConfigError(f"{key} must be {kind} in [{low:g}, {high_text}{')' if high_open else ']'}"
                      f", got {value!r}.")


def matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (plain, or an OmegaConf container) has type ``annotation``; True for
    types this check does not know (an nn.Module, a callback), which their own code checks."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or isinstance(annotation, typing.TypeVar):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    if origin is Union or origin is types.UnionType:
        return any(matches(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (pathlib.Path, os.PathLike) or origin is os.PathLike:
        return isinstance(value, (str, pathlib.Path))
    sequence = origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable)
    if annotation in (list, tuple) or sequence:
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        item = args[0] if args and (origin is not tuple or args[-1] is Ellipsis
                                    or len(set(args)) == 1) else Any
        return all(matches(element, item) for element in value)
    if annotation is dict or origin in (dict, collections.abc.Mapping):
        return isinstance(value, (dict, DictConfig))
    return True


def describe(annotation: Any) -> str:
    """The accepted values in words: 'true or false', 'an integer or null', ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(describe(arg) for arg in args))
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             type(None): "null", None: "null", pathlib.Path: "a path"}
    if annotation in names:
        return names[annotation]
    if annotation in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        inner = describe(args[0]) if args else "values"
        return f"a list of {inner.removeprefix('an ').removeprefix('a ')}s" if args \
            else "a list"
    return getattr(annotation, "__name__", str(annotation))


def shown(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return repr(value)
