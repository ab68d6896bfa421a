"""Train a transformer whose one classifier works after every layer.

    python train.py                                  # ViT, digits, aligned loss
    python train.py loss=standard                    # baseline: last layer only
    python train.py -m loss=standard,aligned seed=0,1,2
"""

import sys

import hydra
from omegaconf import DictConfig

import aligned.resolvers  # noqa: F401  (registers ${minilm_path:} etc. before Hydra composes)
from aligned.config import ConfigError
from aligned.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        results = train(cfg)
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
    return results["final_accuracy"]["val"]


if __name__ == "__main__":
    main()
