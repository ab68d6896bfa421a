"""One (workload, loss, seed) of the reproduction: trained by the real ``train()``, evaluated by
the real ``evaluate()``, its early exit timed by ``aligned.early_exit.timing`` (what
``benchmarks/early_exit.py`` prints); each step is skipped when its output is already in the run
directory.

A run directory ``<root>/<workload>/<loss>/seed<k>/`` holds train.py's outputs (results.json =
finished), ``evaluation/`` (evaluate.py's), ``benchmark.json`` and ``reproduce.json``: the
overrides it was trained with and the wall time of each step. A directory whose overrides differ
from the ones asked for is an error, never silently reused or overwritten.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import aligned.resolvers  # noqa: F401  (the configs' resolvers, as train.py registers them)
from aligned.config import ConfigError, conf_dir
from aligned.reproduce.workloads import Workload
from aligned.training import json_files
from aligned.training.json_files import write_json

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]
# The checkout this package runs from (src/aligned/, an editable install), None for an installed
# copy (pip install ., a wheel): the report's default place and the root its paths are shown from.
CHECKOUT = (PACKAGE.parents[1] if PACKAGE.parent.name == "src"
            and (PACKAGE.parents[1] / "pyproject.toml").is_file() else None)
RECORD = "reproduce.json"
# Every reproduction run: no progress bars (dozens of runs would fill the log with them).
BASE_OVERRIDES = ("+trainer.enable_progress_bar=false",)


@dataclass
class RunSpec:
    """What to train: the workload, the loss, the seed, the full train.py overrides."""

    workload: Workload
    loss: str
    seed: int
    overrides: tuple[str, ...]
    directory: Path
    data_dir: str | None = None  # GLUE's directory, for evaluation and the benchmark
    benchmark: bool = False


@dataclass
class RunResult:
    """A finished run as the claims read it: results.json, evaluation.json, the benchmark's
    rows (None: not benchmarked), the objective's own parameters, and the steps' wall times."""

    workload: str
    loss: str
    seed: int
    results: dict[str, Any]
    evaluation: dict[str, Any]
    benchmark: list[dict[str, Any]] | None
    objective_parameters: int
    directory: Path
    timings: dict[str, float] = field(default_factory=dict)
    reused: dict[str, bool] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # train.py's, loss= and seed= aside (the last two)


def compose_config(name: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """``conf/<name>.yaml`` (the package's configs) with ``overrides``, as the entry point
    would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.choices.*}
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def read_json(path: Path) -> Any:
    """A JSON file the project wrote, its non-finite values restored; None when missing."""
    return json_files.read_json(path) if path.is_file() else None


def check_record(spec: RunSpec) -> dict[str, Any]:
    """The run directory's record, after checking it was made with the same overrides."""
    record = read_json(spec.directory / RECORD)
    if record is None:
        if spec.directory.exists() and any(spec.directory.iterdir()):
            raise ConfigError(f"{spec.directory} holds files but no {RECORD}: it is not a run of "
                              "python -m aligned.reproduce. Choose another --root or move it.")
        return {"overrides": list(spec.overrides), "timings": {}}
    if record.get("overrides") != list(spec.overrides):
        stored = " ".join(record.get("overrides") or [])
        raise ConfigError(
            f"{spec.directory} was trained with other overrides ({stored}) than asked "
            f"({' '.join(spec.overrides)}). Use another --root for other settings, or delete "
            "that run directory to train it again."
        )
    return record


