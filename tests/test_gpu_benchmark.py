"""benchmarks/gpu.py at toy sizes on the CPU: every figure it prints is produced, the synthetic
exit pattern is what the rule applies, and its errors are one line."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from conftest import ROOT
from tiny_models import tiny_vit_system, vit_batches

from aligned.early_exit.inference import EarlyExitClassifier


def load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


gpu = load_benchmark()


def test_tiny_run_gives_every_figure(tmp_path, capsys):
    out = tmp_path / "figures.json"
    gpu.main(["--tiny", "--device", "cpu", "--precision", "32", "--rounds", "1",
              "--json", str(out)])
    figures = json.loads(out.read_text())
    assert (figures["device"], figures["precision"]) == ("cpu", "32-true")
    assert set(figures["workloads"]) == {"ViT (tiny)", "BERT (tiny)"}
    for workload in figures["workloads"].values():
        assert workload["num_layers"] == 2
        assert set(workload["train_samples_per_s"]) == {"standard", "aligned", "multiexit"}
        assert all(value > 0 for value in workload["train_samples_per_s"].values())
        assert workload["evaluation_pass_s"] > 0
        rows = {row["batch_size"]: row for row in workload["early_exit"]}
        assert set(rows) == {1, 8}
        assert "pooled" not in rows[1] and rows[8]["pooled"] > 0
        for row in rows.values():
            assert row["mean_exit_layer"] == pytest.approx(1.5)  # the even 2-layer pattern
            assert row["predicted"] == pytest.approx(2 / 1.5)
            assert row["per batch"] > 0 and row["full_ms"] > 0
    printed = capsys.readouterr().out
    assert "training samples/s: standard" in printed and "| 8 | 1.50 | 1.33x |" in printed


def test_the_pattern_rule_exits_samples_in_the_stated_proportions():
    system = tiny_vit_system("aligned").eval()
    rule = gpu.PatternRule(gpu.exit_pattern([0.25, 0.75], 2))
    assert torch.bincount(rule.cycle).tolist() == [0, 250, 750]
    assert rule.mean_exit_layer == pytest.approx(1.75)
    result, _ = EarlyExitClassifier(system, rule).predict(vit_batches(10, 100))
    assert torch.equal(result.exit_layers, rule.cycle)  # the first 1,000 samples: one cycle


@pytest.mark.parametrize("argv, message", [
    (["--exit-pattern", "1", "-1"], "--exit-pattern needs 2 non-negative fractions"),
    (["--exit-pattern", "1"], "--exit-pattern needs 2 non-negative fractions"),
    (["--precision", "bf16"], "precision must be one of"),
])
def test_bad_flags_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        gpu.main(["--tiny", "--device", "cpu", *argv])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_a_gpu_the_machine_lacks_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        gpu.main(["--tiny", "--device", "cuda"])
    assert capsys.readouterr().err.startswith("Error: device=cuda:")
