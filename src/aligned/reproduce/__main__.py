"""python -m aligned.reproduce: train what the reproduction needs (or reuse the finished runs it
finds), evaluate every run, time early exit, and write the report with a verdict per claim.

    python -m aligned.reproduce                          # the CPU report -> the checkout's
                                                         # docs/REPRODUCTION.md
    python -m aligned.reproduce --scale quick            # a smoke run -> <root>/REPRODUCTION.md
    python -m aligned.reproduce --scale paper --glue-dir /data/glue \\
        --override deit_s_cifar10:data.data_dir=/data/cifar  # the paper's setups, on GPUs
    python -m aligned.reproduce --workloads vit_digits --losses standard aligned --seeds 0 1
    python -m aligned.reproduce --jobs 2                 # two runs at a time, 1 thread each
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from pathlib import Path

from aligned.arguments import output_problem
from aligned.config import ConfigError, user_message
from aligned.extras import missing_extras
from aligned.reproduce import claims as claim_functions
from aligned.reproduce.collected import STORED_RUNS, Collected, load_runs, save_runs
from aligned.reproduce.report import Provenance, shown, write_report
from aligned.reproduce.runs import (
    BASE_OVERRIDES,
    CHECKOUT,
    RunResult,
    RunSpec,
    check_record,
    compose_config,
    execute_all,
    log_to_console,
)
from aligned.reproduce.workloads import LOSSES, SCALES, WORKLOADS, Scale, find
from aligned.typed_settings import TRAIN_KEYS, TRAIN_SECTIONS, check_seed, check_settings

log = logging.getLogger("aligned.reproduce")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aligned.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="default", choices=list(SCALES),
                        help="; ".join(f"{s.name}: {s.description}" for s in SCALES.values()))
    parser.add_argument("--root", help="where the run directories go (and are reused from); "
                                       "default outputs/reproduce/<scale>")
    parser.add_argument("--out", help="the report's path (figures go to figures/ beside it); "
                                      "default: the checkout's docs/REPRODUCTION.md at scale "
                                      "default (run from a checkout), else "
                                      "<root>/REPRODUCTION.md")
    parser.add_argument("--workloads", nargs="+", metavar="NAME",
                        help=f"default: the scale's; any of {', '.join(WORKLOADS)}")
    parser.add_argument("--losses", nargs="+", choices=LOSSES,
                        help="default: each workload's (alternating only for the LM)")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: the scale's")
    parser.add_argument("--glue-dir", default="../shared/data/glue",
                        help="GLUE in its TSV layout (SST-2/train.tsv, ...) for the GLUE workloads")
    parser.add_argument("--override", nargs="+", action="extend", default=[],
                        metavar="[WORKLOAD:]KEY=VALUE",
                        help="train.py overrides added to every run (or to one workload's); "
                             "not seed= or loss=, which --seeds and --losses choose")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained and evaluated at once, each in its own process with "
                             "cores/jobs torch threads; the early-exit timings then run one at "
                             "a time (default 1)")
    parser.add_argument("--benchmark-rounds", type=int, help="default: the scale's")
    parser.add_argument("--benchmark-seconds", type=float, default=0.5,
                        help="a timed round repeats a short run until it lasts this long")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, scale: Scale, root: Path) -> list[RunSpec]:
    """One spec per (workload, seed, loss): a killed reproduction has whole seeds done."""
    names = list(dict.fromkeys(args.workloads or scale.workloads))  # each once
    workloads = [find(WORKLOADS, name, "workload") for name in names]
    overrides = split_overrides(args.override, names)
    glue_dir = str(Path(args.glue_dir).expanduser().resolve())
    if any(w.glue for w in workloads) and not Path(glue_dir).is_dir():
        raise ConfigError(f"--glue-dir {args.glue_dir} is not a directory; the GLUE workloads "
                          "read GLUE's TSV files from it (SST-2/train.tsv, ...). Pass --glue-dir "
                          "<your GLUE directory> or leave those workloads out with --workloads.")
    seeds = list(dict.fromkeys(args.seeds if args.seeds is not None else scale.seeds))
    if any(seed < 0 for seed in seeds):
        raise ConfigError(f"--seeds must be integers of 0 or more, got {seeds}.")
    if any(seed >= 2**32 for seed in seeds):  # numpy's seeding range
        raise ConfigError(f"--seeds must be below 2**32, got {seeds}.")
    benchmarked = seeds[: scale.benchmark_seeds] if scale.benchmark_seeds else seeds
    specs = []
    for workload in workloads:
        data = [f"data.data_dir={glue_dir}"] if workload.glue else []
        for seed in seeds:
            for loss in dict.fromkeys(args.losses or workload.losses):
                run_overrides = (*workload.overrides, *data,
                                 *scale.workloads.get(workload.name, ()), *BASE_OVERRIDES,
                                 *overrides[workload.name], f"loss={loss}", f"seed={seed}")
                specs.append(RunSpec(workload, loss, seed, run_overrides,
                                     root / workload.name / loss / f"seed{seed}",
                                     glue_dir if workload.glue else None,
                                     benchmark=workload.benchmark
                                     and loss in workload.benchmark_losses
                                     and seed in benchmarked))
    return specs


def split_overrides(values: list[str], workloads: list[str]) -> dict[str, list[str]]:
    """``KEY=VALUE`` goes to every workload, ``WORKLOAD:KEY=VALUE`` to that one."""
    chosen: dict[str, list[str]] = {name: [] for name in workloads}
    for value in values:
        key = value.split("=", 1)[0]
        if "=" not in value and not value.startswith("~"):
            raise ConfigError(f"--override {value}: give KEY=VALUE (a train.py override), "
                              "optionally after WORKLOAD:.")
        if ":" in key:
            name, override = value.split(":", 1)
            if name not in WORKLOADS:
                raise ConfigError(f"--override {value}: unknown workload '{name}'; choose one "
                                  f"of {', '.join(WORKLOADS)}.")
            refuse_run_keys(value, override)
            if name in chosen:
                chosen[name].append(override)
            continue
        refuse_run_keys(value, value)
        for overrides in chosen.values():
            overrides.append(value)
    return chosen


# The keys the runner sets for each run (appended last, so an override of them would be lost):
# the flag that chooses them instead.
RUN_KEYS = {"seed": "--seeds 0 1 2", "loss": "--losses standard aligned"}


def refuse_run_keys(value: str, override: str) -> None:
    key = override.split("=", 1)[0].lstrip("+~")
    if key in RUN_KEYS:
        example = RUN_KEYS[key]
        raise ConfigError(f"--override {value}: the reproduction sets {key} itself, once per "
                          f"run; choose them with {example.split()[0]} (e.g. {example}).")


def check_configs(specs: list[RunSpec]) -> None:
    """Compose each (workload, loss) once and check its settings as train() first does, check
    its extras are installed, and every run directory's record, before anything trains: a bad
    override fails in seconds rather than after hours of training."""
    from aligned.training.fit import check_evaluation_batches, check_input_kinds

    seen = set()
    for spec in specs:
        check_record(spec)  # a directory trained with other overrides
        if (spec.workload.name, spec.loss) in seen:
            continue
        seen.add((spec.workload.name, spec.loss))
        missing = missing_extras(list(spec.overrides))
        if missing:
            raise ConfigError(f"{spec.workload.name}: {missing}")
        try:
            cfg = compose_config("train", list(spec.overrides), spec.directory)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001  (Hydra's override and composition errors)
            raise ConfigError(f"{spec.workload.name} {spec.loss}: the train.py overrides "
                              f"{' '.join(spec.overrides)} do not compose: "
                              f"{str(error).splitlines()[0]}") from None
        try:
            check_settings(cfg, TRAIN_KEYS, TRAIN_SECTIONS)
            check_seed(cfg)
            check_input_kinds(cfg)
            check_evaluation_batches(cfg)
        except ConfigError as error:
            raise ConfigError(f"{spec.workload.name} {spec.loss}: {error}") from None


def check_numbers(args: argparse.Namespace, rounds: int) -> None:
    if rounds < 1:
        raise ConfigError(f"--benchmark-rounds must be at least 1, got {rounds}.")
    if not 0 < args.benchmark_seconds < math.inf:
        raise ConfigError(f"--benchmark-seconds must be a number of seconds above 0, got "
                          f"{args.benchmark_seconds}.")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}.")


def check_outputs(root: Path, out: Path) -> None:
    """The run directories' root and the report can be written (checked before the runs)."""
    for flag, path, directory in (("--root", root, True), ("--out", out, False)):
        problem = output_problem(path, directory)
        if problem:
            raise ConfigError(f"{flag} {path} {problem}.")


