"""``report.md``: the key numbers of a layer-wise evaluation and its figures."""

from __future__ import annotations

from pathlib import Path


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def write_report(path: Path, summaries: dict[str, dict], figures: dict[str, Path]) -> None:
    first = next(iter(summaries.values()))
    lines = [
        "# Layer-wise evaluation",
        "",
        f"Split `{first['split']}`, {first['num_samples']} samples, {first['num_layers']} layers "
        "(1..L). The model's last-layer classifier (shared head) is applied after every block.",
        "",
        "| model | final acc % | mean acc L1..L-1 % | minimal depth | early saturation % "
        "| monotone | corr(COS(l,L), confidence) | Spearman(COS, CKA) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        accuracy = s["layer_accuracy"]
        hidden = sum(accuracy[:-1]) / max(1, len(accuracy) - 1)
        lines.append(
            f"| {name} | {_pct(accuracy[-1])} | {_pct(hidden)} | {s['minimal_depth']['layer']} "
            f"(ε={s['minimal_depth']['epsilon']}) | {_pct(s['saturation']['early_fraction'])} "
            f"| {s['monotone']['value']} | {s['cos_confidence_correlation']['pearson']:.3f} "
            f"| {s['cos_cka_correlation']['spearman']:.3f} |"
        )
    lines += ["", "## Per layer", ""]
    header = "| layer | " + " | ".join(
        f"{name} acc % | {name} COS(l,L) | {name} confidence" for name in summaries
    ) + " |"
    lines += [header, "|" + "---|" * (1 + 3 * len(summaries))]
    for layer in range(first["num_layers"]):
        cells = []
        for s in summaries.values():
            cells += [_pct(s["layer_accuracy"][layer]), f"{s['cos_to_last'][layer]:.3f}",
                      f"{s['mean_confidence'][layer]:.3f}"]
        lines.append(f"| {layer + 1} | " + " | ".join(cells) + " |")
    lines += ["", "## Figures", ""]
    for name, figure in figures.items():
        lines += [f"![{name}]({figure.name})", ""]
    path.write_text("\n".join(lines))