def execute(spec: RunSpec, rounds: int, round_seconds: float) -> RunResult:
    """Train, evaluate and (for benchmarked runs) time one run, reusing what is done."""
    record = check_record(spec)
    spec.directory.mkdir(parents=True, exist_ok=True)
    write_json(spec.directory / RECORD, record)
    reused = {}

    results = read_json(spec.directory / "results.json")
    reused["train"] = results is not None
    if results is None:
        results = timed(record, "train_s", lambda: train_run(spec))
        write_json(spec.directory / RECORD, record)

    evaluation_dir = spec.directory / "evaluation"
    evaluation = read_json(evaluation_dir / "evaluation.json")
    reused["evaluate"] = evaluation is not None and (
        evaluation.get("checkpoint") == results["checkpoint"])
    if not reused["evaluate"]:
        evaluation = timed(record, "evaluate_s", lambda: evaluate_run(spec, results))
        write_json(spec.directory / RECORD, record)

    benchmark = None
    if spec.benchmark:
        stored = read_json(spec.directory / "benchmark.json")
        # A classifier's rows without their rounds (an older benchmark.json) are timed again:
        # the spread of the rounds decides the claim. An LM's rows are its decoders' (full
        # depth first).
        reused["benchmark"] = (stored is not None and stored["checkpoint"] == results["checkpoint"]
                               and (stored["rows"][0].get("label") == "full depth" or all(
                                   "rounds_bs1" in row for row in stored["rows"])))
        if reused["benchmark"]:
            benchmark = stored["rows"]
        else:
            benchmark = timed(record, "benchmark_s",
                              lambda: benchmark_run(spec, results, rounds, round_seconds))
            write_json(spec.directory / "benchmark.json",
                       {"checkpoint": results["checkpoint"], "rounds": rounds,
                        "round_seconds": round_seconds, "rows": benchmark})
            write_json(spec.directory / RECORD, record)
    return RunResult(spec.workload.name, spec.loss, spec.seed, results, evaluation, benchmark,
                     objective_parameters(results["checkpoint"]), spec.directory,
                     record["timings"], reused, spec.overrides[:-2])


def execute_all(specs: list[RunSpec], rounds: int, round_seconds: float, jobs: int,
                done: Callable[[int, RunResult], None]) -> list[RunResult]:
    """``execute`` every spec, ``jobs`` at a time, calling ``done(index, result)`` as each ends.

    With ``jobs`` > 1 the runs train and evaluate in worker processes sharing the cores (each
    gets cores // jobs torch threads: small models use one thread better than two), and the
    early-exit timings follow one at a time in this process, so no other job shares their cores.
    """
    if jobs == 1:
        results = []
        for index, spec in enumerate(specs):
            results.append(execute(spec, rounds, round_seconds))
            done(index, results[-1])
        return results
    threads = max(1, torch.get_num_threads() // jobs)
    results: dict[int, RunResult] = {}
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=start_job, initargs=(threads,))
    try:
        futures = {pool.submit(execute, replace(spec, benchmark=False), rounds, round_seconds):
                   index for index, spec in enumerate(specs)}
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if not specs[index].benchmark:
                done(index, results[index])
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # the running jobs end, no new ones start
        raise
    pool.shutdown()
    for index, spec in enumerate(specs):
        if spec.benchmark:  # training and evaluation are reused; only the timing runs here
            timed_run = execute(spec, rounds, round_seconds)
            timed_run.reused = {**results[index].reused,
                                "benchmark": timed_run.reused["benchmark"]}
            results[index] = timed_run
            done(index, timed_run)
    return [results[index] for index in range(len(specs))]


def start_job(threads: int) -> None:
    """A worker process of ``execute_all``: its share of the cores, and the parent's log format."""
    torch.set_num_threads(threads)
    log_to_console()


def log_to_console() -> None:
    """Each message once, as ``<logger>: <message>``, through the root's handler. Importing
    Lightning gives its 'lightning' logger a console handler of its own that also propagates
    to the root's (each message twice), and 'lightning.pytorch' one that does not propagate
    when the root had no handler yet (no logger name); both go."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    import lightning  # noqa: F401  (the import that adds the handlers removed here)

    for name in ("lightning", "lightning.pytorch"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def timed(record: dict[str, Any], key: str, step):
    start = time.perf_counter()
    value = step()
    record["timings"][key] = round(time.perf_counter() - start, 2)
    return value


def train_run(spec: RunSpec) -> dict[str, Any]:
    """The real train(); resume=auto continues a run killed earlier from its last.ckpt."""
    from aligned.training.fit import train

    log.info("training %s %s seed %d in %s", spec.workload.name, spec.loss, spec.seed,
             spec.directory)
    cfg = compose_config("train", [*spec.overrides, "resume=auto"], spec.directory)
    results = train(cfg)
    if results is None:
        raise ConfigError(f"{spec.workload.name}: training wrote no results (trainer."
                          "fast_dev_run?); the reproduction needs finished runs.")
    return results


def evaluate_run(spec: RunSpec, results: dict[str, Any]) -> dict[str, Any]:
    """The real evaluate() on the run's best checkpoint, test split, early exit included."""
    from aligned.evaluation import evaluate

    log.info("evaluating %s", results["checkpoint"])
    overrides = [f"ckpt_path={results['checkpoint']}"]
    if spec.data_dir is not None:
        overrides.append(f"data.data_dir={spec.data_dir}")
    return evaluate(compose_config("evaluate", overrides, spec.directory / "evaluation"))


