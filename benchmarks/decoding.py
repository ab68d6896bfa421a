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
4. ``--scored-tokens N``: each operating point that exits early on test is also scored by the
   decoder itself, teacher-forced on the first N test tokens under ``--kv`` (for ``copy``, the
   accuracy the offline figures leave out: later tokens see copied states).

Threads: ``--threads`` (default 1). On the shared 2-core machine, SmolLM2 decoded 7.0 tokens/s
with 1 thread and 1.0 with 2 (measured under a load average of ~5): each small op waits for a
busy core.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from aligned.config import ConfigError, user_message
from aligned.data.text import PadWithLabels, TextDataModule
from aligned.early_exit.decoding import KV_POLICIES, EarlyExitDecoder
from aligned.early_exit.offline import early_exit_summary, operating_point
from aligned.early_exit.rules import RULES, make_rule
from aligned.early_exit.signals import ExitSignals, collect_token_signals
from aligned.models.backbones.hf_decoder import HFDecoder


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


def time_configs(runs: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median seconds per round of each run, interleaved so that drifting load hits all."""
    for run in runs.values():
        run(warm_up=True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


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
    generated: dict[str, list[torch.Tensor]] = {}
    exit_layers: dict[str, list[torch.Tensor]] = {}

    def decode_run(label: str, decoder: EarlyExitDecoder):
        def go(warm_up: bool = False) -> None:
            if warm_up:
                decoder.generate(prompts[0], 2)
                return
            outputs = [decoder.generate(prompt, args.new_tokens) for prompt in prompts]
            generated[label] = [out.tokens[0] for out in outputs]
            exit_layers[label] = [out.exit_layers[0] for out in outputs]
        return go

    def hf_run(warm_up: bool = False) -> None:
        count = 2 if warm_up else args.new_tokens
        with torch.inference_mode():
            outputs = [backbone.model.generate(prompt, do_sample=False, max_new_tokens=count,
                                               min_new_tokens=count,
                                               pad_token_id=data.pad_token_id)
                       for prompt in (prompts[:1] if warm_up else prompts)]
        generated["hf generate"] = [out[0, -count:] for out in outputs]

    decoders = {label: EarlyExitDecoder(backbone, make_rule(point["rule"], point["threshold"]),
                                        args.kv) for label, point in points.items()}
    runs = {label: decode_run(label, decoder) for label, decoder in decoders.items()}
    runs["hf generate"] = hf_run
    started = time.perf_counter()
    seconds = time_configs(runs, args.rounds)
    timing_seconds = time.perf_counter() - started
    new_tokens = args.new_tokens * len(prompts)
    full_seconds = seconds["full depth"]

    rows = []
    for label, point in points.items():
        layers = torch.cat(exit_layers[label]).double()
        prefix = [common_prefix(a, b) / args.new_tokens
                  for a, b in zip(generated[label], generated["full depth"], strict=True)]
        row = {"label": label, **point,
               "tokens_per_s": new_tokens / seconds[label],
               "measured_speedup": full_seconds / seconds[label],
               "generation_mean_exit_layer": float(layers.mean()),
               "same_as_full_depth_prefix": statistics.mean(prefix)}
        if args.scored_tokens and (label == "full depth" or point["mean_exit_layer"] < num_layers):
            scored = decoder_accuracy(decoders[label], data, args.scored_tokens)
            # The offline simulation on the same tokens: the decoder's figure minus this one
            # is what the KV policy costs (0 up to round-off for recompute).
            same_tokens = test.rows(slice(0, scored["tokens"]))
            scored["offline_accuracy"] = operating_point(decoders[label].rule,
                                                        same_tokens)["accuracy"]
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
        "hf_generate_tokens_per_s": new_tokens / seconds["hf generate"],
        # the decoder with no exit against HF's own greedy decoding, token for token
        "full_depth_equals_hf_generate": all(
            torch.equal(a, b) for a, b in zip(generated["full depth"], generated["hf generate"],
                                              strict=True)),
        "seconds": {"load": loaded, "signals": signals_seconds, "timing": timing_seconds},
        "points": rows,
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
            f"{row['tokens_per_s']:>8.2f}{row['measured_speedup']:>9.2f}"
            f"{row['generation_mean_exit_layer']:>9.2f}{row['same_as_full_depth_prefix']:>6.2f}"
            f"{scored:>20}")
    lines.append(f"HF generate (full depth): {results['hf_generate_tokens_per_s']:.2f} tok/s, "
                 f"the same tokens as full depth: {results['full_depth_equals_hf_generate']}")
    seconds = results["seconds"]
    lines.append(f"load {seconds['load']:.1f} s, signals {seconds['signals']:.1f} s, timing "
                 f"{seconds['timing']:.1f} s")
    return "\n".join(lines)


def positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


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
    parser.add_argument("--cache-dir", default="~/.cache/aligned/text")
    parser.add_argument("--max-length", type=positive(int), default=128)
    parser.add_argument("--val-tokens", type=positive(int), default=1000)
    parser.add_argument("--test-tokens", type=positive(int), default=1000)
    parser.add_argument("--batch-size", type=positive(int), default=4)
    parser.add_argument("--max-drops", type=drops, default=[0.01])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--kv", default="recompute", choices=KV_POLICIES)
    parser.add_argument("--prompts", type=positive(int), default=3)
    parser.add_argument("--prompt-length", type=positive(int), default=32)
    parser.add_argument("--new-tokens", type=positive(int), default=24)
    parser.add_argument("--rounds", type=positive(int), default=1)
    parser.add_argument("--scored-tokens", type=int, default=0)
    parser.add_argument("--threads", type=positive(int), default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        results = run(args)
    except ConfigError as error:
        sys.exit(user_message(error))
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
