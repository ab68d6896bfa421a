"""All L×L layer pairs of COS and linear CKA: our batched code against per-pair packages.

    python benchmarks/similarity.py [--layers 12] [--dim 384] [--sizes 2000 4000]
                                    [--large-sizes 10000 100000] [--batch-size 250]
                                    [--cross-dims 384 768] [--cross-samples 10000]
                                    [--skip a b c d e f]

(a) ``ckatorch.cka_base`` (one pair per call) on every pair a <= b, side by side with our
    ``linear_cka`` in the same estimator (ckatorch's default: biased HSIC, linear kernel).
(b) Ours alone at large N: ``MinibatchCKA`` and streaming ``CosAccumulator`` (two passes: layer
    means, then cosines) on features generated batch by batch, in a fresh subprocess per N so
    ``ru_maxrss`` gives that N's peak memory.
(c) ``torch-cka``'s ``CKA`` only accepts two models and dataloaders; we replay the stored
    features through a module of Identity layers so its hooks capture them, and compare with
    our ``MinibatchCKA`` on the same batches (both: unbiased HSIC averaged over minibatches).
(d) Across two models: linear CKA of every layer of model A (L layers, D_A) against every
    layer of model B (L layers, D_B) on the same N inputs, ours in one call, checked against
    ``ckatorch.cka_base`` on a few pairs (its per-pair time extrapolated to all, labelled).
(e) Across the same two models, every measure of the registry (``aligned.analysis.measures``),
    at ``--measures-samples`` samples: the cost of each, side by side.
(f) Minibatch CKA with a short last batch: each batch's unbiased HSIC weighted by n(n-3)
    (``MinibatchCKA``, as Nguyen et al.'s code) against every batch weighted 1 (the code before
    the fix, docs/analysis.md, "Three fixes"), each against full-batch unbiased CKA, over seeds.

ckatorch and torch-cka are benchmark-only (``pip install ckatorch torch-cka``); a part whose
package is missing is skipped with a message. Features are random but each layer is a noisy
linear re-mix of the previous one, so similarities fall with layer distance.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # torch-cka draws a progress bar per comparison

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aligned.analysis.cka import MinibatchCKA, linear_cka
from aligned.analysis.feature_stacks import MIN_SAMPLES_CKA
from aligned.analysis.measures import MEASURES, cross_similarity
from aligned.analysis.similarity import CosAccumulator, cos_similarity, layer_means
from aligned.arguments import int_in, positive_int

sample_count = int_in(MIN_SAMPLES_CKA)  # what CKA needs of a set of samples, or of a batch


def layer_mixings(num_layers: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_layers, dim, dim, generator=generator) / dim**0.5
    return torch.eye(dim) + 0.3 * noise  # (L, D, D)


def make_features(mixings: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """(L, N, D) float32: layer l = layer l-1 re-mixed plus noise; the same mixings for every
    batch, so batches generated with different seeds are samples of one distribution."""
    generator = torch.Generator().manual_seed(seed)
    dim = mixings.shape[-1]
    layer = torch.randn(num_samples, dim, generator=generator)  # (N, D)
    layers = []
    for mixing in mixings:
        layer = layer @ mixing + 0.5 * torch.randn(num_samples, dim, generator=generator)
        layers.append(layer + 1.0)
    return torch.stack(layers)  # (L, N, D)


def make_model_b(features_a: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """(L, N, D_B): a second model reading model A's last layer through a random projection,
    then re-mixing layer by layer, so A×B similarities are neither 0 nor 1."""
    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn(features_a.shape[-1], dim, generator=generator)
    start = features_a[-1] @ projection / features_a.shape[-1] ** 0.5  # (N, D_B)
    own = make_features(layer_mixings(features_a.shape[0], dim, seed), features_a.shape[1], seed)
    return own + start  # (L, N, D_B)


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def best_time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def upper_pairs(num_layers: int, limit: int | None) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(num_layers) for b in range(a, num_layers)]
    return pairs if limit is None else pairs[:limit]


# --------------------------------------------------------------------------- (a) ckatorch


def compare_ckatorch(args: argparse.Namespace, mixings: torch.Tensor) -> None:
    print("\n(a) ckatorch.cka_base (one pair per call) vs ours, linear kernel, biased HSIC")
    try:
        from ckatorch import cka_base
    except ImportError:
        print("    ckatorch is not installed: skipped (pip install ckatorch, benchmark only)")
        return
    pairs = upper_pairs(args.layers, args.ckatorch_pairs)
    total_pairs = args.layers * (args.layers + 1) // 2
    warm = make_features(mixings, 100, seed=0)  # pay first-call overheads before timing
    cka_base(warm[0], warm[1])
    linear_cka(warm)
    cos_similarity(warm)
    for num_samples in args.sizes:
        features = make_features(mixings, num_samples, seed=1)  # (L, N, D)
        ours_cka_s, ours = best_time(lambda f=features: linear_cka(f), args.repeats)
        ours_cos_s, _ = best_time(lambda f=features: cos_similarity(f), args.repeats)

        start = time.perf_counter()
        theirs = {(a, b): cka_base(features[a], features[b]).item() for a, b in pairs}
        theirs_s = time.perf_counter() - start
        measured = "measured"
        if len(pairs) < total_pairs:  # only when --ckatorch-pairs asks for a subset
            theirs_s *= total_pairs / len(pairs)
            measured = f"EXTRAPOLATED from {len(pairs)} of {total_pairs} pairs"
        max_diff = max(abs(ours[a, b].item() - value) for (a, b), value in theirs.items())

        print(f"  N={num_samples}: {len(pairs)} pairs (a <= b) compared, "
              f"max |ours - ckatorch| = {max_diff:.2e}")
        print(f"    ckatorch, all {total_pairs} pairs: {theirs_s:8.2f} s ({measured})")
        print(f"    ours linear_cka, all pairs:    {ours_cka_s:8.3f} s  (best of {args.repeats})"
              f"  -> speed-up {theirs_s / ours_cka_s:6.0f}x")
        print(f"    ours cos_similarity, all pairs: {ours_cos_s:7.3f} s  (best of {args.repeats})")
        print("    ours CKA(layer 1, layer l), l=1..L: "
              + " ".join(f"{value:.3f}" for value in ours[0].tolist()))

    # The unbiased estimators agree too (a few pairs; the speed is the same story).
    features = make_features(mixings, args.sizes[0], seed=1)
    ours = linear_cka(features, unbiased=True)
    check = [(0, 1), (0, args.layers - 1), (args.layers // 2, args.layers - 1)]
    diff = max(
        abs(ours[a, b].item() - cka_base(features[a], features[b], unbiased=True).item())
        for a, b in check
    )
    print(f"  unbiased HSIC, N={args.sizes[0]}, pairs {[(a + 1, b + 1) for a, b in check]} "
          f"(1-based): max |ours - ckatorch| = {diff:.2e}")


# --------------------------------------------------------------------------- (b) large N


def peak_rss_mib() -> float:
    """This process's peak resident memory. ru_maxrss survives exec on Linux, so a child would
    report its parent's peak; VmHWM belongs to the process's own address space."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_large(args: argparse.Namespace, num_samples: int) -> None:
    """One N, in its own process: stream batches twice, never holding (L, N, D) or N×N."""
    mixings = layer_mixings(args.layers, args.dim)
    num_batches = num_samples // args.batch_size
    batch_seeds = range(100, 100 + num_batches)

    def batches():
        for seed in batch_seeds:
            yield make_features(mixings, args.batch_size, seed)  # (L, B, D)

    # Warm up kernels and the allocator so the baseline RSS includes them.
    warm = make_features(mixings, args.batch_size, 0)
    MinibatchCKA(args.layers).update(warm)
    CosAccumulator("samples", mean=layer_means([warm])).update(warm)
    baseline_mib = peak_rss_mib()

    cka = MinibatchCKA(args.layers)
    cka_s = mean_s = cos_s = 0.0
    mean_sum = torch.zeros(args.layers, args.dim, dtype=torch.float64)
    for batch in batches():  # pass 1: CKA and the layer means
        start = time.perf_counter()
        cka.update(batch)
        middle = time.perf_counter()
        mean_sum += batch.sum(dim=1, dtype=torch.float64)
        end = time.perf_counter()
        cka_s, mean_s = cka_s + middle - start, mean_s + end - middle
    start = time.perf_counter()
    cka_matrix = cka.compute()
    cka_s += time.perf_counter() - start

    cos = CosAccumulator("samples", mean=mean_sum / (num_batches * args.batch_size))
    for batch in batches():  # pass 2: cosines around the exact means
        start = time.perf_counter()
        cos.update(batch)
        cos_s += time.perf_counter() - start
    cos_matrix = cos.compute()

    full_mib = args.layers * num_samples * args.dim * 4 / 2**20
    gram_mib = args.layers * num_samples**2 * 8 / 2**20
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"  N={num_samples}: {num_batches} batches of {args.batch_size} (load average {load})")
    print(f"    minibatch CKA, all pairs: {cka_s:7.2f} s")
    print(f"    streaming COS, all pairs: {cos_s + mean_s:7.2f} s "
          f"(means pass {mean_s:.2f} s + cosine pass {cos_s:.2f} s)")
    print(f"    peak RSS {peak_rss_mib():8.0f} MiB, {peak_rss_mib() - baseline_mib:6.0f} MiB above "
          f"the warmed-up baseline of {baseline_mib:.0f} MiB (for scale: the features would be "
          f"{full_mib:.0f} MiB float32, L Gram matrices {gram_mib:.0f} MiB float64)")
    print("    CKA(1, l): " + " ".join(f"{value:.3f}" for value in cka_matrix[0].tolist()))
    print("    COS(1, l): " + " ".join(f"{value:.3f}" for value in cos_matrix[0].tolist()))


