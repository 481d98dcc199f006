"""Finding a model: a local folder, or a Hugging Face repo id already in the local cache.

Nothing is downloaded unless the user asks (`bloomtui download`)."""

from __future__ import annotations

import re
from pathlib import Path

from bloomtui.errors import CheckpointError

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_repo_id(model: str) -> bool:
    return bool(_REPO_ID.fullmatch(model)) and not model.startswith((".", "/", "~"))


def resolve_model(model: str | Path) -> Path:
    """The local folder for a model argument: a folder path, a shipped demo model by name (`trained`,
    `trained-draft`, unless a folder is so named) or a cached repo id."""
    path = find_local(model)
    if path is None:
        raise CheckpointError(
            f"{model}: not a local folder, and not in the local Hugging Face cache "
            f"(download it first: bloomtui download {model})"
        )
    return path


def find_local(model: str | Path, revision: str | None = None) -> Path | None:
    """resolve_model's folder, or None for a repo id that is not in the local Hugging Face cache (at `revision`,
    default its main branch). A mistyped folder is an error, never taken for a repo id."""
    from bloomtui import demo_models

    text = str(model)
    path = Path(text).expanduser()
    if text in demo_models.NAMES and not path.exists():
        return demo_models.path(text)
    if path.exists() or not looks_like_repo_id(text):
        return path
    if path.parent.is_dir() and path.parent != Path("."):
        # `models/nope` where ./models exists is a mistyped folder far more often than a repo id.
        raise CheckpointError(f"{text}: no such folder ({_nearby(path)})")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision, local_files_only=True))
    except Exception:  # any miss in the cache: not found, no snapshot, partial metadata
        return None


def _nearby(path: Path) -> str:
    names = sorted(p.name for p in path.parent.iterdir() if p.is_dir())
    if not names:
        return f"{path.parent} holds no folders"
    return f"{path.parent} holds: " + ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")


REACH_TIMEOUT = 5.0
"""Seconds to wait for the hub to accept a connection before saying it cannot be reached."""


def check_reachable(endpoint: str) -> None:
    """Fail at once, with one clear line, when the hub cannot be reached: huggingface_hub retries a failed
    connection with back-off for half a minute before it gives up."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    host, port = url.hostname or endpoint, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CheckpointError(
            f"cannot reach {host}:{port} ({reason}): check the network connection "
            "(HF_ENDPOINT sets another hub or mirror)"
        ) from None
