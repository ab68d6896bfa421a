"""Train a transformer whose one classifier works after every layer.

    python train.py                                  # ViT, digits, aligned loss
    python train.py loss=standard                    # baseline: last layer only
    python train.py -m loss=standard,aligned seed=0,1,2
    python train.py hparams_search=optuna_lr         # an Optuna search of optim.lr
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import aligned.resolvers  # noqa: F401  (registers ${minilm_path:} etc. before Hydra composes)
from aligned.config import ConfigError, user_message
from aligned.extras import require_extras
from aligned.training import interruption, train
from aligned.training.interruption import Interrupted, stop_on_signals
from aligned.training.sweep_ranks import job_command, start_sweep_job
from aligned.training.time_limit import TimeLimitReached

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # In a sweep, a failed job must not stop the others (SystemExit would end the launcher) nor
    # the summary of the finished ones (Hydra re-raises job errors before its end callbacks);
    # the summary lists the failed jobs and the sweep exits with 1. The value returned is the
    # objective of a search (hparams_search=optuna_lr); a failed job returns None, which the
    # Optuna sweeper tells Optuna as a failed trial (a NaN would make Optuna 2 raise inside it).
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    stop_on_signals()
    if interruption.received():  # an earlier job of this sweep was stopped: run no more
        print(f"Not run: the sweep was {interruption.received()}.", file=sys.stderr)
        return None
    if sweeping:  # as the first job; DDP ranks it starts run it alone (training.sweep_ranks)
        start_sweep_job(HydraConfig.get().runtime.output_dir)
    try:
        results = train(cfg)
    except (Interrupted, TimeLimitReached) as stop:
        print(stop.message(own_command()), file=sys.stderr)
        if sweeping:
            return None  # the summary of the finished jobs is written; the sweep exits non-zero
        sys.exit(stop.exit_code)
    except ConfigError as error:
        print(f"Error: {user_message(error)}", file=sys.stderr)
        if sweeping:
            return None
        sys.exit(2)
    except Exception:
        if not sweeping:
            raise
        log.exception("This job failed; the sweep goes on.")
        return None
    return results["final_accuracy"]["val"] if results else None  # None: fast_dev_run


def own_command() -> str:
    """This job's command line without what a resume sets itself."""
    kept = [o for o in HydraConfig.get().overrides.task
            if not o.lstrip("+~").startswith(("resume=", "overwrite=", "hydra."))]
    return " ".join(["python train.py", *kept])


if __name__ == "__main__":
    sys.argv = job_command(sys.argv)  # a DDP rank > 0 of a sweep job: that job alone
    require_extras(sys.argv[1:])  # an option whose extra is missing: its install command
    main()
