"""Reads what an offline W&B run wrote: its ``run-<id>.wandb`` transaction log and media files.

Offline, wandb writes no ``config.yaml`` or ``wandb-summary.json``: config, summary, history,
metric definitions and artifacts exist only as protobuf records in the ``.wandb`` file (read
by ``wandb sync``). wandb 0.31 no longer ships a Python reader for it, so this is one: the
file is a LevelDB-style log (a 7-byte header ``:W&B``, 0xBEE1, version; then 32 KiB blocks of
records, each with a 7-byte header: CRC32, length, type full/first/middle/last).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, parts = HEADER, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            position += left
            continue
        body = data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            parts = body
        elif kind == MIDDLE:
            parts += body
        elif kind == LAST:
            yield parts + body


def set_nested(tree: dict, item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = json.loads(item.value_json)


class OfflineRun:
    """One offline run directory (``<run dir>/wandb/offline-run-<time>-<id>``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.run: Any = None  # the RunRecord: run_id, run_group, job_type, resumed, ...
        self.config: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}  # name -> MetricRecord (define_metric)
        self.artifacts: list[Any] = []
        (log,) = directory.glob("run-*.wandb")
        # wandb.finish() can return before W&B's service has written the file out: read it
        # again until it ends with the run's exit record.
        for _ in range(100):
            records = [pb.Record.FromString(raw) for raw in raw_records(log)]
            if any(record.WhichOneof("record_type") == "exit" for record in records):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{log} has no exit record: the run did not finish")
        for record in records:
            self.add(record)

    def add(self, record: Any) -> None:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            self.run = record.run
            for item in record.run.config.update:
                set_nested(self.config, item)
        elif kind == "config":
            for item in record.config.update:
                set_nested(self.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                set_nested(self.summary, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                set_nested(row, item)
            self.history.append(row)
        elif kind == "metric":
            self.metrics[record.metric.name or record.metric.glob_name] = record.metric
        elif kind == "artifact":
            self.artifacts.append(record.artifact)

    def table(self, key: str) -> dict[str, Any]:
        """The last logged W&B table under ``key``: {"columns": [...], "data": [[...], ...]}."""
        return json.loads((self.directory / "files" / self.summary[key]["path"]).read_text())


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """The offline W&B runs under a run directory, oldest first."""
    return [OfflineRun(path) for path in sorted((run_dir / "wandb").glob("offline-run-*"))]
