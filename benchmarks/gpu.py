"""GPU figures at the paper's scale with randomly initialised models (no weights, no data).

    python benchmarks/gpu.py [--device auto] [--precision bf16-mixed] [--json figures.json]
    python benchmarks/gpu.py --tiny --device cpu        # the same code at toy sizes (the test)

Models: DeiT-S-sized (224 px, patch 16, 12 blocks, width 384, 1,000 classes) and BERT-base-sized
(12 layers, width 768, 128 tokens, 2 classes), both random. For each it prints:

- training throughput (samples/s) of loss=standard / aligned / multiexit: forward through every
  layer, the objective, backward and an AdamW step, under the chosen precision's autocast;
- the layer-wise evaluation pass (``run_layerwise_pass``: every layer's logits, COS, CKA, class
  means) over --eval-samples random samples, in seconds;
- early exit at each --batch-sizes against the full forward: measured speed-up, per batch and
  pooled (``aligned.early_exit.pooled``), beside the predicted L / mean exit layer.

A random model's confidences say nothing, so exits follow a stated synthetic pattern
(--exit-pattern: the fraction of samples leaving at each layer; the default is stated in the
output) through ``PatternRule``, which reads each layer's logits as the confidence rule does, so
the head's cost at every layer is paid as in a real rule. Timings: warm-up, then interleaved
rounds, median round, the device synchronised before each clock read.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from aligned.analysis.layerwise_pass import run_layerwise_pass
from aligned.arguments import output_file, positive_int, positive_seconds
from aligned.config import ConfigError, user_message
from aligned.early_exit.inference import EarlyExitClassifier
from aligned.early_exit.pooled import PooledEarlyExit
from aligned.early_exit.rules import ExitRule
from aligned.early_exit.timing import full_forward, time_rounds
from aligned.placement import Placement, resolve_placement
from aligned.training.json_files import write_json
from aligned.training.system import LayerwiseClassifier

LOSSES = {"standard": "aligned.models.objectives.StandardObjective",
          "aligned": "aligned.models.objectives.AlignedObjective",
          "multiexit": "aligned.models.objectives.MultiExitObjective"}
# Stated synthetic exit pattern for 12 layers (mean exit layer 5.02, predicted 2.39x): most
# samples leave in the first third, a tail runs to the end, as confident models exit.
DEFAULT_PATTERN = [0.0, 0.05, 0.25, 0.25, 0.15, 0.1, 0.05, 0.04, 0.03, 0.03, 0.02, 0.03]


@dataclass(repr=False)
class PatternRule(ExitRule):
    """Samples leave at layers that follow ``pattern`` (fractions per layer, 1..L): the k-th
    sample the rule sees takes entry k of a fixed shuffled cycle of 1,000 exit layers in those
    proportions. It reads the head's confidence as the confidence rule does."""

    pattern: torch.Tensor
    threshold: float = 0.0
    name: ClassVar[str] = "pattern"
    bounds: ClassVar[tuple[float, float]] = (0.0, 0.0)
    cycle_length: ClassVar[int] = 1000

    def __post_init__(self) -> None:
        counts = (self.pattern * self.cycle_length).round().long()
        layers = torch.repeat_interleave(torch.arange(1, len(counts) + 1), counts)
        self.cycle = layers[torch.randperm(len(layers), generator=torch.Generator().manual_seed(0))]
        self.seen = 0

    @property
    def mean_exit_layer(self) -> float:
        return float(self.cycle.double().mean())

    def initial_state(self, batch_size, device):
        positions = torch.arange(self.seen, self.seen + batch_size) % len(self.cycle)
        self.seen += batch_size
        return {"exit_at": self.cycle[positions].to(device)}

    def exits(self, layer, signals, state):
        signals.confidence  # noqa: B018  (the confidence rule's work at this layer)
        return state["exit_at"] <= layer, state


@dataclass
class Workload:
    name: str
    model: dict  # the backbone config, as conf/model/*.yaml gives it
    make_inputs: Any  # batch size -> model inputs
    num_classes: int


