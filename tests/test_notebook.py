"""notebooks/layerwise_analysis.ipynb: stored without outputs, and runs on a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, TINY, compose_train

from aligned.training.fit import train
from aligned.training.sweep_summary import summarize_sweep

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = ROOT / "notebooks" / "layerwise_analysis.ipynb"


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "clear the notebook's outputs"


def evaluation_summary(loss: str, shift: float) -> dict:
    """``evaluation.json``'s numbers for a 2-layer model, in evaluate.py's format."""
    return {
        "names": {"model": "vit", "data": "digits", "loss": loss},
        "num_samples": 4, "num_layers": 2,
        "layer_accuracy": [0.5 + shift, 0.75],
        "similarity": {"cos": [[1.0, 0.6 + shift], [0.6 + shift, 1.0]],
                       "cka": [[1.0, 0.7], [0.7, 1.0]]},
        "cos_to_last": [0.6 + shift, 1.0],
        "mean_confidence": [0.4 + shift, 0.8],
        "saturation": {"histogram": [1, 3], "early_fraction": 0.25, "mean_layer": 1.75},
        "minimal_depth": {"epsilon": 0.01, "layer": 2},
        "monotone": {"tolerance": 0.005, "value": True},
    }


@pytest.fixture(scope="module")
def tiny_outputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("notebook")
    train(compose_train(TINY, root / "sweep" / "run"))
    summarize_sweep(root / "sweep")  # a one-run sweep: the real summary.csv format
    evaluation = {**evaluation_summary("aligned", 0.2), "compare_to": evaluation_summary(
        "standard", 0.0)}
    (root / "eval").mkdir()
    (root / "eval" / "evaluation.json").write_text(json.dumps(evaluation))
    return {"run": root / "sweep" / "run", "eval": root / "eval",
            "summary": root / "sweep" / "summary.csv"}


def figures(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "optional, num_figures",
    # run accuracy; sweep; COS/CKA heatmaps, COS(l, L), confidence, saturation
    [(("eval", "summary"), 6), ((), 1)],
    ids=["with-evaluation-and-sweep", "run-only"],
)
def test_notebook_runs_on_a_tiny_run(tiny_outputs, monkeypatch, optional, num_figures):
    monkeypatch.setenv("ALIGNED_RUN_DIR", str(tiny_outputs["run"]))
    for name, variable in (("eval", "ALIGNED_EVAL_DIR"), ("summary", "ALIGNED_SWEEP_SUMMARY")):
        if name in optional:
            monkeypatch.setenv(variable, str(tiny_outputs[name]))
        else:
            monkeypatch.delenv(variable, raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # As Jupyter would run it: from notebooks/; a failing cell raises CellExecutionError.
    nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    assert figures(notebook) == num_figures
