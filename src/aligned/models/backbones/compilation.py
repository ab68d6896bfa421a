"""``model.compile=true``: each block of a backbone compiled with ``torch.compile``, in place."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable

from torch import nn

from aligned.config import ConfigError


def compile_blocks(blocks: Iterable[nn.Module], backend: str = "inductor") -> None:
    """``torch.compile`` each block in place (``Module.compile``), for ``model.compile=true``.

    Blocks, not the whole model: the per-layer surface calls them one at a time (``run_block``,
    in training, analysis and early exit alike), and the blocks of a model share one compiled
    graph (PyTorch's "regional compilation": one graph for the 6 blocks of the digits ViT).
    In place, the state_dict keys stay as they are (``torch.compile(module)`` would prefix them
    with ``_orig_mod.``), so a checkpoint loads with compile on or off.
    """
    import torch._dynamo  # loaded only when compiling

    available = torch._dynamo.list_backends(exclude_tags=())
    if backend not in available:
        raise ConfigError(
            f"model.compile_backend='{backend}' is not a torch.compile backend; use inductor "
            f"(the default), aot_eager or eager, or one of {', '.join(available)}."
        )
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if backend == "inductor" and not shutil.which(compiler):
        # Inductor writes C++ (and Triton's launchers C); without a compiler it would fail
        # inside the first training step, in a long traceback.
        raise ConfigError(
            f"model.compile=true with the inductor backend needs a C++ compiler, and '{compiler}' "
            "is not on the PATH: install one (e.g. apt-get install g++, or set CXX), or use "
            "model.compile_backend=aot_eager, or model.compile=false."
        )
    for block in blocks:
        block.compile(backend=backend)
