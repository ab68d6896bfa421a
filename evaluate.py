"""Layer-wise analysis of a trained checkpoint: accuracy per layer, COS/CKA, saturation.

    python evaluate.py ckpt_path=outputs/aligned/<run>/checkpoints/last.ckpt
    python evaluate.py ckpt_path=A.ckpt compare_to=B.ckpt     # both on the same figures
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import aligned.resolvers  # noqa: F401  (registers the configs' resolvers)
from aligned.config import ConfigError, user_message
from aligned.evaluation import evaluate
from aligned.extras import require_extras
from aligned.training import run_directory
from aligned.training.interruption import Interrupted, stop_on_signals


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        evaluation = evaluate(cfg)
        run_directory.commit()  # whole: an evaluation it replaces (overwrite=true) goes now
    except Interrupted as stop:
        stop.run_dir = Path(cfg.run_dir)
        raise
    except ConfigError as error:
        print(f"Error: {user_message(error)}", file=sys.stderr)
        sys.exit(2)
    finally:
        run_directory.release_all()  # puts back what an unfinished evaluation set aside
    accuracy = evaluation["layer_accuracy"]
    print("layer accuracy (%): " + " ".join(f"{100 * a:.1f}" for a in accuracy))
    if "layer_perplexity" in evaluation:  # a causal LM
        print("layer perplexity: " + " ".join(f"{p:.3g}" for p in evaluation["layer_perplexity"]))
    print(f"wrote evaluation.json, report.md and figures to {cfg.run_dir}")


def stopped(stop: Interrupted) -> str:
    where = f" to {stop.run_dir}" if stop.run_dir else ""  # None: stopped before main() ran
    return (f"Stopped by {stop.signal_name} before the evaluation finished: it wrote no "
            f"evaluation.json{where}. Run the command again.")


if __name__ == "__main__":
    require_extras(sys.argv[1:])  # an option whose extra is missing: its install command
    stop_on_signals()  # SIGTERM and Ctrl+C from here on: one line and 128 + the signal's number
    try:
        main()
    except Interrupted as stop:
        run_directory.release_all()  # stopped before main() could: as in main()
        print(stopped(stop), file=sys.stderr)
        sys.exit(stop.exit_code)
