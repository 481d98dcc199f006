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
    """The local folder for a model argument (folder path or cached repo id)."""
    text = str(model)
    path = Path(text).expanduser()
    if path.exists() or not looks_like_repo_id(text):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except Exception:  # any miss in the cache: not found, no snapshot, partial metadata
        raise CheckpointError(
            f"{text}: not a local folder, and not in the local Hugging Face cache "
            f"(download it first: bloomtui download {text})"
        ) from None


def download_model(repo_id: str) -> Path:
    """Download a BLOOM repo's config, tokenizer and one weight format (safetensors when offered)."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = HfApi().list_repo_files(repo_id)
    except Exception as exc:
        raise CheckpointError(f"{repo_id}: cannot list the repository ({type(exc).__name__}: {exc})") from None
    weights = ["*.safetensors", "*.safetensors.index.json"]
    if not any(f.endswith(".safetensors") for f in files):
        weights = ["*.bin", "*.bin.index.json"]
    patterns = ["config.json", "tokenizer*", "special_tokens_map.json", *weights]
    return Path(snapshot_download(repo_id, allow_patterns=patterns))
