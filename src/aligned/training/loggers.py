"""Experiment loggers that need more than a ``_target_``."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger


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


def wandb_logger(offline: bool | None = None, **kwargs: Any) -> WandbLogger:
    """W&B logger that runs offline, never prompting, unless the user is logged in.

    ``offline=None`` decides from the credentials; ``WANDB_MODE`` set by the user wins.
    """
    if offline is None:
        offline = os.environ.get("WANDB_MODE") in ("offline", "disabled") or not wandb_logged_in()
    return WandbLogger(offline=offline, **kwargs)
