"""Layer-wise analysis of a trained checkpoint: accuracy per layer, COS/CKA, saturation.

    python evaluate.py ckpt_path=outputs/aligned/<run>/checkpoints/last.ckpt
    python evaluate.py ckpt_path=A.ckpt compare_to=B.ckpt     # both on the same figures
"""

import sys

import hydra
from omegaconf import DictConfig

import aligned.resolvers  # noqa: F401  (registers the configs' resolvers)
from aligned.config import ConfigError, user_message
from aligned.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        evaluation = evaluate(cfg)
    except ConfigError as error:
        print(f"Error: {user_message(error)}", file=sys.stderr)
        sys.exit(2)
    accuracy = evaluation["layer_accuracy"]
    print("layer accuracy (%): " + " ".join(f"{100 * a:.1f}" for a in accuracy))
    if "layer_perplexity" in evaluation:  # a causal LM
        print("layer perplexity: " + " ".join(f"{p:.3g}" for p in evaluation["layer_perplexity"]))
    print(f"wrote evaluation.json, report.md and figures to {cfg.run_dir}")


if __name__ == "__main__":
    main()
