"""Building objects from Hydra configs, with errors a user can act on."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate


class ConfigError(ValueError):
    """A configuration or input the user got wrong; the message says how to fix it."""


class TrainingDiverged(ConfigError):
    """The training loss became NaN or infinite; the message says what to try."""


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces our own ConfigError instead of Hydra's wrapper.

    Hydra wraps every exception raised by a target in InstantiationException, which buries the
    one line the user needs under the full config path; we re-raise the original instead.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as wrapped:
        cause = wrapped.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise
