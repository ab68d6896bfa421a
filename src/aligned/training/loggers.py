"""Experiment loggers that need more than a ``_target_``: W&B offline unless logged in, one W&B
run per training run (a resumed run continues it), sweep jobs grouped, the whole config logged."""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from aligned.config import build

WANDB_TARGET = "aligned.training.loggers.wandb_logger"


def wandb_logged_in() -> bool:
    """True when W&B has credentials (env var or ~/.netrc), checked without any network call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return auth is not None


def wandb_mode(offline: bool | None = None) -> str:
    """W&B's ``mode``: ``offline=True/False`` when given, else ``WANDB_MODE`` when the user set
    it, else offline unless logged in (so a batch job never stops at a login prompt)."""
    if offline is not None:
        return "offline" if offline else "online"
    return os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


class LayerwiseWandbLogger(WandbLogger):
    """Lightning's WandbLogger with two changes.

    - While ``summary_prefix`` is set (``WandbLayerPanels`` sets it while the best checkpoint is
      validated and tested after fit), metrics go to the run summary under that prefix
      (``best/val/acc``) instead of a last history point at the final step.
    - Checkpoint artifacts (``log_model``) come from the checkpoint callback that monitors the
      headline metric only: the unmonitored ``last.ckpt`` would be uploaded a second time and
      tagged "best" (Lightning tags each callback's own best file so).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.summary_prefix: str | None = None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.summary_prefix is None:
            super().log_metrics(metrics, step)
            return
        self.experiment.summary.update(
            {f"{self.summary_prefix}{key}": value for key, value in metrics.items()})

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if getattr(checkpoint_callback, "monitor", None) is not None:
            super().after_save_checkpoint(checkpoint_callback)


def wandb_logger(
    offline: bool | None = None,
    log_model: bool | Literal["all"] = False,
    run_config: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> LayerwiseWandbLogger:
    """W&B logger that runs offline, never prompting, unless the user is logged in.

    ``offline=None`` decides from ``WANDB_MODE`` and the credentials. The mode goes to
    ``wandb.init`` rather than to Lightning's ``offline`` flag, which refuses ``log_model`` (it
    assumes an offline run cannot hold artifacts; it can, and ``wandb sync`` uploads them) and
    sets ``WANDB_MODE`` for the rest of the process. ``run_config``: the run's whole config,
    W&B's ``config`` (a name Hydra's instantiate keeps for itself).
    """
    if isinstance(run_config, DictConfig):
        run_config = OmegaConf.to_container(run_config, resolve=True)
    return LayerwiseWandbLogger(mode=wandb_mode(offline), log_model=log_model, config=run_config,
                                **kwargs)


def is_wandb(node: Any) -> bool:
    return isinstance(node, Mapping) and node.get("_target_") == WANDB_TARGET


def build_logger(cfg: DictConfig, parameters: dict[str, int],
                 resumed: Mapping[str, Any] | None = None) -> Logger | bool:
    """The ``logger`` group's logger (False for none). For W&B: the run id (a resumed run's own,
    from ``resumed``, the logger section of its checkpoint's run config), the group and the whole
    resolved config with ``parameters`` are settled here; id and group are written into
    ``cfg.logger`` so that every checkpoint's run config holds them, for a later resume and for
    ``evaluate.py``, which joins the group."""
    if not cfg.get("logger"):
        return False
    if not is_wandb(cfg.logger):
        return build(cfg.logger)
    previous = resumed if is_wandb(resumed) else {}
    with open_dict(cfg.logger):
        # An id or group given by the user wins, then the resumed run's.
        cfg.logger.id = cfg.logger.get("id") or previous.get("id") or new_run_id()
        cfg.logger.group = (cfg.logger.get("group") or previous.get("group")
                            or default_group(cfg.run_dir))
    config = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]), resolve=True)
    # Not recursive: the model, data and loss sections have targets of their own.
    return build(cfg.logger, run_config={**config, "parameters": parameters}, _recursive_=False)


def new_run_id() -> str:
    """8 lowercase letters and digits, the form of W&B's own ids (whose generator has moved
    between wandb releases)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def default_group(run_dir: str | Path) -> str:
    """A multirun's jobs share their sweep's name (``multirun/<name>``, Hydra's sweep.dir); a
    single run is a group of its own, named after its run directory, which its evaluations by
    ``evaluate.py`` join."""
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        if hydra.mode == RunMode.MULTIRUN and hydra.sweep.dir:
            return Path(hydra.sweep.dir).name
    return Path(run_dir).name


def logger_callbacks(logger: Logger | bool) -> list[Callback]:
    """The callbacks a logger needs: W&B's per-layer tables, charts and best-value summaries."""
    if isinstance(logger, LayerwiseWandbLogger):
        from aligned.training.wandb_layers import WandbLayerPanels

        return [WandbLayerPanels(logger)]
    return []
