"""Sweep summaries: hand-written run trees, and real multiruns of train.py (basic and joblib)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY

from aligned.training.sweep_summary import SweepSummaryError, summarize_sweep


def write_run(job_dir: Path, overrides: list[str] | None, test: list[float], val_final: float,
              seed: int, loss: str = "aligned") -> None:
    job_dir.mkdir(parents=True)
    if overrides is not None:
        (job_dir / ".hydra").mkdir()
        (job_dir / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {override}\n" for override in overrides))
    results = {
        "model": "vit", "data": "digits", "loss": loss, "seed": seed, "num_layers": len(test),
        "layer_accuracy": {"val": [val_final] * len(test), "test": test},
        "final_accuracy": {"val": val_final, "test": test[-1]},
        "train_time_s": 1.0, "checkpoint": "unused.ckpt",
    }
    (job_dir / "results.json").write_text(json.dumps(results))


def test_summary_groups_by_everything_but_the_seed(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "loss=aligned,seed=0", ["loss=aligned", "seed=0"], [0.5, 0.8], 0.9, 0)
    write_run(sweep / "loss=aligned,seed=1", ["loss=aligned", "seed=1"], [0.7, 0.9], 0.7, 1)
    write_run(sweep / "loss=aligned,optim.lr=0.01,seed=0",
              ["loss=aligned", "optim.lr=0.01", "seed=0"], [0.2, 0.4], 0.5, 0)
    # A deeper model in the same sweep, and one of its seeds that died before results.json.
    write_run(sweep / "loss=standard,seed=0", ["loss=standard", "seed=0"], [0.1, 0.2, 0.3], 0.3,
              0, loss="standard")
    (sweep / "loss=standard,seed=1" / ".hydra").mkdir(parents=True)

    rows = summarize_sweep(sweep)

    by_config = {(row["loss"], row["overrides"]): row for row in rows}
    assert set(by_config) == {("aligned", ""), ("aligned", "optim.lr=0.01"), ("standard", "")}
    pair = by_config["aligned", ""]
    assert (pair["num_seeds"], pair["seeds"]) == (2, "0 1")
    assert pair["test_L01_mean"] == pytest.approx(0.6)
    assert pair["test_L01_std"] == pytest.approx(0.1 * 2**0.5)  # sample std of 0.5, 0.7
    assert pair["final_test_mean"] == pytest.approx(0.85)
    assert pair["final_val_std"] == pytest.approx(0.1 * 2**0.5)
    assert pair["test_L03_mean"] is None
    single = by_config["aligned", "optim.lr=0.01"]
    assert (single["num_seeds"], single["test_L02_mean"], single["test_L02_std"]) == (1, 0.4, None)
    assert by_config["standard", ""]["test_L03_mean"] == pytest.approx(0.3)

    with open(sweep / "summary.csv") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 3 and written[0]["test_L03_mean"] == ""  # shallower: left blank
    markdown = (sweep / "summary.md").read_text()
    # configuration | seeds | L1 | L2 | L3 (this model has none) | final val | final test
    cells = ["vit digits aligned", "2 (0 1)", "60.0 ± 14.1", "85.0 ± 7.1", "", "80.0 ± 14.1",
             "85.0 ± 7.1"]
    assert "| " + " | ".join(cells) + " |" in markdown
    assert "skipped 1 job dir(s) without results.json" in markdown
    assert "loss=standard,seed=1" in markdown


def test_summary_of_a_missing_or_empty_dir_is_a_clear_error(tmp_path):
    with pytest.raises(SweepSummaryError, match="does not exist"):
        summarize_sweep(tmp_path / "nowhere")
    (tmp_path / "failed" / ".hydra").mkdir(parents=True)
    with pytest.raises(SweepSummaryError, match=r"no results.json under .* \(1 job dir"):
        summarize_sweep(tmp_path)


@pytest.mark.slow
def test_a_repeated_seed_is_flagged(tmp_path):
    write_run(tmp_path / "first", None, [0.5], 0.5, seed=0)
    write_run(tmp_path / "rerun", None, [0.6], 0.6, seed=0)
    [row] = summarize_sweep(tmp_path)
    assert (row["num_seeds"], row["seeds"], row["overrides"]) == (2, "0 0", "")
    markdown = (tmp_path / "summary.md").read_text()
    assert "a seed appears more than once in: vit digits aligned" in markdown


def run_multirun(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``train.py -m``; conf/train.yaml registers SweepSummaryCallback under hydra.callbacks."""
    return subprocess.run(
        [sys.executable, "train.py", "-m", *overrides, *TINY, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def read_summary(sweep_dir: Path) -> dict[str, dict]:
    path = sweep_dir / "summary.csv"
    assert path.is_file(), "no summary.csv: conf/train.yaml must list SweepSummaryCallback"
    with open(path) as handle:
        return {row["loss"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep") / "multirun"
    done = run_multirun(sweep_dir, "loss=standard,aligned", "seed=0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


@pytest.mark.slow
def test_multirun_writes_one_summary_row_per_loss(seed_sweep):
    jobs = {
        tuple(o for o in yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text())
              if o.startswith(("loss=", "seed=")))
        for path in seed_sweep.glob("*/results.json")
    }
    assert jobs == {(f"loss={loss}", f"seed={seed}") for loss in ("standard", "aligned")
                    for seed in "01"}
    rows = read_summary(seed_sweep)
    assert set(rows) == {"standard", "aligned"}
    for row in rows.values():
        assert (row["num_seeds"], row["seeds"]) == ("2", "0 1")
        assert "model.depth=2" in row["overrides"] and "seed" not in row["overrides"]
        assert 0 <= float(row["test_L02_mean"]) <= 1
    assert "| vit digits aligned | 2 (0 1) |" in (seed_sweep / "summary.md").read_text()


@pytest.mark.slow
def test_multirun_with_the_joblib_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="hydra-joblib-launcher")
    done = run_multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                        "loss=standard,aligned")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout
    rows = read_summary(tmp_path)
    assert set(rows) == {"standard", "aligned"}
    assert all(row["num_seeds"] == "1" for row in rows.values())


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_sweep_nor_its_summary(tmp_path):
    # Job 0 is a config error (3 weights for 2 layers), job 1 is fine: it must still run, the
    # summary must cover it and name the failed job, and the sweep must exit non-zero.
    done = run_multirun(tmp_path, "loss.weighting=[1,2,3],linear")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Error: loss.weighting" in done.stderr and "Traceback" not in done.stderr
    rows = read_summary(tmp_path)
    assert set(rows) == {"aligned"} and "loss.weighting=linear" in rows["aligned"]["overrides"]
    assert "skipped 1 job dir(s) without results.json" in (tmp_path / "summary.md").read_text()


def run_summary_command(sweep_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aligned.training.sweep_summary", str(sweep_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.slow
def test_summary_command_rewrites_the_summary(seed_sweep, tmp_path):
    sweep_dir = tmp_path / "copy"  # the sweep as it was before the callback summarised it
    shutil.copytree(seed_sweep, sweep_dir, ignore=shutil.ignore_patterns("*.ckpt", "summary.*"))
    done = run_summary_command(sweep_dir)
    assert done.returncode == 0, done.stderr
    assert "| vit digits standard | 2 (0 1) |" in done.stdout
    assert f"wrote {sweep_dir / 'summary.csv'} and {sweep_dir / 'summary.md'}" in done.stdout
    assert set(read_summary(sweep_dir)) == {"standard", "aligned"}


def test_summary_command_on_a_missing_dir_says_so(tmp_path):
    done = run_summary_command(tmp_path / "nowhere")
    assert done.returncode == 2
    assert done.stderr.strip() == f"Error: sweep directory {tmp_path / 'nowhere'} does not exist."
