"""The run's results: per-layer accuracies from the logged metrics, ``results.json``, a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aligned.training.json_files import write_json
from aligned.training.system import layer_key


def layer_values(
    logged: dict[str, float], split: str, num_layers: int, metric: str = "accuracy"
) -> list[float]:
    """A metric of layers 1..L (fractions) from a ``trainer.validate/test`` result dict."""
    return [float(logged[layer_key(split, layer, metric)]) for layer in range(1, num_layers + 1)]


def write_results(path: Path, results: dict[str, Any]) -> None:
    write_json(path, results, "results file")


def format_table(results: dict[str, Any]) -> str:
    """Plain-text table of the headline metric (%) per layer, val and test."""
    val, test = results["layer_accuracy"]["val"], results["layer_accuracy"]["test"]
    metric = results.get("metric", "accuracy")
    title = (
        f"Layer-wise {metric}: model={results['model']} data={results['data']} "
        f"loss={results['loss']} seed={results['seed']}"
    )
    lines = [title, f"{'layer':>5}  {'val':>6}  {'test':>6}   ({metric}, %)"]
    for layer, (v, t) in enumerate(zip(val, test, strict=True), start=1):
        lines.append(f"{layer:>5}  {100 * v:6.2f}  {100 * t:6.2f}")
    lines.append(f"train time {results['train_time_s']:.1f} s; checkpoint {results['checkpoint']}")
    return "\n".join(lines)