def workloads(tiny: bool, scratch: Path) -> list[Workload]:
    """DeiT-S- and BERT-base-sized random models (toy sizes with ``tiny``)."""
    from transformers import BertConfig

    size = 32 if tiny else 224
    vit = {"_target_": "aligned.models.backbones.timm_vit.TimmViT",
           "name": "deit_small_patch16_224", "num_classes": 10 if tiny else 1000,
           "img_size": size, "in_chans": 3, "pretrained": False}
    if tiny:
        vit.update(patch_size=8, embed_dim=32, depth=2, num_heads=2)
    bert_config = (BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64) if tiny
                   else BertConfig())  # BertConfig's defaults are bert-base's
    bert_config.save_pretrained(scratch / "bert")
    bert = {"_target_": "aligned.models.backbones.hf_encoder.HFEncoder",
            "name_or_path": str(scratch / "bert"), "num_classes": 2, "pretrained": False}
    tokens, vocab = (16, 100) if tiny else (128, bert_config.vocab_size)

    def images(batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, size, size)

    def text(batch: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(vocab // 10, vocab, (batch, tokens))  # clear of the special tokens
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "token_type_ids": torch.zeros_like(ids)}

    return [Workload("DeiT-S-sized" if not tiny else "ViT (tiny)", vit, images, vit["num_classes"]),
            Workload("BERT-base-sized" if not tiny else "BERT (tiny)", bert, text, 2)]


def system_for(workload: Workload, loss: str, placement: Placement) -> LayerwiseClassifier:
    torch.manual_seed(0)
    system = LayerwiseClassifier(workload.model, {"_target_": LOSSES[loss]})
    return system.to(placement.device)


def on_device(inputs: Any, placement: Placement) -> Any:
    if isinstance(inputs, dict):
        return {key: value.to(placement.device) for key, value in inputs.items()}
    return inputs.to(placement.device)


def training_throughput(workload: Workload, placement: Placement, args) -> dict[str, float]:
    """Samples per second of a full training step, per objective (interleaved rounds)."""
    steps = {}
    inputs = on_device(workload.make_inputs(args.train_batch), placement)
    target = torch.randint(0, workload.num_classes, (args.train_batch,), device=placement.device)
    for loss in LOSSES:
        system = system_for(workload, loss, placement).train()
        optimizer = torch.optim.AdamW(system.parameters(), lr=1e-4)

        def step(system=system, optimizer=optimizer) -> None:
            for _ in range(args.train_steps):
                optimizer.zero_grad(set_to_none=True)
                with placement.autocast():
                    loss_value = system.objective(system(inputs), target)
                loss_value.backward()
                optimizer.step()

        steps[loss] = step
    seconds = time_rounds(steps, args.rounds, min_seconds=0, synchronize=placement.synchronize)
    return {loss: args.train_batch * args.train_steps / s for loss, s in seconds.items()}


def evaluation_pass_seconds(workload: Workload, placement: Placement, args) -> float:
    system = system_for(workload, "aligned", placement).eval()
    generator = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, args.eval_samples, args.eval_batch):
        count = min(args.eval_batch, args.eval_samples - start)
        labels = torch.randint(0, workload.num_classes, (count,), generator=generator)
        inputs = workload.make_inputs(count)
        batches.append({**inputs, "labels": labels} if isinstance(inputs, dict)
                       else (inputs, labels))
    times = []
    for _ in range(2):  # the first is the warm-up
        placement.synchronize()
        start = time.perf_counter()
        run_layerwise_pass(system, batches, progress=False, autocast=placement.autocast)
        placement.synchronize()
        times.append(time.perf_counter() - start)
    return times[-1]


