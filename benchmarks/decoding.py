"""Early-exit greedy decoding of a causal LM: measured tokens/s against full depth, and
next-token accuracy at each exit rule's operating point.

    python benchmarks/decoding.py --model smollm2 [--source bbc_news] [--json out.json]
    python benchmarks/decoding.py --model <save_pretrained dir or .gguf> --max-drops 0.01,0.1

1. Held-out text: ``data=text``'s val and test documents (``--source``; each cut to its first
   ``--max-length`` tokens), tokenised by the model's tokenizer.
2. Offline (``aligned.early_exit.offline``): per-token signals of every layer on the
   first ``--val-tokens`` / ``--test-tokens`` tokens; per rule and per ``--max-drops`` value,
   the operating point with the smallest val mean exit layer within that drop of full-depth val
   next-token accuracy; its teacher-forced test accuracy (exact for ``kv=recompute``).
3. Timing: greedy decoding of ``--new-tokens`` after each of ``--prompts`` test prompts (the
   first ``--prompt-length`` tokens of test documents), batch 1, for full depth (the same
   decoder with no exit) and each operating point, the configurations interleaved in
   ``--rounds`` rounds (median round reported), after one warm-up each; Hugging Face's
   ``generate`` beside them shows what the block-by-block path itself costs.
4. ``--speculative``: lossless self-speculative decoding (``aligned.early_exit.speculative``):
   the exit layer E and draft length d chosen on val (``speculation_plan``: layer E's agreement
   runs with layer L, and the block and head costs measured here), a grid around them, and
   Hugging Face's ``generate(assistant_early_exit=E, num_assistant_tokens=d)`` on the same
   model (an exported checkpoint: ``python -m aligned.export``), timed in the same rounds.
5. ``--scored-tokens N``: each operating point that exits early on test is also scored by the
   decoder itself, teacher-forced on the first N test tokens under ``--kv`` (for ``copy``, the
   accuracy the offline figures leave out: later tokens see copied states).

Threads: ``--threads`` (default 1). On the shared 2-core machine, SmolLM2 decoded 7.0 tokens/s
with 1 thread and 1.0 with 2 (measured under a load average of ~5): each small op waits for a
busy core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch

from aligned.arguments import non_negative_int, output_directory, output_file, positive_int
from aligned.config import ConfigError, user_message
from aligned.data.text import PadWithLabels, TextDataModule
from aligned.early_exit.decoding import KV_POLICIES, EarlyExitDecoder
from aligned.early_exit.decoding_comparison import (
    FULL_DEPTH,
    DecodingComparison,
    add_speculative,
    hf_greedy,
    speculative_rows,
)
from aligned.early_exit.offline import early_exit_summary, operating_point
from aligned.early_exit.rules import RULES, make_rule
from aligned.early_exit.signals import ExitSignals, collect_token_signals
from aligned.models.backbones.hf_decoder import HFDecoder
from aligned.training.json_files import write_json


def model_path(name: str) -> str:
    if name == "smollm2":
        from aligned.resolvers import smollm2_path

        return smollm2_path()
    return name


def split_signals(backbone: HFDecoder, data: TextDataModule, split: str, tokens: int,
                  batch_size: int) -> ExitSignals:
    loader = torch.utils.data.DataLoader(data.splits[split], batch_size=batch_size,
                                         collate_fn=PadWithLabels(data.pad_token_id))
    return collect_token_signals(backbone, loader, max_tokens=tokens)


def prompts_of(data: TextDataModule, count: int, length: int) -> list[torch.Tensor]:
    """The first ``length`` tokens of the first ``count`` test documents that long."""
    chosen = [doc[:length].long()[None] for doc in data.splits["test"] if len(doc) >= length]
    if len(chosen) < count:
        raise ConfigError(f"Only {len(chosen)} test documents have {length} tokens; ask for "
                          "fewer --prompts or a shorter --prompt-length.")
    return chosen[:count]


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    differ = (a != b).nonzero()
    return int(differ[0]) if len(differ) else len(a)


def decoder_accuracy(decoder: EarlyExitDecoder, data: TextDataModule, tokens: int
                     ) -> dict[str, float]:
    """Teacher-forced next-token accuracy of the decoder itself on the first ``tokens`` test
    tokens (documents one at a time, batch 1)."""
    correct, exits, count = 0, 0.0, 0
    for doc in data.splits["test"]:
        if count >= tokens:
            break
        doc = doc[: tokens - count + 1].long()
        decoded = decoder.teacher_forced(doc[None])
        correct += int((decoded.tokens[0, :-1] == doc[1:]).sum())
        exits += float(decoded.exit_layers[0, :-1].double().sum())
        count += len(doc) - 1
    return {"accuracy": correct / count, "mean_exit_layer": exits / count, "tokens": count}


def operating_points(summary_by_drop: dict[float, dict], num_layers: int) -> dict[str, dict]:
    """The configurations to time, keyed by a label: full depth, then each distinct
    (rule, threshold) chosen at some max drop."""
    points = {"full depth": {"rule": "budget", "threshold": float(num_layers), "max_drops": []}}
    for drop, summary in summary_by_drop.items():
        for name, entry in summary["rules"].items():
            if entry["chosen"] is None:
                continue
            threshold = entry["chosen"]["threshold"]
            label = ("full depth" if name == "budget" and threshold >= num_layers
                     else f"{name} {threshold:g}")
            point = points.setdefault(label, {"rule": name, **entry["chosen"], "max_drops": []})
            point["max_drops"].append(drop)
    return points


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.scored_tokens > args.test_tokens:
        raise ConfigError(f"--scored-tokens {args.scored_tokens} is more than --test-tokens "
                          f"{args.test_tokens}; the offline figure on the same tokens needs them.")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = model_path(args.model)
    started = time.perf_counter()
    backbone = HFDecoder(path).eval()
    data = TextDataModule(tokenizer=path, source=args.source, max_length=args.max_length,
                          cache_dir=args.cache_dir)
    data.setup()
    loaded = time.perf_counter() - started
    num_layers = backbone.num_layers

    started = time.perf_counter()
    val = split_signals(backbone, data, "val", args.val_tokens, args.batch_size)
    test = split_signals(backbone, data, "test", args.test_tokens, args.batch_size)
    signals_seconds = time.perf_counter() - started
    summaries = {drop: early_exit_summary(val, test, drop, args.rules) for drop in args.max_drops}
    points = operating_points(summaries, num_layers)

    prompts = prompts_of(data, args.prompts, args.prompt_length)
    decoders = {label: EarlyExitDecoder(backbone, make_rule(point["rule"], point["threshold"]),
                                        args.kv) for label, point in points.items()}
    comparison = DecodingComparison(prompts, args.new_tokens)  # "full depth" first: the baseline
    for label, decoder in decoders.items():
        comparison.add(label, decoder.generate)
    comparison.add("hf generate", hf_greedy(backbone.model, data.pad_token_id))
    plans, notes = [], {}
    if args.speculative:
        plans, notes = add_speculative(comparison, backbone, val, args.max_draft,
                                       data.pad_token_id)
    started = time.perf_counter()
    comparison.time(args.rounds)
    timing_seconds = time.perf_counter() - started
    generated = comparison.generated

    rows = []
    for label, point in points.items():
        layers = torch.cat([result.exit_layers[0] for result in comparison.results[label]])
        prefix = [common_prefix(a, b) / args.new_tokens
                  for a, b in zip(generated[label], generated[FULL_DEPTH], strict=True)]
        # the offline summary's "speedup" is predicted (L / mean exit); the row's, measured
        row = {"label": label, **point, "predicted_speedup": point.get("speedup"),
               **comparison.row(label),
               "generation_mean_exit_layer": float(layers.double().mean()),
               "same_as_full_depth_prefix": statistics.mean(prefix)}
        if args.scored_tokens and (label == FULL_DEPTH or point["mean_exit_layer"] < num_layers):
            scored = decoder_accuracy(decoders[label], data, args.scored_tokens)
            # The offline simulation on the same tokens: the decoder's figure minus this one
            # is what the KV policy costs (0 up to round-off for recompute).
            scored_signals = test.rows(slice(0, scored["tokens"]))
            scored["offline_accuracy"] = operating_point(decoders[label].rule,
                                                        scored_signals)["accuracy"]
            row["decoder_teacher_forced"] = scored
        rows.append(row)
    full_offline = summaries[args.max_drops[0]]["full_depth_accuracy"]
    rows[0].update(val_accuracy=full_offline["val"], accuracy=full_offline["test"],
                   mean_exit_layer=float(num_layers), val_mean_exit_layer=float(num_layers),
                   agreement=1.0, mean_head_calls=1.0)
    return {
        "model": args.model, "source": args.source, "kv": args.kv, "threads": args.threads,
        "num_layers": num_layers, "max_drops": args.max_drops,
        "prompts": len(prompts), "prompt_length": args.prompt_length,
        "new_tokens": args.new_tokens, "rounds": args.rounds,
        "hf_generate_tokens_per_s": comparison.row("hf generate")["tokens_per_s"],
        # the decoder with no exit against HF's own greedy decoding, token for token
        "full_depth_equals_hf_generate": comparison.row("hf generate")["identical_to_full_depth"],
        "seconds": {"load": loaded, "signals": signals_seconds, "timing": timing_seconds},
        "points": rows,
        "speculative": speculative_rows(comparison, plans, test, notes) if plans else [],
        "piece_costs": notes.get("piece_costs"),
        "offline": {str(drop): summary for drop, summary in summaries.items()},
    }


def report(results: dict[str, Any]) -> str:
    lines = [f"{results['model']} on {results['source']}, kv={results['kv']}, "
             f"{results['threads']} thread(s); {results['prompts']} prompts x "
             f"{results['new_tokens']} new tokens, median of {results['rounds']} rounds",
             f"{'point':<22}{'drops':>10}{'val acc':>9}{'test acc':>9}{'exit':>7}{'heads':>7}"
             f"{'tok/s':>8}{'speed-up':>9}{'gen exit':>9}{'same':>6}{'decoder/offline acc':>20}"]
    for row in results["points"]:
        drops = ",".join(f"{d:g}" for d in row["max_drops"]) or "-"
        scored = row.get("decoder_teacher_forced")
        scored = f"{scored['accuracy']:.4f}/{scored['offline_accuracy']:.4f}" if scored else "-"
        lines.append(
            f"{row['label']:<22}{drops:>10}{row['val_accuracy']:>9.4f}{row['accuracy']:>9.4f}"
            f"{row['mean_exit_layer']:>7.2f}{row.get('mean_head_calls', 1.0):>7.2f}"
            f"{row['tokens_per_s']:>8.2f}{row['speedup']:>9.2f}"
            f"{row['generation_mean_exit_layer']:>9.2f}{row['same_as_full_depth_prefix']:>6.2f}"
            f"{scored:>20}")
    if results["speculative"]:
        lines.append(f"{'lossless':<30}{'E':>3}{'d':>3}{'tok/s':>8}{'speed-up':>9}"
                     f"{'identical':>10}{'accepted':>9}{'tok/ver':>8}{'val':>6}{'test':>6}"
                     f"{'predicted':>10}")
    for row in results["speculative"]:
        known = "accepted_per_verification" in row
        if "error" in row:
            lines.append(f"{row['label']:<30}{row['exit_layer']:>3}{row['draft_tokens']:>3}  "
                         f"failed: {row['error'][:200]}")
            continue
        lines.append(
            f"{row['label']:<30}{row['exit_layer']:>3}{row['draft_tokens']:>3}"
            f"{row['tokens_per_s']:>8.2f}{row['speedup']:>9.2f}"
            f"{str(row['identical_to_full_depth']):>10}"
            + (f"{row['accepted_per_verification']:>9.2f}{row['tokens_per_verification']:>8.2f}"
               f"{row['val_tokens_per_verification']:>6.2f}"
               f"{row['test_tokens_per_verification']:>6.2f}{row['predicted_speedup']:>10.2f}"
               if known else ""))
    lines.append(f"HF generate (full depth): {results['hf_generate_tokens_per_s']:.2f} tok/s, "
                 f"the same tokens as full depth: {results['full_depth_equals_hf_generate']}")
    seconds = results["seconds"]
    lines.append(f"load {seconds['load']:.1f} s, signals {seconds['signals']:.1f} s, timing "
                 f"{seconds['timing']:.1f} s")
    return "\n".join(lines)


def drops(text: str) -> list[float]:
    values = [float(part) for part in text.split(",")]
    if any(not 0 <= value <= 1 for value in values):
        raise argparse.ArgumentTypeError(f"accuracy drops are fractions in [0, 1], got {text}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2",
                        help="smollm2, a save_pretrained directory, a .gguf file or a hub id")
    parser.add_argument("--source", default="bbc_news", help="data.source of data=text")
    parser.add_argument("--cache-dir", type=output_directory, default="~/.cache/aligned/text")
    parser.add_argument("--max-length", type=positive_int, default=128)
    parser.add_argument("--val-tokens", type=positive_int, default=1000)
    parser.add_argument("--test-tokens", type=positive_int, default=1000)
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--max-drops", type=drops, default=[0.01])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--kv", default="recompute", choices=KV_POLICIES)
    parser.add_argument("--prompts", type=positive_int, default=3)
    parser.add_argument("--prompt-length", type=positive_int, default=32)
    parser.add_argument("--new-tokens", type=positive_int, default=24)
    parser.add_argument("--rounds", type=positive_int, default=1)
    parser.add_argument("--speculative", action="store_true",
                        help="also time lossless self-speculative decoding and HF's "
                             "assistant_early_exit")
    parser.add_argument("--max-draft", type=positive_int, default=8,
                        help="the longest draft the --speculative plan considers")
    parser.add_argument("--scored-tokens", type=non_negative_int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--json", type=output_file, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.prompt_length > args.max_length:  # documents are cut to --max-length tokens
        parser.error(f"--prompt-length {args.prompt_length} is more than --max-length "
                     f"{args.max_length}, the longest a test document is read.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        results = run(args)
    except ConfigError as error:
        print(f"Error: {user_message(error)}", file=sys.stderr)  # as train.py and evaluate.py
        sys.exit(2)
    print(report(results))
    if args.json is not None:
        write_json(args.json, results, "--json file")
    return results


if __name__ == "__main__":
    main()
