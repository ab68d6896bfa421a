"""Per-step training cost of each objective on the default model (ViT on digits batches), or
on a causal LM (``--lm``: next-token loss over random token batches).

    python benchmarks/step_cost.py [--steps 300] [--batch-size 64]
    python benchmarks/step_cost.py --lm smollm2 --batch-size 8 --length 256 [--device cuda]
    python benchmarks/step_cost.py --lm gpt2 --model-path <save_pretrained dir> [--multiexit]
    python benchmarks/step_cost.py --lm llama --steps 20   # experiment=lm_bbc's model

A step = forward through every layer, the objective's loss, backward, AdamW update. The
objectives are timed in interleaved rounds so drift in machine load hits them equally; the
median round is reported, with the plain timm forward + CE (no per-layer read-out) for reference
(for an LM: Hugging Face's own forward with ``labels``, last layer only). An LM's aligned loss
runs the LM head at every layer, one layer at a time (``feature_loss``: recomputed in backward
when the logits exceed ``loss.logits_memory_mib``); ``--layers-per-step K ...`` times the sampled
aligned loss beside it (K drawn hidden layers + the last each step, ``loss.layers_per_step``);
``--multiexit`` adds the per-layer LM heads, (L-1)·V·D parameters.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

import aligned.resolvers  # noqa: F401  (${smollm2_path:} in conf/model/smollm2.yaml)
from aligned.arguments import positive_int, torch_device
from aligned.config import ConfigError, user_message
from aligned.config import build as build_target
from aligned.training.system import LayerwiseClassifier

CONF = Path(__file__).resolve().parents[1] / "conf"
LM_MODELS = ("gpt2", "smollm2", "llama")  # conf/model/'s causal LMs


def build(loss: str) -> LayerwiseClassifier:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"loss={loss}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    torch.manual_seed(0)
    return LayerwiseClassifier(model=cfg.model, loss=cfg.loss, optim=cfg.optim)


def step_fn(system: LayerwiseClassifier, plain: bool):
    optimizer = torch.optim.AdamW(system.parameters(), lr=1e-4)

    def step(images: torch.Tensor, target: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        if plain:  # timm's own forward: last layer only, no per-layer read-out
            loss = F.cross_entropy(system.backbone.model(images), target)
        else:
            loss = system.objective(system(images), target)
        loss.backward()
        optimizer.step()

    return step


def lm_variants(args: argparse.Namespace) -> tuple[dict, dict]:
    """The LM's step functions (one backbone, an objective and an AdamW each) and a batch."""
    overrides = [f"model={args.lm}", "data=text"]
    if args.lm == "llama":  # as experiment=lm_bbc builds it
        overrides = ["experiment=lm_bbc"]
    if args.model_path:
        overrides.append(f"model.name_or_path={args.model_path}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "loss=standard"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    torch.manual_seed(0)
    system = LayerwiseClassifier(model=cfg.model, loss=cfg.loss, optim=cfg.optim,
                                 metrics=("accuracy",)).to(args.device)
    backbone = system.backbone
    shape = {"num_layers": backbone.num_layers, "feature_dim": backbone.feature_dim,
             "num_classes": backbone.num_classes}
    losses = {"loss=standard": ["loss=standard"]}
    if args.full:
        losses["loss=aligned"] = ["loss=aligned"]
    losses |= {f"loss=aligned layers_per_step={k}": ["loss=aligned", f"loss.layers_per_step={k}"]
               for k in args.layers_per_step}
    if args.multiexit:
        losses["loss=multiexit"] = ["loss=multiexit"]
    objectives = {}
    for name, loss in losses.items():
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            node = compose("train", overrides=[*overrides, *loss]).loss
        objectives[name] = build_target(node, **shape).to(args.device)

    def step_fn(objective, plain: bool):
        parameters = [*backbone.parameters(), *(objective.parameters() if objective else [])]
        optimizer = torch.optim.AdamW(parameters, lr=1e-5)

        steps = iter(range(10**9))

        def step(batch: dict) -> None:
            optimizer.zero_grad(set_to_none=True)
            if plain:  # Hugging Face's forward: logits of the last layer, CE inside
                loss = backbone.model(**batch).loss
            else:  # a new step each call: layers_per_step draws anew, as in training
                features, target = system.token_features(batch)  # (L, N, D), (N,)
                loss = objective.feature_loss(features, backbone.head, target, step=next(steps))
            loss.backward()
            optimizer.step()

        return step

    variants = {"HF forward + CE (reference)": step_fn(None, plain=True)}
    variants |= {name: step_fn(objective, plain=False) for name, objective in objectives.items()}
    ids = torch.randint(0, backbone.num_classes, (args.batch_size, args.length),
                        generator=torch.Generator().manual_seed(0)).to(args.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    print(f"{type(backbone.model).__name__}: {backbone.num_layers} layers, width "
          f"{backbone.feature_dim}, vocabulary {backbone.num_classes}; batch {args.batch_size} x "
          f"{args.length} tokens on {args.device}")
    return variants, batch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=300)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--lm", choices=LM_MODELS,
                        help="a causal-LM model config: time it instead")
    parser.add_argument("--model-path", help="with --lm: model.name_or_path (a local directory)")
    parser.add_argument("--length", type=positive_int, default=256,
                        help="with --lm: tokens per sequence")
    parser.add_argument("--multiexit", action="store_true", help="with --lm: time multiexit too")
    parser.add_argument("--layers-per-step", type=positive_int, nargs="*", default=[2],
                        metavar="K",
                        help="with --lm: time the sampled aligned loss with each K (default 2)")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                        help="with --lm: time the full aligned loss (every layer); --no-full "
                             "leaves it out, so that more rounds of the others fit")
    parser.add_argument("--device", type=torch_device, default="cpu",
                        help="with --lm: cpu or cuda")
    args = parser.parse_args(argv)
    if args.model_path and not Path(args.model_path).expanduser().exists():
        parser.error(f"--model-path {args.model_path} does not exist (a directory of "
                     "save_pretrained files, or a .gguf file).")
    if args.lm:
        try:  # a model's missing package or an unknown setting: one line
            variants, batch = lm_variants(args)
        except ConfigError as error:
            parser.exit(2, f"Error: {user_message(error)}\n")
        time_variants(variants, (batch,), args)
        return

    variants = {
        "timm forward + CE (reference)": step_fn(build("standard"), plain=True),
        "loss=standard": step_fn(build("standard"), plain=False),
        "loss=aligned": step_fn(build("aligned"), plain=False),
        "loss=multiexit": step_fn(build("multiexit"), plain=False),
    }
    images = torch.randn(args.batch_size, 1, 8, 8)
    target = torch.randint(0, 10, (args.batch_size,))
    time_variants(variants, (images, target), args)


def time_variants(variants: dict, inputs: tuple, args: argparse.Namespace) -> None:
    """Warm up, time ``args.rounds`` interleaved rounds of ``args.steps`` steps, print."""
    cuda = str(getattr(args, "device", "cpu")).startswith("cuda")

    def synchronize() -> None:
        if cuda:  # GPU kernels run asynchronously: time what they did, not what was queued
            torch.cuda.synchronize()

    for step in variants.values():  # warm-up
        for _ in range(min(20, args.steps)):
            step(*inputs)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*inputs)
            synchronize()
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)

    standard = statistics.median(times["loss=standard"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds (median round)")
    print(f"{'variant':<36} {'ms/step':>10} {'vs standard':>12} {'x standard':>10}")
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"{name:<36} {ms:10.2f} {100 * (ms / standard - 1):+11.1f}% {ms / standard:9.2f}x")


if __name__ == "__main__":
    main()
