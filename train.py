"""Train a transformer whose one classifier works after every layer.

    python train.py                                  # ViT, digits, aligned loss
    python train.py loss=standard                    # baseline: last layer only
    python train.py -m loss=standard,aligned seed=0,1,2
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import aligned.resolvers  # noqa: F401  (registers ${minilm_path:} etc. before Hydra composes)
from aligned.config import ConfigError, user_message
from aligned.training.fit import train

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # In a sweep, a failed job must not stop the others (SystemExit would end the launcher) nor
    # the summary of the finished ones (Hydra re-raises job errors before its end callbacks);
    # the summary lists the failed jobs and the sweep exits with 1.
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        results = train(cfg)
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
    return results["final_accuracy"]["val"]


if __name__ == "__main__":
    main()
