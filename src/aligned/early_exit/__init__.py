"""Early exit with the one shared head (docs/method.md, "Early exit"): the exit rules and the
one loop that applies them, offline sweeps over cached per-layer signals, real inference that
runs later blocks on the survivors only (per batch or pooled across batches), and the parameters
the shared head saves. The offline sweeps serve classifiers and causal LMs alike (``signals``:
what the rules read, per sample or token and layer); for LMs, early-exit greedy decoding with a
KV cache (``decoding``) and lossless self-speculative decoding (``speculative``: drafts at layer
E, verified by the rest; E and d chosen on held-out text by ``speculation_plan``). ``timing``:
early exit's measured speed-up over the full forward.

    from aligned.early_exit import load_early_exit
    classifier = load_early_exit("run/checkpoints/last.ckpt", "confidence", 0.9)
    result = classifier(images)     # result.predictions (B,), result.exit_layers (B,) in 1..L

    from aligned.early_exit import EarlyExitDecoder, make_rule
    decoder = EarlyExitDecoder(system.backbone, make_rule("state", 0.99))  # kv="recompute"
    decoded = decoder.generate(input_ids, max_new_tokens=20)  # .tokens, .exit_layers (B, 20)

    from aligned.early_exit import SpeculativeDecoder
    decoder = SpeculativeDecoder(system.backbone, exit_layer=2, draft_tokens=3)
    decoded = decoder.generate(input_ids, max_new_tokens=20)  # full depth's tokens, batch 1
"""

from aligned.early_exit.decoding import Decoded, EarlyExitDecoder
from aligned.early_exit.inference import EarlyExitClassifier, load_early_exit
from aligned.early_exit.offline import early_exit_summary, matched_comparison, simulate, sweep
from aligned.early_exit.parameter_count import parameter_summary
from aligned.early_exit.pooled import PooledEarlyExit
from aligned.early_exit.rules import RULES, ExitResult, ExitRule, exit_layer_by_layer, make_rule
from aligned.early_exit.signals import ExitSignals, collect_exit_signals, collect_token_signals
from aligned.early_exit.speculation_plan import SpeculationPlan, measure_piece_costs, plan_grid
from aligned.early_exit.speculative import Speculated, SpeculativeDecoder
from aligned.early_exit.timing import ExitTimings, time_early_exit

__all__ = [
    "RULES", "Decoded", "EarlyExitClassifier", "EarlyExitDecoder", "ExitResult", "ExitRule",
    "ExitSignals", "ExitTimings", "PooledEarlyExit", "SpeculationPlan", "Speculated",
    "SpeculativeDecoder", "collect_exit_signals", "collect_token_signals", "early_exit_summary",
    "exit_layer_by_layer", "load_early_exit", "make_rule", "matched_comparison",
    "measure_piece_costs", "parameter_summary", "plan_grid", "simulate", "sweep",
    "time_early_exit",
]
