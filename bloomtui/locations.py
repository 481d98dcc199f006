"""Where bloomtui keeps its files: XDG directories through platformdirs, each created on demand.

Every directory can be redirected with an environment variable (BLOOMTUI_CONFIG_DIR, BLOOMTUI_DATA_DIR,
BLOOMTUI_CACHE_DIR, BLOOMTUI_STATE_DIR), which is how tests keep a user's real settings and history out of reach.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "bloomtui"


def _directory(env: str, default: str) -> Path:
    path = Path(os.environ.get(env) or default).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # a read-only home must not stop the app: reads find nothing, and each write reports its error
    return path


def config_dir() -> Path:
    """Settings (settings.json)."""
    return _directory("BLOOMTUI_CONFIG_DIR", platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    """Things the user made: prompt history, saved transcripts."""
    return _directory("BLOOMTUI_DATA_DIR", platformdirs.user_data_dir(APP_NAME))


def cache_dir() -> Path:
    """Things bloomtui can rebuild: the demo model."""
    return _directory("BLOOMTUI_CACHE_DIR", platformdirs.user_cache_dir(APP_NAME))


def state_dir() -> Path:
    """Logs: crash reports."""
    return _directory("BLOOMTUI_STATE_DIR", platformdirs.user_state_dir(APP_NAME))


def settings_file() -> Path:
    return config_dir() / "settings.json"


def history_file() -> Path:
    return data_dir() / "history.json"


def transcripts_dir() -> Path:
    return _directory("BLOOMTUI_TRANSCRIPTS_DIR", str(data_dir() / "transcripts"))


def demo_model_dir(name: str) -> Path:
    """Not created here: the demo writer builds the folder beside it and renames it into place."""
    return cache_dir() / f"demo-{name}"
