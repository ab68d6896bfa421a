"""Arguments out of range at the entry points: the early-exit benchmark's flags (argparse
errors naming the flag and the range, exit 2) and evaluate.py given a directory for ckpt_path."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from aligned.config import ConfigError
from aligned.early_exit.timing import round_times, time_rounds
from aligned.training.checkpoints import read_checkpoint


def load_benchmark():
    spec = importlib.util.spec_from_file_location("early_exit_benchmark",
                                                  ROOT / "benchmarks" / "early_exit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchmark = load_benchmark()
DROP = r"must be a fraction of accuracy in \[0, 1\) \(0.01 = one point\)"
POSITIVE = "must be a positive integer"


@pytest.mark.parametrize("flags, message", [
    (["--max-drop", "5"], f"argument --max-drop: {DROP}, got '5'"),
    (["--max-drop", "1"], f"argument --max-drop: {DROP}, got '1'"),
    (["--max-drop", "-0.01"], f"argument --max-drop: {DROP}, got '-0.01'"),
    (["--max-drop", "nan"], f"argument --max-drop: {DROP}, got 'nan'"),
    (["--batch-sizes", "0"], f"argument --batch-sizes: {POSITIVE}, got 0"),
    (["--batch-sizes", "1", "-64"], f"argument --batch-sizes: {POSITIVE}, got -64"),
    (["--rounds", "0"], f"argument --rounds: {POSITIVE}, got 0"),
    (["--threads", "0"], f"argument --threads: {POSITIVE}, got 0"),
    (["--threads", "two"], f"argument --threads: {POSITIVE}, got 'two'"),
    (["--stream", "0"], f"argument --stream: {POSITIVE}, got 0"),
])
def test_benchmark_flags_out_of_range_are_argparse_errors(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exited:
        benchmark.main(["--ckpt", str(tmp_path / "a.ckpt"), *flags])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(rf"\S+: error: {message}", last), last  # prog: sys.argv[0]


def test_benchmark_flags_in_range_are_accepted(tmp_path, capsys):
    """Past the flags, the missing checkpoint is the one error, in one line, exit 2."""
    missing = tmp_path / "a.ckpt"
    with pytest.raises(SystemExit) as exited:
        benchmark.main(["--ckpt", str(missing), "--max-drop", "0", "--batch-sizes", "1", "8",
                        "--rounds", "1", "--threads", "1", "--stream", "2"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"Error: Checkpoint '{missing}' does not exist. Pass --ckpt=<run dir>/checkpoints/"
        "<file>.ckpt (the path is printed at the end of train.py and stored in results.json).")


def run_directory(root, names=("epoch002.ckpt", "last.ckpt")):
    checkpoints = root / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in names:
        (checkpoints / name).write_bytes(b"")
    return root


@pytest.mark.parametrize("names, chosen", [(("epoch002.ckpt", "last.ckpt"), "last.ckpt"),
                                           (("epoch001.ckpt", "epoch004.ckpt"), "epoch004.ckpt")])
def test_a_run_directory_for_a_checkpoint_names_its_checkpoint(tmp_path, names, chosen):
    run = run_directory(tmp_path / "run", names)
    for given, kind in ((run, "a run directory"),
                        (run / "checkpoints", "a directory of checkpoints")):
        with pytest.raises(ConfigError, match=re.escape(
                f"Checkpoint '{given}' is {kind}, not a checkpoint file; pass the file: "
                f"ckpt_path={run / 'checkpoints' / chosen} (checkpoints/ also holds ")):
            read_checkpoint(given)


def test_a_directory_without_checkpoints_says_so(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a checkpoint file and holds no "
                                          r".ckpt file. Pass the checkpoint file: ckpt_path="):
        read_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match="a run directory whose checkpoints/ holds no .ckpt"):
        read_checkpoint(tmp_path)


@pytest.mark.slow
def test_evaluate_py_on_a_run_directory_prints_one_line_and_exits_2(tmp_path):
    run = run_directory(tmp_path / "run")
    done = subprocess.run(
        [sys.executable, "evaluate.py", f"ckpt_path={run}", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "does not exist" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: Checkpoint '{run}' is a run directory, not a checkpoint file; "
                      f"pass the file: ckpt_path={run / 'checkpoints' / 'last.ckpt'} "
                      "(checkpoints/ also holds epoch002.ckpt)."]


def test_the_rounds_interleave_the_runs_and_keep_each_rounds_time():
    calls = []
    runs = {name: (lambda n=name: calls.append(n)) for name in ("full", "rule")}
    times = round_times(runs, rounds=3, min_seconds=0)
    assert {name: len(values) for name, values in times.items()} == {"full": 3, "rule": 3}
    assert calls[4:] == ["full", "rule"] * 3  # after each run's warm-up and probe: alternating
    medians = time_rounds(runs, rounds=3, min_seconds=0)
    assert set(medians) == {"full", "rule"} and all(t >= 0 for t in medians.values())
