"""The W&B workspace command, built and serialised offline (saving it needs an account)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("wandb_workspaces", reason="pip install -e .[dev] installs wandb-workspaces")

from aligned.config import ConfigError  # noqa: E402
from aligned.training.wandb_workspace import build_workspace, main, workspace_spec  # noqa: E402


def panels_of(spec: dict) -> dict[str, list[dict]]:
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    return {section["name"]: section["panels"] for section in sections}


def table_key(panel: dict) -> str:
    (query,) = panel["config"]["userQuery"]["queryFields"]
    (table,) = [field for field in query["fields"] if field["name"] == "summaryTable"]
    return table["args"][0]["value"]


def test_workspace_lays_out_the_layer_panels_and_groups_by_sweep():
    spec = workspace_spec(build_workspace("someone", layers=3, group="2026-01-02_03-04-05_abc"))
    assert (spec["entity"], spec["project"]) == ("someone", "aligned")
    panels = panels_of(spec)
    assert list(panels) == ["acc by layer", "training", "evaluate.py"]
    chart, bars, curves, latest = panels["acc by layer"]
    # The best checkpoint's metric against the layer, as the run logged it: a line per split.
    assert chart["viewType"] == "Vega2" and chart["config"]["panelDefId"] == "wandb/line/v0"
    assert table_key(chart) == "best/by_layer_table"
    assert chart["config"]["fieldSettings"] == {"x": "layer", "y": "acc", "stroke": "split"}
    assert bars["config"]["metrics"] == [
        f"summary_metrics.best/test_layers/acc_L{layer:02d}" for layer in (1, 2, 3)]
    # Every layer's curve in one panel (not one panel per layer), matched by a pattern.
    assert curves["config"]["metricRegex"] == "val_layers/acc_L[0-9]+"
    assert curves["config"]["useMetricRegex"] is True
    assert table_key(latest) == "val_layers/by_layer_table"
    assert table_key(panels["evaluate.py"][0]) == "evaluate/by_layer_table"
    settings = spec["spec"]["section"]["settings"]
    assert settings["shouldAutoGeneratePanels"] is False  # no automatic panel per logged key
    (runs,) = spec["spec"]["section"]["runSets"]
    assert runs["grouping"] == [{"section": "run", "name": "group"}]
    assert runs["filters"]["filters"] == [{"key": {"section": "run", "name": "group"}, "op": "=",
                                           "value": "2026-01-02_03-04-05_abc", "disabled": False}]


@pytest.mark.slow
def test_workspace_command_prints_without_network_and_refuses_bad_input(capsys, monkeypatch):
    assert main(["--entity", "someone", "--metric", "mcc", "--layers", "2", "--print"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert "mcc by layer" in panels_of(spec)
    with pytest.raises(ConfigError, match="--layers must be at least 1"):
        build_workspace("someone", layers=0)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.netrc: not logged in
    assert main(["--entity", "someone"]) == 2
    assert "run `wandb login` first" in capsys.readouterr().err
