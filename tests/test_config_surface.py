"""The config surface Lightning + Hydra users expect: model.compile, --help, an Optuna sweep."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
import yaml
from causal_lm_helpers import save_tiny_lm
from conftest import CONF, ROOT, TINY, compose_evaluate, compose_train
from hydra.core.global_hydra import GlobalHydra
from tiny_models import tiny_bert_dir, token_batch

from aligned.config import ConfigError
from aligned.evaluation import load_for_evaluation
from aligned.models.backbones import HFEncoder, TimmViT
from aligned.models.backbones.hf_decoder import HFDecoder
from aligned.training.checkpoints import load_system, read_checkpoint
from aligned.training.fit import train
from aligned.training.interruption import SIGNALS
from aligned.training.resume import check_same_settings
from aligned.training.system import LayerwiseClassifier

# A torch.compile backend that runs each graph as traced and counts what it compiled and ran,
# so a test sees that the blocks really went through torch.compile (the eager backend's cost).
COUNTS = {"graphs": 0, "calls": 0}


@torch._dynamo.register_backend(name="aligned_test_counting")
def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
    COUNTS["graphs"] += 1

    def run(*args):
        COUNTS["calls"] += 1
        return graph.forward(*args)

    return run


def compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


TINY_VIT = dict(name="vit_tiny_patch16_224", num_classes=10, img_size=8, in_chans=1, patch_size=4,
                embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory):
    """A tiny digits run trained with model.compile=true (the counting backend)."""
    torch._dynamo.reset()
    COUNTS.update(graphs=0, calls=0)
    run_dir = tmp_path_factory.mktemp("compiled") / "run"
    overrides = [*TINY, "model.compile=true", "+model.compile_backend=aligned_test_counting"]
    results = train(compose_train(overrides, run_dir))
    return results, dict(COUNTS)


def test_model_compile_trains_through_torch_compile_and_keeps_checkpoint_keys(compiled_run):
    results, counts = compiled_run
    # Both blocks share one graph per mode (train, eval); every training step runs each block.
    assert 1 <= counts["graphs"] <= 6, counts
    assert counts["calls"] >= 3 * 2  # 3 training batches x 2 blocks, then val/test
    checkpoint = read_checkpoint(results["checkpoint"])
    assert checkpoint["hyper_parameters"]["model"]["compile"] is True
    saved = checkpoint["hyper_parameters"]
    plain = LayerwiseClassifier(**{**saved, "model": {**saved["model"], "compile": False}})
    assert list(checkpoint["state_dict"]) == list(plain.state_dict())  # no _orig_mod. prefix


def test_a_compiled_checkpoint_loads_and_evaluates_without_compile(compiled_run, tmp_path):
    results, _ = compiled_run
    checkpoint = read_checkpoint(results["checkpoint"])
    as_trained = load_system(checkpoint)
    without = load_system(checkpoint, {"compile": False})
    assert all(compiled(block) for block in as_trained.backbone.model.blocks)
    assert not any(compiled(block) for block in without.backbone.model.blocks)
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(without(images), as_trained(images))

    # What evaluate.py loads with model.compile=false.
    cfg = compose_evaluate([f"ckpt_path={results['checkpoint']}", "model.compile=false"],
                           tmp_path / "evaluate")
    loaded = load_for_evaluation(results["checkpoint"], cfg)
    assert not any(compiled(block) for block in loaded.system.backbone.model.blocks)


def test_resuming_with_compile_switched_is_the_same_run(compiled_run, tmp_path):
    results, _ = compiled_run
    cfg = compose_train([*TINY, "model.compile=false"], tmp_path / "run")
    check_same_settings(cfg, Path(results["checkpoint"]))  # raises when a trained setting changed


def test_bert_blocks_compile_and_compute_what_they_did(tmp_path):
    path = tiny_bert_dir(tmp_path)
    torch.manual_seed(0)
    plain = HFEncoder(path, num_classes=3).eval()
    torch.manual_seed(0)
    fast = HFEncoder(path, num_classes=3, compile=True,
                     compile_backend="aligned_test_counting").eval()
    assert all(compiled(layer) for layer in fast.model.bert.encoder.layer)
    assert list(fast.state_dict()) == list(plain.state_dict())
    batch = token_batch()
    calls = COUNTS["calls"]
    with torch.no_grad():
        torch.testing.assert_close(fast(batch), plain(batch))  # HF's forward
        state = fast.begin(batch)  # the block-by-block path early exit takes
        for layer in range(1, fast.num_layers + 1):
            state = fast.run_block(layer, state)
        torch.testing.assert_close(fast.read(state), plain.layer_features(batch)[-1])
    assert COUNTS["calls"] - calls == 2 * fast.num_layers


def test_decoder_blocks_compile_and_compute_what_they_did(tmp_path):
    # LLaMA: its blocks also take the rotary embeddings and the mask as arguments.
    path = str(save_tiny_lm(tmp_path / "llama", "llama"))
    plain = HFDecoder(path).eval()
    fast = HFDecoder(path, compile=True, compile_backend="aligned_test_counting").eval()
    assert all(compiled(block) for block in fast.parts.blocks)
    assert list(fast.state_dict()) == list(plain.state_dict())
    ids = torch.tensor([[3, 7, 9, 11, 5, 0], [4, 6, 8, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    calls = COUNTS["calls"]
    with torch.no_grad():
        torch.testing.assert_close(fast.layer_features(batch), plain.layer_features(batch))
    assert COUNTS["calls"] - calls == fast.num_layers


def test_an_unknown_compile_backend_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"model.compile_backend='nope' is not a torch.compile "
                                          r"backend; use inductor \(the default\), aot_eager"):
        TimmViT(**TINY_VIT, compile=True, compile_backend="nope")
    TimmViT(**TINY_VIT, compile=False, compile_backend="nope")  # not compiling: not read


def test_inductor_without_a_cpp_compiler_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match="needs a C.. compiler, and 'g..' is not on the PATH"):
        TimmViT(**TINY_VIT, compile=True)


# Inductor compiles a tiny ViT block for ~40 s on 2 CPU cores (first forward + backward, then
# ~17 s again for the first batch of another size): too slow for every CI run.
@pytest.mark.skipif(not os.environ.get("ALIGNED_INDUCTOR_TEST"),
                    reason="set ALIGNED_INDUCTOR_TEST=1: inductor takes about a minute on CPU")
@pytest.mark.skipif(shutil.which(os.environ.get("CXX") or "g++") is None, reason="no C++ compiler")
def test_inductor_compiled_vit_matches_the_eager_one():
    torch.manual_seed(0)
    plain = TimmViT(**TINY_VIT)
    torch.manual_seed(0)
    fast = TimmViT(**TINY_VIT, compile=True)
    images = torch.randn(8, 1, 8, 8)
    expected, got = plain(images), fast(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    got.square().sum().backward()
    expected.square().sum().backward()
    for (name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)


def run_entry_point(script: str, *args: str, monkeypatch) -> int:
    """``python <script> <args>`` in this process: the real Hydra main, without the interpreter's
    start-up and imports (seconds each); its exit code."""
    handlers = {signum: signal.getsignal(signum) for signum in SIGNALS}  # train.py sets its own
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        GlobalHydra.instance().clear()
    return code


GROUPS = ("callbacks", "data", "experiment", "hparams_search", "logger", "loss", "model", "trainer")


def test_train_help_lists_the_groups_the_common_keys_and_their_values(monkeypatch, capsys):
    assert run_entry_point("train.py", "optim.lr=0.02", "--help", monkeypatch=monkeypatch) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    for group in GROUPS:  # each group with its options, as Hydra lists them
        options = sorted(path.stem for path in (CONF / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in lines, group
    for key in ("seed", "optim.lr", "data.batch_size", "trainer.max_epochs", "trainer.precision",
                "trainer.accumulate_grad_batches", "model.compile", "resume", "overwrite"):
        assert any(line.startswith(f"  {key} ") for line in lines), key
    assert "AdamW's peak learning rate; now 0.02" in text  # the values of these overrides
    assert "now 64 (data.num_workers" in text  # data.batch_size of data=digits
    assert "\n  lr: 0.02\n" in text  # the whole composed config follows
    assert "--hydra-help" in lines[-1]


def test_evaluate_help_lists_its_keys(monkeypatch, capsys):
    assert run_entry_point("evaluate.py", "split=val", "--help", monkeypatch=monkeypatch) == 0
    text = capsys.readouterr().out
    assert text.startswith("evaluate.py: analyse a trained checkpoint layer by layer")
    for key in ("ckpt_path, compare_to", "split", "data.data_dir, data.batch_size",
                "model.name_or_path", "model.compile", "device, precision", "cos_centering",
                "early_exit.enabled, .max_drop, .run"):
        assert f"\n  {key} " in text, key
    assert "test or val; now val" in text
    assert "\nckpt_path: null\n" in text



def test_the_optuna_search_maximises_the_val_metric_with_a_seeded_sampler(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[optuna]'")
    sweeper = compose_train(["hparams_search=optuna_lr"], tmp_path / "run").hydra.sweeper
    assert (sweeper.direction, sweeper.max_failure_rate) == ("maximize", 1.0)
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    assert set(sweeper.params) == {"optim.lr", "optim.weight_decay"}


def test_an_optuna_study_survives_a_diverging_trial(tmp_path, monkeypatch, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[optuna]'")
    # Three trials, one per learning rate (the grid sampler); 1e6 diverges in its first step.
    code = run_entry_point(
        "train.py", "-m", "hparams_search=optuna_lr", "hydra/sweeper/sampler=grid",
        "optim.lr=choice(0.001,0.003,1e6)", "optim.weight_decay=choice(0.05)", *TINY,
        f"hydra.sweep.dir={tmp_path}", "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled", monkeypatch=monkeypatch)
    out, err = capsys.readouterr()
    assert code == 1, err[-3000:]  # every trial ran; the sweep says one failed
    assert "Error: The training loss became nan" in err
    trials = {}
    for job in sorted(tmp_path.glob("[0-9]*")):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        [lr] = [float(o.split("=")[1]) for o in overrides if o.startswith("optim.lr=")]
        results = job / "results.json"
        trials[lr] = json.loads(results.read_text()) if results.is_file() else None
    assert set(trials) == {0.001, 0.003, 1e6} and trials[1e6] is None
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    values = {lr: results["final_accuracy"]["val"] for lr, results in trials.items() if results}
    assert best["best_value"] == max(values.values())  # what train.py returned, maximised
    assert values[best["best_params"]["optim.lr"]] == best["best_value"]
    summary = (tmp_path / "summary.md").read_text()
    assert "optim.lr=0.001" in summary and "optim.lr=0.003" in summary
    assert "skipped 1 job dir(s) without results.json" in summary
