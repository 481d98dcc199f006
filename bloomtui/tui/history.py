"""Prompt history, persisted as a JSON list under the XDG data dir (newest last, duplicates collapsed)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

LIMIT = 500


def load_history(path: Path) -> list[str]:
    """Saved prompts, oldest first; [] when the file is missing or unreadable (history is a convenience)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [item for item in data if isinstance(item, str)][-LIMIT:] if isinstance(data, list) else []


def remember(history: list[str], prompt: str) -> None:
    """Add `prompt` as the newest entry, moving it there if it was already known."""
    if not prompt.strip():
        return
    if prompt in history:
        history.remove(prompt)
    history.append(prompt)
    del history[:-LIMIT]


def save_history(path: Path, history: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".history-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(history[-LIMIT:], handle, ensure_ascii=False, indent=0)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
