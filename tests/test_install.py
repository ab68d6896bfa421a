"""The package as pip installs it: the configs ship inside it (``aligned.conf``, the checkout's
conf/ in an editable install), every package is in the wheel, and an installed copy reproduces
from outside any checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, ROOT
from data_files import write_mnist_csv

from aligned.config import conf_dir


def test_the_packages_configs_are_the_conf_directory_train_py_reads():
    """train.py and evaluate.py compose ``conf/`` beside them; the tests (conftest's CONF) and
    python -m aligned.reproduce (``conf_dir()``) compose the same directory, not a copy."""
    assert conf_dir() == CONF == ROOT / "conf"
    assert (conf_dir() / "hydra" / "help" / "train.yaml").is_file()


def test_every_package_under_src_is_in_the_wheel():
    """pyproject.toml names its packages (a package mapped to conf/ rules out packages.find):
    a new directory of modules under src/aligned must be added there, or wheels lack it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(path.parent.relative_to(ROOT / "src").parts)
             for path in (ROOT / "src" / "aligned").rglob("*.py")}
    assert set(setuptools["packages"]) == found | {"aligned.conf"}
    assert setuptools["package-dir"]["aligned.conf"] == "conf"


def installed_copy(tmp_path: Path) -> Path:
    """``pip install .`` (no dependencies: the environment has them) into ``<tmp>/site``, from a
    copy of what the build reads, so that the checkout gets no build/ directory."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)],
                   check=True, capture_output=True, timeout=300)
    return site


@pytest.mark.slow
def test_an_installed_copy_reproduces_outside_a_checkout(tmp_path):
    site = installed_copy(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONWARNINGS": "ignore"}

    def python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=600)

    found = python("-c", "import aligned, aligned.config as c; print(aligned.__file__); "
                         "print(c.conf_dir())").stdout.split()
    assert found == [str(site / "aligned" / "__init__.py"), str(site / "aligned" / "conf")]
    modules = {path.relative_to(ROOT / "src") for path in (ROOT / "src").rglob("*.py")}
    assert modules <= {path.relative_to(site) for path in site.rglob("*.py")}
    yamls = {path.relative_to(CONF) for path in CONF.rglob("*.yaml")}
    assert yamls == {path.relative_to(site / "aligned" / "conf")
                     for path in (site / "aligned" / "conf").rglob("*.yaml")}

    helped = python("-m", "aligned.reproduce", "--scale", "quick", "--help")
    assert helped.returncode == 0 and "--workloads" in helped.stdout, helped.stderr[-2000:]

    # One benchmarked run (vit_mnist, aligned) at micro size: train(), evaluate() and the timed
    # early exit, all from the installed copy; scale default's report lives in a checkout's
    # docs/, so outside one it goes under --root.
    csv = write_mnist_csv(tmp_path / "mnist.csv.gz")
    report_before = (ROOT / "docs" / "REPRODUCTION.md").stat().st_mtime_ns
    done = python("-m", "aligned.reproduce", "--workloads", "vit_mnist", "--losses", "aligned",
                  "--seeds", "0", "--root", "runs", "--benchmark-rounds", "1",
                  "--benchmark-seconds", "0.01", "--override", f"+data.data_file={csv}",
                  "model.depth=3", "model.embed_dim=16", "model.num_heads=2",
                  "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                  "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
                  "+trainer.enable_model_summary=false", "logger=none")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = elsewhere / "runs"
    assert f"the report goes to {runs / 'REPRODUCTION.md'}" in done.stderr
    assert "1 of 1 runs trained" in done.stdout
    report = (runs / "REPRODUCTION.md").read_text()
    assert "under `runs`" in report  # the root shown from the current directory
    assert (runs / "vit_mnist" / "aligned" / "seed0" / "benchmark.json").is_file()
    assert (ROOT / "docs" / "REPRODUCTION.md").stat().st_mtime_ns == report_before
