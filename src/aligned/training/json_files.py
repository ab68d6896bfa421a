"""The JSON files the project writes (results.json, evaluation.json, the benchmarks' --json, ...):
valid JSON that any reader parses, written whole or not at all.

Python's ``json`` writes an infinite or undefined float as a bare ``Infinity`` or ``NaN``, which
is not JSON: strict readers (JavaScript's ``JSON.parse``, many dashboards) reject the file and jq
reads ``Infinity`` as 1.8e308. Here such a value is written as ``null``, and the record gains a
top-level ``"non_finite"`` object that names each one by its JSON Pointer (RFC 6901) with the
value it stands for, e.g. ``"non_finite": {"/layer_perplexity/test/0": "Infinity"}``;
``read_json`` puts them back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from aligned.training.atomic_files import write_atomically

NON_FINITE = "non_finite"
# The names of the values, as float() and JavaScript's Number() read them.
NAMES = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def json_text(record: dict[str, Any]) -> str:
    """``record`` as strict JSON text: non-finite floats as null, listed under "non_finite"."""
    if not isinstance(record, dict):  # the list of non-finite values needs a top-level object
        raise TypeError(f"a JSON record must be a dict, got {type(record).__name__}")
    non_finite: dict[str, str] = {}
    finite = _replace_non_finite(record, "", non_finite)
    if non_finite:
        if NON_FINITE in record:
            raise ValueError(f"a JSON record with non-finite values cannot have its own "
                             f"'{NON_FINITE}' key")
        finite[NON_FINITE] = non_finite
    return json.dumps(finite, indent=2, allow_nan=False) + "\n"


def write_json(path: str | Path, record: dict[str, Any], what: str = "JSON file") -> None:
    """``record`` into ``path`` as ``json_text``, atomically; ``what`` names it in errors."""
    text = json_text(record).encode()
    write_atomically(path, lambda file: file.write(text), what)


def read_json(path: str | Path) -> Any:
    """A file ``write_json`` wrote, its non-finite values put back (older files that hold bare
    ``Infinity`` or ``NaN`` read as they are)."""
    return restore_non_finite(json.loads(Path(path).read_text()))


def restore_non_finite(record: Any) -> Any:
    """``record`` (parsed JSON) with the values its "non_finite" object names put back, in
    place."""
    if not isinstance(record, dict) or not isinstance(record.get(NON_FINITE), dict):
        return record
    for pointer, value in record.pop(NON_FINITE).items():
        try:
            *parents, last = [_unescape(part) for part in pointer.split("/")[1:]]
            container = record
            for part in parents:
                container = container[int(part) if isinstance(container, list) else part]
            key = int(last) if isinstance(container, list) else last
            if container[key] is not None:  # only a null stands for a non-finite value
                raise KeyError(pointer)
            container[key] = NAMES[value]
        except (KeyError, IndexError, TypeError, ValueError):
            raise ValueError(f"'{NON_FINITE}' names {pointer} = {value}, which is not a null "
                             "of this record: the file was edited") from None
    return record


def _replace_non_finite(value: Any, pointer: str, non_finite: dict[str, str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        non_finite[pointer] = "NaN" if math.isnan(value) else (
            "Infinity" if value > 0 else "-Infinity")
        return None
    if isinstance(value, dict):
        return {key: _replace_non_finite(item, f"{pointer}/{_escape(_key_text(key))}",
                                         non_finite)
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_replace_non_finite(item, f"{pointer}/{index}", non_finite)
                for index, item in enumerate(value)]
    return value


def _key_text(key: Any) -> str:
    """A dict key as json writes it (True -> "true", None -> "null", 3 -> "3")."""
    return key if isinstance(key, str) else json.dumps(key)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")
