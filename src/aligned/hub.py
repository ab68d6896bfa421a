"""Where Hugging Face files come from: the hub, only its local cache (offline), or a local
file. Models and data both load from the hub, so both ask here."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

from aligned.config import ConfigError


def offline_mode() -> bool:
    """Whether the environment asks the Hugging Face libraries to stay offline."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(flag, "").upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub accepts a connection within ``timeout`` seconds.

    Without a network the hub clients retry for 25-45 s before giving up; this answers in at
    most ``timeout``. The attempt runs in a daemon thread because DNS lookups ignore socket
    timeouts. Behind a proxy a direct connection proves nothing, so the client is trusted.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return True
    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    outcome: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    attempt = threading.Thread(target=connect, daemon=True)
    attempt.start()
    attempt.join(timeout)
    return outcome == [True]


def gguf_location(name_or_path: str) -> tuple[str, dict[str, str]]:
    """(directory or hub id, extra from_pretrained arguments): a ``.gguf`` file loads from its
    directory with ``gguf_file=`` (transformers de-quantises it to float32)."""
    if name_or_path.endswith(".gguf"):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"GGUF file '{name_or_path}' does not exist; set "
                              "model.name_or_path to a .gguf file, a model directory or a hub id.")
        return str(path.parent), {"gguf_file": path.name}
    return name_or_path, {}
