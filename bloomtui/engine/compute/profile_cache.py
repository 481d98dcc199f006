"""Measurements of this machine kept between runs: one JSON file per kind in the cache dir, keyed by what the
measurement depends on (the CPU and torch, the filesystem and kernel)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

T = TypeVar("T")


def kept_or_measured(filename: str, key: str, kind: type[T], measure: Callable[[], T | None]) -> T | None:
    """The saved `kind` under `key` in `filename`, else `measure()` (saved unless None)."""
    from bloomtui.locations import cache_dir

    path = cache_dir() / filename
    try:
        saved: Any = json.loads(path.read_text())
        return kind(**saved[key])
    except (OSError, ValueError, KeyError, TypeError):
        saved = {}
    result = measure()
    if result is not None:
        try:
            saved = saved if isinstance(saved, dict) else {}
            saved[key] = asdict(result)  # type: ignore[call-overload]
            # Whole or not at all: the app may leave with os._exit while a first open measures.
            partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps(saved, indent=2) + "\n")
            os.replace(partial, path)
        except OSError:
            pass  # a read-only cache only costs the measurement next time
    return result
