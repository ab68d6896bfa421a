"""``report.md``: the key numbers of a layer-wise evaluation and its figures."""

from __future__ import annotations

from pathlib import Path


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def write_report(
    path: Path, summaries: dict[str, dict], figures: dict[str, Path],
    early_exit_matched: dict | None = None,
) -> None:
    first = next(iter(summaries.values()))
    tokens = all("layer_perplexity" in s for s in summaries.values())  # causal LMs
    lines = [
        "# Layer-wise evaluation",
        "",
        f"Split `{first['split']}`, {first['num_samples']} "
        f"{'next-token predictions' if tokens else 'samples'}, {first['num_layers']} layers "
        f"(1..L). Layer l's logits: the model's last-layer {'LM head' if tokens else 'classifier'} "
        "(shared head) applied after block l; for a multi-exit model, layer l's own "
        f"{'head' if tokens else 'classifier'}.",
        "",
        *(_token_lines(summaries) if tokens else []),
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
    columns = 4 if tokens else 3
    header = "| layer | " + " | ".join(
        f"{name} acc % | " + (f"{name} perplexity | " if tokens else "")
        + f"{name} COS(l,L) | {name} confidence" for name in summaries
    ) + " |"
    lines += [header, "|" + "---|" * (1 + columns * len(summaries))]
    for layer in range(max(s["num_layers"] for s in summaries.values())):
        cells = []
        for s in summaries.values():
            if layer >= s["num_layers"]:  # a shallower model
                cells += [""] * columns
                continue
            cells += [_pct(s["layer_accuracy"][layer]),
                      *([_perplexity(s["layer_perplexity"][layer])] if tokens else []),
                      f"{s['cos_to_last'][layer]:.3f}", f"{s['mean_confidence'][layer]:.3f}"]
        lines.append(f"| {layer + 1} | " + " | ".join(cells) + " |")
    if all("early_exit" in s for s in summaries.values()):
        lines += _early_exit_lines(summaries)
    if early_exit_matched:
        lines += _matched_lines(list(summaries), early_exit_matched)
    lines += _parameter_lines(summaries)
    lines += ["", "## Figures", ""]
    for name, figure in figures.items():
        lines += [f"![{name}]({figure.name})", ""]
    path.write_text("\n".join(lines))


def _perplexity(value: float) -> str:
    return f"{value:.4g}" if value < 1e6 else f"{value:.3e}"


def _token_lines(summaries: dict[str, dict]) -> list[str]:
    """A causal LM: what a sample is, the caps on the tokens, and perplexity."""
    lines = []
    for name, s in summaries.items():
        about = s["similarity_tokens"]
        cap = (f", a seeded subset of max_sequences={s['max_sequences']}"
               if s["max_sequences"] is not None else "")
        lines.append(
            f"- {name}: {s['num_samples']} tokens of "
            f"{s['num_sequences']} sequences{cap}; perplexity at layer L "
            f"{_perplexity(s['layer_perplexity'][-1])}; the head at every layer: "
            + ("final norm + LM head (the logit lens)" if s["final_norm"] else
               "the LM head alone on hidden layers (final_norm=false, the authors' GPT-2 code)")
            + f". COS over all {about['cos']} tokens, "
            f"CKA over a seeded sample of {about['cka']} (at most "
            f"{about['max_tokens_per_batch']} per batch)."
        )
    skipped = next((s["early_exit_skipped"] for s in summaries.values()
                    if "early_exit_skipped" in s), None)
    if skipped:
        lines.append(f"- Early exit: {skipped}.")
    return [*lines, ""]


def _early_exit_lines(summaries: dict[str, dict]) -> list[str]:
    first = next(iter(summaries.values()))["early_exit"]
    lines = [
        "", "## Early exit", "",
        f"Per rule, the threshold with the smallest mean exit layer on **val** whose val accuracy "
        f"is within {_pct(first['max_drop'])} points of full depth, measured on **test**. "
        f"Speed-up = L / mean exit layer; {first['flops_note']}.", "",
        "| model | rule | threshold | val acc % | test acc % | full-depth test acc % "
        "| mean exit layer | speed-up | rel. FLOPs | real inference = simulation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        early_exit = s["early_exit"]
        full = _pct(early_exit["full_depth_accuracy"]["test"])
        for rule, entry in early_exit["rules"].items():
            chosen = entry["chosen"]
            if chosen is None:
                lines.append(f"| {name} | {rule} | none within the drop | | | {full} | | | | |")
                continue
            real = entry.get("real")
            same = "not run" if real is None else (
                "yes" if real["equals_simulation"]
                else f"{100 * real['same_exit_layers']:.1f}% of exit layers")
            lines.append(
                f"| {name} | {rule} | {chosen['threshold']:.4g} | {_pct(chosen['val_accuracy'])} "
                f"| {_pct(chosen['accuracy'])} | {full} | {chosen['mean_exit_layer']:.2f} "
                f"| {chosen['speedup']:.2f} | {chosen['relative_flops']:.2f} | {same} |"
            )
    return lines


def _matched_lines(names: list[str], matched: dict) -> list[str]:
    first, second = names
    lines = [
        "", f"### {first} vs {second} at matched mean exit layer", "",
        f"Test accuracy of {first} minus {second}, in points, at every mean exit layer of "
        f"either curve where both are within {_pct(matched['region'])} points of their full "
        "depth (each curve's upper envelope, linear between its points).", "",
        "| rule | compared depths | min difference | max difference | max abs difference |",
        "|---|---|---|---|---|",
    ]
    for rule, entry in matched["rules"].items():
        if not entry["points"]:
            lines.append(f"| {rule} | none in the region | | | |")
            continue
        depths = [p["mean_exit_layer"] for p in entry["points"]]
        lines.append(
            f"| {rule} | {len(depths)} ({min(depths):.2f}–{max(depths):.2f}) "
            f"| {100 * entry['min_difference']:+.1f} | {100 * entry['max_difference']:+.1f} "
            f"| {100 * entry['max_abs_difference']:.1f} |"
        )
    return lines


def _parameter_lines(summaries: dict[str, dict]) -> list[str]:
    lines = ["", "## Parameters: one shared head vs a head per layer", "",
             "| model | model parameters | per-layer heads add | saving % (with biases) "
             "| saving % (weights only, the paper's convention) |", "|---|---|---|---|---|"]
    for name, s in summaries.items():
        p = s["parameters"]
        lines.append(f"| {name} | {p['model']:,} | {p['per_layer_heads_extra']:,} "
                     f"| {p['saving_percent']:.2f} | {p['saving_percent_weights_only']:.2f} |")
    return lines