def early_exit_speedups(workload: Workload, placement: Placement, pattern: torch.Tensor,
                        args) -> list[dict[str, float]]:
    system = system_for(workload, "aligned", placement).eval()
    rule = PatternRule(pattern)
    forward = full_forward(system, placement.autocast)
    rows = []
    for batch_size in args.batch_sizes:
        batches = [on_device(workload.make_inputs(batch_size), placement)
                   for _ in range(max(1, args.exit_samples // batch_size))]
        per_batch = EarlyExitClassifier(system, rule, placement.autocast)
        runs = {"full": lambda bs=batches: [forward(b) for b in bs],
                "per batch": lambda c=per_batch, bs=batches: [c(b) for b in bs]}
        if batch_size > 1:
            pooled = PooledEarlyExit(system, rule, batch_size, placement.autocast)
            runs["pooled"] = lambda p=pooled, bs=batches: p.run(bs)
        with torch.inference_mode():
            seconds = time_rounds(runs, args.rounds, args.round_seconds,
                                  synchronize=placement.synchronize)
        rows.append({"batch_size": batch_size, "mean_exit_layer": rule.mean_exit_layer,
                     "predicted": system.num_layers / rule.mean_exit_layer,
                     "full_ms": 1000 * seconds["full"] / len(batches),
                     **{mode: seconds["full"] / seconds[mode] for mode in runs if mode != "full"}})
    return rows


def exit_pattern(values: list[float] | None, num_layers: int) -> torch.Tensor:
    if values is None:
        values = DEFAULT_PATTERN if num_layers == len(DEFAULT_PATTERN) else [1.0] * num_layers
    finite = all(0 <= value < math.inf for value in values)  # NaN and inf: no fraction
    if len(values) != num_layers or not finite or sum(values) <= 0:
        raise ConfigError(f"--exit-pattern needs {num_layers} non-negative fractions (one per "
                          f"layer, not all 0), got {values}.")
    pattern = torch.tensor(values, dtype=torch.float64)
    return pattern / pattern.sum()


def run(args: argparse.Namespace) -> dict[str, Any]:
    placement = resolve_placement(args.device, args.precision)
    figures: dict[str, Any] = {**placement.describe(), "torch": torch.__version__,
                               "tiny": args.tiny, "workloads": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for workload in workloads(args.tiny, Path(scratch)):
            num_layers = system_for(workload, "standard", placement).num_layers
            pattern = exit_pattern(args.exit_pattern, num_layers)
            figures["workloads"][workload.name] = {
                "num_layers": num_layers,
                "exit_pattern": [round(p, 4) for p in pattern.tolist()],
                "train_samples_per_s": training_throughput(workload, placement, args),
                "evaluation_pass_s": evaluation_pass_seconds(workload, placement, args),
                "eval_samples": args.eval_samples,
                "early_exit": early_exit_speedups(workload, placement, pattern, args),
            }
    return figures


def print_figures(figures: dict[str, Any]) -> None:
    print(f"{figures['device_name']} ({figures['device']}), precision {figures['precision']}, "
          f"torch {figures['torch']}")
    for name, w in figures["workloads"].items():
        train = w["train_samples_per_s"]
        print(f"\n{name}: L = {w['num_layers']}; exit pattern (fraction per layer) "
              f"{w['exit_pattern']}")
        print("training samples/s: " + ", ".join(f"{loss} {value:.1f}"
                                                 for loss, value in train.items()))
        print(f"layer-wise evaluation pass over {w['eval_samples']} samples: "
              f"{w['evaluation_pass_s']:.2f} s")
        print("| batch | mean exit | predicted | per batch (/pred.) | pooled (/pred.) | full ms |")
        print("|---|---|---|---|---|---|")
        for row in w["early_exit"]:
            pooled = (f"{row['pooled']:.2f}x ({row['pooled'] / row['predicted']:.2f})"
                      if "pooled" in row else "-")
            print(f"| {row['batch_size']} | {row['mean_exit_layer']:.2f} | "
                  f"{row['predicted']:.2f}x | {row['per batch']:.2f}x "
                  f"({row['per batch'] / row['predicted']:.2f}) | {pooled} | "
                  f"{row['full_ms']:.2f} |")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    parser.add_argument("--precision", default="bf16-mixed", help="32, bf16-mixed or 16-mixed")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (runs on a CPU in seconds)")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=None,
                        help="early-exit batch sizes (default 1 64 256; --tiny: 1 8)")
    parser.add_argument("--train-batch", type=positive_int, default=None)
    parser.add_argument("--train-steps", type=positive_int, default=None)
    parser.add_argument("--eval-samples", type=positive_int, default=None)
    parser.add_argument("--eval-batch", type=positive_int, default=256)
    parser.add_argument("--exit-samples", type=positive_int, default=None,
                        help="samples per early-exit timing run (cut into batches)")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--round-seconds", type=positive_seconds, default=None,
                        help="a short early-exit run repeats to last this long per round")
    parser.add_argument("--exit-pattern", type=float, nargs="+", default=None,
                        help="fraction of samples leaving at each layer 1..L (default: stated)")
    parser.add_argument("--json", type=output_file, help="also write the figures to this file")
    args = parser.parse_args(argv)
    defaults = ({"batch_sizes": [1, 8], "train_batch": 8, "train_steps": 1, "eval_samples": 64,
                 "exit_samples": 16, "round_seconds": 0.02} if args.tiny else
                {"batch_sizes": [1, 64, 256], "train_batch": 64, "train_steps": 10,
                 "eval_samples": 4096, "exit_samples": 1024, "round_seconds": 0.5})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.eval_batch < 4:
        parser.error("--eval-batch must be at least 4 (minibatch CKA needs 4 samples a batch)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    try:
        figures = run(args)
    except ConfigError as error:
        print(f"Error: {user_message(error)}", file=sys.stderr)
        sys.exit(2)
    print_figures(figures)
    if args.json:
        write_json(args.json, figures, "--json file")
    return figures


if __name__ == "__main__":
    main()
