"""Every JSON file the project writes is strict JSON (no bare Infinity or NaN, which JavaScript,
dashboards and jq misread), its non-finite values named and read back, and it records what ran
(a precision Lightning changed)."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
from conftest import OLD_CHECKPOINT, ROOT, compose_evaluate

from aligned.reproduce.collected import load_runs, save_runs
from aligned.reproduce.runs import RunResult
from aligned.training.json_files import json_text, read_json, write_json
from aligned.training.results import write_results
from aligned.training.sweep_summary import find_runs

INF, NAN = float("inf"), float("nan")
# Where the project's code lives; JSON is written through aligned.training.json_files alone.
SOURCES = [*sorted((ROOT / "src" / "aligned").rglob("*.py")),
           *sorted((ROOT / "benchmarks").glob("*.py")), ROOT / "train.py", ROOT / "evaluate.py"]
WRITER = ROOT / "src" / "aligned" / "training" / "json_files.py"
# json.dumps whose text goes to a hash or to the terminal, not into a file.
NOT_A_FILE = ("hashlib.sha256", "print")


def strict_loads(text: str):
    """JSON as a strict reader (JavaScript's JSON.parse) reads it: no Infinity, no NaN."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def same(a, b) -> bool:
    """Equal, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def results_with(perplexity: list[float]) -> dict:
    return {"model": "gpt2", "data": "text", "loss": "aligned", "seed": 0, "num_layers": 2,
            "layer_accuracy": {"val": [0.1, 0.2], "test": [0.1, 0.3]},
            "final_accuracy": {"val": 0.2, "test": 0.3}, "train_time_s": 1.0,
            "checkpoint": "/x/last.ckpt", "layer_metrics": {"perplexity": {"test": perplexity}}}


def test_non_finite_values_are_null_named_by_pointer_and_read_back(tmp_path):
    record = {"layer_perplexity": [12.5, INF], "a/b": {"~x": -INF}, "rows": [{"std": NAN}],
              "fine": 1.0}
    write_json(tmp_path / "record.json", record)
    written = strict_loads((tmp_path / "record.json").read_text())
    assert written["layer_perplexity"] == [12.5, None] and written["rows"] == [{"std": None}]
    assert written["non_finite"] == {"/layer_perplexity/1": "Infinity", "/a~1b/~0x": "-Infinity",
                                     "/rows/0/std": "NaN"}  # RFC 6901 pointers
    assert same(read_json(tmp_path / "record.json"), record)
    assert "non_finite" not in strict_loads(json_text({"fine": 1.0}))  # only when needed


def test_a_record_the_writer_cannot_name_its_values_in_is_refused():
    with pytest.raises(ValueError, match="cannot have its own 'non_finite' key"):
        json_text({"x": INF, "non_finite": []})
    with pytest.raises(TypeError, match="must be a dict"):
        json_text([INF])  # type: ignore[arg-type]


def test_an_edited_non_finite_entry_is_an_error_not_a_guess(tmp_path):
    (tmp_path / "edited.json").write_text('{"x": 3.0, "non_finite": {"/x": "Infinity"}}')
    with pytest.raises(ValueError, match="names /x = Infinity, which is not a null"):
        read_json(tmp_path / "edited.json")


def test_results_json_is_strict_and_the_sweep_summary_reads_its_values_back(tmp_path):
    results = results_with([40.0, INF])
    write_results(tmp_path / "job0" / "results.json", results)
    written = strict_loads((tmp_path / "job0" / "results.json").read_text())
    assert written["non_finite"] == {"/layer_metrics/perplexity/test/1": "Infinity"}
    (run,), unfinished = find_runs(tmp_path)
    assert same(run.results, results) and not unfinished


def test_stored_reproduction_runs_are_strict_and_load_as_they_were(tmp_path):
    run = RunResult("vit_digits", "aligned", 0, results_with([INF, 3.0]),
                    {"layer_perplexity": [NAN, 2.0]}, None, 0, tmp_path / "runs" / "seed0")
    stored = tmp_path / "stored" / "vit_digits.json"
    save_runs(stored, [run], tmp_path)
    assert sorted(strict_loads(stored.read_text())["non_finite"]) == [
        "/runs/0/evaluation/layer_perplexity/0", "/runs/0/results/layer_metrics/perplexity/test/0"]
    (loaded,) = load_runs(stored, tmp_path)
    assert same(loaded.results, run.results) and same(loaded.evaluation, run.evaluation)


def json_dumps_calls(path: Path) -> list[int]:
    """Lines of ``path`` where json.dump or json.dumps text may go into a file."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("dump", "dumps") and ast.unparse(node.func.value) == "json"):
            outer, consumers = node, []
            while outer in parents:
                outer = parents[outer]
                if isinstance(outer, ast.Call):
                    consumers.append(ast.unparse(outer.func))
            if not set(consumers) & set(NOT_A_FILE):
                lines.append(node.lineno)
    return lines


def test_every_json_file_is_written_through_the_strict_writer():
    found = {f"{path.relative_to(ROOT)}:{line}" for path in SOURCES if path != WRITER
             for line in json_dumps_calls(path)}
    assert not found, ("write JSON files with aligned.training.json_files.write_json (strict "
                       f"JSON, whole or not at all), not json.dump(s): {sorted(found)}")


@pytest.mark.slow
def test_evaluation_json_is_strict_and_records_the_precision_that_ran(tmp_path):
    """precision=16-mixed on a CPU runs in bf16 (Lightning's Fabric changes it): that is what
    evaluation.json says."""
    from aligned.evaluation import evaluate

    evaluation = evaluate(compose_evaluate([f"ckpt_path={OLD_CHECKPOINT}", "device=cpu",
                                            "precision=16-mixed"], tmp_path))
    written = strict_loads((tmp_path / "evaluation.json").read_text())
    assert written["precision"] == evaluation["precision"] == "bf16-mixed"


def test_a_precision_fabric_changes_is_recorded_as_it_runs():
    from aligned.placement import resolve_placement

    with pytest.warns(UserWarning, match="AMP with fp16 is not supported on CPU"):
        placement = resolve_placement("cpu", "16-mixed")
    assert placement.describe()["precision"] == "bf16-mixed"
