"""Lays out a W&B project workspace that shows the method, for users who are online:

    python -m aligned.training.wandb_workspace --entity <you> [--project aligned] [--layers 12]

Sections: the metric against the layer (the best checkpoint's chart, a bar per layer and run,
every layer's validation curve in one panel instead of one panel per layer), training, and
evaluate.py's runs; runs grouped by their W&B group (a sweep each, see docs/workflow.md).
``--print`` writes the workspace's spec as JSON and touches no network; without it the
workspace is saved to W&B (a login is needed). Needs ``pip install -e '.[workspace]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from aligned.config import ConfigError
from aligned.training.loggers import wandb_logged_in

LINE_CHART = "wandb/line/v0"  # W&B's line preset, the one wandb.plot.line logs


def workspace_modules() -> tuple[Any, Any]:
    try:
        import wandb_workspaces.reports.v2 as reports
        import wandb_workspaces.workspaces as workspaces
    except ImportError:
        raise ConfigError("Laying out a W&B workspace needs the package wandb-workspaces: "
                          "pip install -e '.[workspace]'") from None
    return workspaces, reports


def table_chart(reports: Any, table_key: str, x: str, y: str, stroke: str | None,
                title: str) -> Any:
    """A line chart of the runs' logged tables ``table_key``, as wandb.plot.line draws one: a
    line per value of the column ``stroke``, or per run when None."""
    return reports.CustomChart(
        query={"summaryTable": {"tableKey": table_key}}, chart_name=LINE_CHART,
        chart_fields={"x": x, "y": y, "stroke": stroke}, chart_strings={"title": title})


def build_workspace(entity: str, project: str = "aligned", layers: int = 12,
                    metric: str = "acc", group: str | None = None,
                    name: str = "aligned: layer-wise") -> Any:
    """The workspace object (wandb_workspaces.workspaces.Workspace); nothing is sent."""
    if layers < 1:
        raise ConfigError(f"--layers must be at least 1 (the model's block count), got {layers}.")
    ws, wr = workspace_modules()
    step = "trainer/global_step"
    by_layer = ws.Section(name=f"{metric} by layer", is_open=True, panels=[
        table_chart(wr, "best/by_layer_table", "layer", metric, "split",
                    f"{metric} by layer, best checkpoint (val and test)"),
        wr.BarPlot(title=f"best checkpoint: test {metric} of each layer",
                   metrics=[wr.SummaryMetric(f"best/test_layers/{metric}_L{layer:02d}")
                            for layer in range(1, layers + 1)]),
        wr.LinePlot(title=f"val {metric} of every layer", x=step,
                    metric_regex=f"val_layers/{metric}_L[0-9]+"),
        table_chart(wr, "val_layers/by_layer_table", "layer", metric, None,
                    f"val {metric} by layer, latest epoch (a line per run)"),
    ])
    training = ws.Section(name="training", is_open=True, panels=[
        wr.LinePlot(title="train loss", x=step, y=["train/loss"]),
        wr.LinePlot(title=f"val {metric} (final layer)", x=step, y=[f"val/{metric}"]),
    ])
    evaluations = ws.Section(name="evaluate.py", is_open=False, panels=[
        table_chart(wr, "evaluate/by_layer_table", "layer", "accuracy", "model",
                    "accuracy by layer (evaluate.py)"),
        wr.BarPlot(title="final-layer accuracy and early saturation",
                   metrics=[wr.SummaryMetric("evaluate/final_accuracy"),
                            wr.SummaryMetric("evaluate/early_saturation")]),
    ])
    runs = ws.RunsetSettings(
        groupby=[ws.Metric("Group")],
        filters=[ws.Metric("Group") == group] if group else [],
        pinned_columns=[f"summary:best/test/{metric}", f"summary:best/val/{metric}"],
    )
    return ws.Workspace(entity=entity, project=project, name=name,
                        sections=[by_layer, training, evaluations], runset_settings=runs)


def workspace_spec(workspace: Any) -> dict[str, Any]:
    """The view W&B stores for a workspace, as JSON (what ``save`` sends)."""
    return workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", required=True, help="your W&B user or team")
    parser.add_argument("--project", default="aligned")
    parser.add_argument("--layers", type=int, default=12, help="blocks of the model (bar plot)")
    parser.add_argument("--metric", default="acc", help="metric key: acc, mcc, f1, ppl, ...")
    parser.add_argument("--group", help="show one sweep (its W&B group) only")
    parser.add_argument("--name", default="aligned: layer-wise", help="the workspace's name")
    parser.add_argument("--print", action="store_true", help="print the spec, save nothing")
    args = parser.parse_args(argv)
    try:
        workspace = build_workspace(args.entity, args.project, args.layers, args.metric,
                                    args.group, args.name)
        if args.print:
            print(json.dumps(workspace_spec(workspace), indent=1))
            return 0
        if not wandb_logged_in():
            raise ConfigError("Saving a workspace needs W&B's API: run `wandb login` first "
                              "(or pass --print to see the workspace without saving it).")
        saved = workspace.save()
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    print(f"Workspace saved: {saved.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