def benchmark_run(spec: RunSpec, results: dict[str, Any], rounds: int, round_seconds: float
                  ) -> list[dict[str, Any]]:
    """``time_early_exit`` (1 torch thread, batch 1 and 64, per batch and pooled) at each rule's
    operating point chosen on val, as ``benchmarks/early_exit.py`` runs it."""
    from aligned.early_exit.timing import time_early_exit
    from aligned.evaluation import evaluation_dataloader
    from aligned.placement import resolve_placement
    from aligned.training.checkpoints import load_system, read_checkpoint

    checkpoint = read_checkpoint(results["checkpoint"])
    val, test = (evaluation_dataloader(checkpoint["run_config"], {"data_dir": spec.data_dir},
                                       split) for split in ("val", "test"))
    system = load_system(checkpoint)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the benchmark's default: steadier timings
    try:
        if system.next_token:  # a causal LM: its decoding
            return decoding_benchmark_run(system, val, test, rounds)
        timings = time_early_exit(system, val, test, name=spec.loss,
                                  placement=resolve_placement("auto", "32"), max_drop=0.01,
                                  batch_sizes=(1, 64), rounds=rounds, round_seconds=round_seconds)
    finally:
        torch.set_num_threads(threads)
    log.info("%s: L = %d, %d test samples, full-depth test acc %.1f%%", spec.loss,
             timings.num_layers, timings.test_samples, 100 * timings.full_depth_accuracy)
    return timings.rows


# An LM's decoding benchmark: the tokens whose exit signals choose the plan (val) and report its
# acceptance (test), and the greedy decoding timed, as benchmarks/decoding.py's defaults.
SIGNAL_TOKENS, PROMPTS, PROMPT_LENGTH, NEW_TOKENS, MAX_DRAFT = 4000, 5, 32, 64, 8


def decoding_benchmark_run(system, val, test, rounds: int) -> list[dict[str, Any]]:
    """A causal LM: full depth against lossless self-speculative decoding at the plans chosen
    on val and Hugging Face's early-exit assistant (``compare_speculative``), batch 1."""
    from aligned.early_exit.decoding import system_logits
    from aligned.early_exit.decoding_comparison import compare_speculative
    from aligned.early_exit.signals import collect_token_signals

    backbone = system.backbone
    val_signals, test_signals = (collect_token_signals(backbone, loader, system_logits(system),
                                                       max_tokens=SIGNAL_TOKENS)
                                 for loader in (val, test))
    prompts = []
    for batch in test:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            if len(prompts) < PROMPTS and bool(mask[:PROMPT_LENGTH].all()):
                prompts.append(ids[None, :PROMPT_LENGTH].long())
    if len(prompts) < PROMPTS:
        raise ConfigError(f"The test split has {len(prompts)} sequences of {PROMPT_LENGTH} "
                          f"tokens; the decoding benchmark needs {PROMPTS}.")
    compared = compare_speculative(backbone, val_signals, test_signals, prompts, NEW_TOKENS,
                                   rounds, MAX_DRAFT, backbone.model.config.pad_token_id or 0)
    log.info("decoding: full depth %.1f tokens/s; %s", compared["rows"][0]["tokens_per_s"],
             "; ".join(f"{row['label']} {row['speedup']:.2f}x" for row in compared["rows"][1:]
                       if "speedup" in row))
    return compared["rows"]


def objective_parameters(checkpoint_path: str) -> int:
    """Parameters the objective adds to the backbone (per-layer heads), counted in the
    checkpoint's weights: 0 for one shared head."""
    from aligned.training.checkpoints import read_checkpoint

    state = read_checkpoint(checkpoint_path, mmap=True)["state_dict"]
    return sum(tensor.numel() for key, tensor in state.items() if key.startswith("objective."))