def large_sizes(args: argparse.Namespace) -> None:
    print("\n(b) ours alone at large N: MinibatchCKA (unbiased HSIC) + streaming COS; features "
          "generated batch by batch (generation time excluded), one subprocess per N")
    for num_samples in args.large_sizes:
        sys.stdout.flush()  # keep our lines ahead of the subprocess's
        command = [sys.executable, __file__, "--worker-large", str(num_samples),
                   "--layers", str(args.layers), "--dim", str(args.dim),
                   "--batch-size", str(args.batch_size), "--threads", str(torch.get_num_threads())]
        subprocess.run(command, check=True)


# --------------------------------------------------------------------------- (c) torch-cka


class StoredFeatures(nn.Module):
    """Replays stored features (L, N, D) as L Identity 'layers' that forward hooks can see."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features
        self.layers = nn.ModuleList(nn.Identity() for _ in range(features.shape[0]))

    def forward(self, index: torch.Tensor) -> None:
        for layer, layer_features in zip(self.layers, self.features, strict=True):
            layer(layer_features[index])


def compare_torch_cka(args: argparse.Namespace, mixings: torch.Tensor) -> None:
    print("\n(c) torch-cka CKA(model1, model2).compare(loader) vs our MinibatchCKA, same batches")
    try:
        from torch_cka import CKA
    except ImportError:
        print("    torch-cka is not installed: skipped (pip install torch-cka, benchmark only)")
        return
    print("    torch-cka takes models + dataloaders only; stored features are replayed through "
          "Identity layers")
    for num_samples in [100, *args.sizes]:  # the first, small run is a warm-up

        features = make_features(mixings, num_samples, seed=1)  # (L, N, D)
        names = [f"layers.{index}" for index in range(args.layers)]
        loader = DataLoader(TensorDataset(torch.arange(num_samples)), batch_size=args.batch_size)
        model = StoredFeatures(features)
        comparison = CKA(model, model, "stored", "stored (same)", names, names)
        start = time.perf_counter()
        comparison.compare(loader, loader)
        theirs_s = time.perf_counter() - start
        if num_samples == 100:
            continue
        theirs = comparison.export()["CKA"].double()

        def ours_fn(f=features) -> torch.Tensor:
            accumulator = MinibatchCKA(args.layers)
            for batch in torch.split(f, args.batch_size, dim=1):
                accumulator.update(batch)
            return accumulator.compute()

        ours_s, ours = best_time(ours_fn, args.repeats)
        print(f"  N={num_samples}, batch {args.batch_size}: max |ours - torch-cka| = "
              f"{(ours - theirs).abs().max().item():.2e} (torch-cka accumulates in float32)")
        print(f"    torch-cka, all {args.layers**2} pairs: {theirs_s:7.2f} s; ours: {ours_s:.3f} s "
              f"(best of {args.repeats}) -> speed-up {theirs_s / ours_s:.0f}x")


# --------------------------------------------------------------------------- (d), (e) across


def compare_cross(args: argparse.Namespace) -> None:
    dim_a, dim_b = args.cross_dims
    num_samples = args.cross_samples
    print(f"\n(d) across two models: linear CKA of {args.layers} x {args.layers} layer pairs, "
          f"D_A={dim_a}, D_B={dim_b}, N={num_samples}, float32 features")
    features_a = make_features(layer_mixings(args.layers, dim_a), num_samples, seed=1)
    features_b = make_model_b(features_a, dim_b, seed=2)
    linear_cka(features_a[:, :100], features_b[:, :100])  # first-call overheads
    times = []
    for _ in range(args.repeats):
        load = load_average()
        start = time.perf_counter()
        ours = linear_cka(features_a, features_b)  # (L, L)
        times.append((time.perf_counter() - start, load))
    for seconds, load in times:
        print(f"    ours, all {args.layers**2} pairs in one call: {seconds:6.2f} s "
              f"(load average before the run {load})")
    print(f"    best {min(seconds for seconds, _ in times):.2f} s; "
          f"CKA(A layer 1, B layer l): " + " ".join(f"{v:.3f}" for v in ours[0].tolist()))
    print(f"    CKA(A layer l, B layer {args.layers}): "
          + " ".join(f"{v:.3f}" for v in ours[:, -1].tolist()))
    try:
        from ckatorch import cka_base
    except ImportError:
        print("    ckatorch is not installed: its check skipped (pip install ckatorch)")
        return
    last = args.layers - 1
    pairs = [(0, 0), (0, last), (last // 2, last // 2), (last, 0), (last, last)]
    pairs = pairs[: args.cross_pairs]
    start = time.perf_counter()
    theirs = {(a, b): cka_base(features_a[a], features_b[b]).item() for a, b in pairs}
    per_pair = (time.perf_counter() - start) / len(pairs)
    diff = max(abs(ours[a, b].item() - value) for (a, b), value in theirs.items())
    print(f"    ckatorch.cka_base (biased, float64 N×N Grams) on pairs "
          f"{[(a + 1, b + 1) for a, b in pairs]} (1-based): max |ours - ckatorch| = {diff:.1e}")
    print(f"    ckatorch: {per_pair:.2f} s per pair measured; all {args.layers**2} pairs would "
          f"take ~{per_pair * args.layers**2:.0f} s (EXTRAPOLATED from {len(pairs)} pairs)")
    unbiased = linear_cka(features_a, features_b, unbiased=True)
    check = pairs[:2]
    diff = max(abs(unbiased[a, b].item()
                   - cka_base(features_a[a], features_b[b], unbiased=True).item())
               for a, b in check)
    print(f"    unbiased HSIC, pairs {[(a + 1, b + 1) for a, b in check]}: max |ours - ckatorch| "
          f"= {diff:.1e}")


def compare_measures(args: argparse.Namespace) -> None:
    dim_a, dim_b = args.cross_dims
    num_samples = args.measures_samples
    print(f"\n(e) every registry measure across two models: {args.layers} x {args.layers} "
          f"pairs, D_A={dim_a}, D_B={dim_b}, N={num_samples}, float32 features")
    features_a = make_features(layer_mixings(args.layers, dim_a), num_samples, seed=1)
    features_b = make_model_b(features_a, dim_b, seed=2)
    for name, measure in MEASURES.items():
        if not measure.any_widths and dim_a != dim_b:
            print(f"    {name:>10}: needs equal widths (D_A = D_B); skipped")
            continue
        load = load_average()
        start = time.perf_counter()
        matrix = cross_similarity(features_a, features_b, name)
        seconds = time.perf_counter() - start
        print(f"    {name:>10}: {seconds:6.2f} s (load {load}); {measure.kind} of A layer 1 "
              f"vs B layer 1 / B layer {args.layers}: {matrix[0, 0]:.3f} / {matrix[0, -1]:.3f}")


def u_centred_grams(batch: torch.Tensor) -> torch.Tensor:
    """(L, B*B) U-centred linear Gram matrices (Székely & Rizzo 2014, as Nguyen et al.'s
    efficient_CKA.py builds them); <K~, L~> / (n(n-3)) is the unbiased HSIC."""
    x = batch.double()
    n = x.shape[1]
    gram = x @ x.transpose(1, 2)  # (L, B, B)
    gram.diagonal(dim1=1, dim2=2).zero_()
    means = gram.sum(1) / (n - 2)  # (L, B)
    means -= means.sum(1, keepdim=True) / (2 * (n - 1))
    gram = gram - means[:, :, None] - means[:, None, :]
    gram.diagonal(dim1=1, dim2=2).zero_()
    return gram.flatten(1)


def compare_weighting(args: argparse.Namespace) -> None:
    layers, dim = 6, 32
    print(f"\n(f) minibatch CKA vs full-batch unbiased CKA, L={layers}, D={dim}, "
          f"{args.weighting_seeds} seeds: mean |error| over the off-diagonal pairs")
    off_diagonal = ~torch.eye(layers, dtype=torch.bool)

    def cka(hsic: torch.Tensor) -> torch.Tensor:
        norm = hsic.diagonal().sqrt()
        return hsic / torch.outer(norm, norm)

    for sizes in ([256, 103], [256, 21], [256, 8], [256] * 6 + [14]):
        errors, worst_gap = {"n(n-3)": [], "1": []}, 0.0
        for seed in range(args.weighting_seeds):
            features = make_features(layer_mixings(layers, dim, seed), sum(sizes), seed)
            full = linear_cka(features, unbiased=True)
            batches = torch.split(features, sizes, dim=1)
            inner = [u_centred_grams(b) @ u_centred_grams(b).T for b in batches]  # n(n-3) HSIC
            weights = [b.shape[1] * (b.shape[1] - 3) for b in batches]
            weighted = cka(sum(inner))
            unweighted = cka(sum(p / w for p, w in zip(inner, weights, strict=True)))
            ours = MinibatchCKA(layers)
            for batch in batches:
                ours.update(batch)
            worst_gap = max(worst_gap, (ours.compute() - weighted).abs().max().item())
            for name, value in (("n(n-3)", weighted), ("1", unweighted)):
                errors[name].append((value - full)[off_diagonal].abs().mean().item())
        mean = {name: sum(values) / len(values) for name, values in errors.items()}
        label = " + ".join(f"{size}" for size in sizes) if len(sizes) < 4 else "6 x 256 + 14"
        print(f"    batches {label:>12}: weight n(n-3) {mean['n(n-3)']:.1e}, weight 1 "
              f"{mean['1']:.1e}, ratio {mean['1'] / mean['n(n-3)']:.1f}; "
              f"|MinibatchCKA - weight n(n-3)| <= {worst_gap:.0e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int_in(2), default=12)  # (a) checks layer pairs
    parser.add_argument("--dim", type=positive_int, default=384)
    parser.add_argument("--sizes", type=sample_count, nargs="+", default=[2000, 4000],
                        help="N for the comparisons with ckatorch and torch-cka")
    parser.add_argument("--large-sizes", type=sample_count, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-size", type=sample_count, default=250)
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="our timings: best of this many")
    parser.add_argument("--ckatorch-pairs", type=positive_int, default=None,
                        help="time only the first K pairs of ckatorch and extrapolate (labelled)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: all)")
    parser.add_argument("--cross-dims", type=positive_int, nargs=2, default=[384, 768],
                        help="(d), (e): widths of model A and model B")
    parser.add_argument("--cross-samples", type=sample_count, default=10_000, help="(d): N")
    parser.add_argument("--cross-pairs", type=int_in(1, 5), default=3,
                        help="(d): layer pairs checked against ckatorch (1..5)")
    parser.add_argument("--measures-samples", type=sample_count, default=4000, help="(e): N")
    parser.add_argument("--weighting-seeds", type=positive_int, default=20, help="(f): seeds")
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c", "d", "e", "f"])
    parser.add_argument("--worker-large", type=sample_count, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    short = [n for n in args.large_sizes if n < args.batch_size]  # (b) streams whole batches
    if short:
        parser.error(f"--large-sizes {short[0]} is below --batch-size {args.batch_size}: each "
                     "size streams whole batches.")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker_large is not None:
        run_large(args, args.worker_large)
        return
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load}; L={args.layers} layers, D={args.dim}; random layer-to-layer "
          f"correlated features; float64 accumulation")
    mixings = layer_mixings(args.layers, args.dim)
    if "a" not in args.skip:
        compare_ckatorch(args, mixings)
    if "b" not in args.skip:
        large_sizes(args)
    if "c" not in args.skip:
        compare_torch_cka(args, mixings)
    if "d" not in args.skip:
        compare_cross(args)
    if "e" not in args.skip:
        compare_measures(args)
    if "f" not in args.skip:
        compare_weighting(args)


if __name__ == "__main__":
    main()