def default_report(scale: Scale, root: Path) -> Path:
    """The checkout's report (docs/REPRODUCTION.md) at a scale that has one, when this package
    runs from a checkout; else ``<root>/REPRODUCTION.md``."""
    if scale.default_report and CHECKOUT is not None:
        return CHECKOUT / scale.default_report
    if scale.default_report:
        log.info("Not run from a checkout of aligned (an installed copy): the report goes to "
                 "%s, not %s; --out chooses.", root / "REPRODUCTION.md", scale.default_report)
    return root / "REPRODUCTION.md"


def reproduce(argv: list[str] | None = None) -> Path:
    """Run the reproduction; the report's path."""
    started = time.perf_counter()
    args = parse(argv)
    scale = SCALES[args.scale]
    root = Path(args.root or f"outputs/reproduce/{scale.name}").expanduser().resolve()
    out = Path(args.out).expanduser() if args.out else default_report(scale, root)
    rounds = (scale.benchmark_rounds if args.benchmark_rounds is None
              else args.benchmark_rounds)
    check_numbers(args, rounds)
    check_outputs(root, out)
    specs = plan(args, scale, root)
    check_configs(specs)

    def done(index: int, run: RunResult) -> None:
        spec = specs[index]
        steps = ", ".join(f"{step} reused" if reused else f"{step} {run.timings[step + '_s']:.0f} s"
                          for step, reused in run.reused.items())
        print(f"[{index + 1}/{len(specs)}] {spec.workload.name} {spec.loss} seed {spec.seed}: "
              f"{steps}", flush=True)

    finished = execute_all(specs, rounds, args.benchmark_seconds, args.jobs, done)
    # Each workload's runs are kept beside the report, so that a report regenerated for some
    # workloads (--workloads) still holds the scale's others, as an earlier invocation made them.
    chosen = list(dict.fromkeys(spec.workload.name for spec in specs))
    stored = out.parent / STORED_RUNS
    for name in chosen:
        save_runs(stored / f"{name}.json", [run for run in finished if run.workload == name],
                  root)
    earlier = [run for name in scale.workloads if name not in chosen
               for run in load_runs(stored / f"{name}.json", root)]
    order = [*scale.workloads, *chosen]
    everything = sorted([*finished, *earlier], key=lambda run: order.index(run.workload))
    collected = Collected(everything, {name: WORKLOADS[name].title for name in order})
    claims = [claim(collected) for claim in claim_functions.CLAIMS]
    out.parent.mkdir(parents=True, exist_ok=True)
    provenance = Provenance(
        command=shlex.join(["python", "-m", "aligned.reproduce",
                            *(sys.argv[1:] if argv is None else argv)]),
        scale=scale.name, scale_description=scale.description, root=root,
        seeds=tuple(sorted({run.seed for run in everything})),
        wall_s=time.perf_counter() - started,
        trained=sum(not run.reused["train"] for run in finished),
        overrides={run.workload: tuple(run.overrides) for run in everything},
        stored=(shown(stored), sorted({run.workload for run in earlier})))
    write_report(out, collected, claims, provenance)
    for claim in claims:
        print(f"{claim.title}: {claim.verdict}")
    print(f"wrote {out} ({provenance.trained} of {len(finished)} runs trained, "
          f"{len(earlier)} read from {shown(stored)}, "
          f"{time.perf_counter() - started:.0f} s)")
    return out


def main(argv: list[str] | None = None) -> None:
    log_to_console()
    try:
        reproduce(argv)
    except ConfigError as error:
        print(f"Error: {user_message(error)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
