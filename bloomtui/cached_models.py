"""BLOOM models already in the local Hugging Face cache, so `bloomtui` with no argument can offer them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    path: Path
    """The newest snapshot folder."""
    size_on_disk: int


def _is_bloom(snapshot: Path, repo_id: str) -> bool:
    try:
        config = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # A repo whose config never arrived (a partial download) cannot be opened; skip it.
    return isinstance(config, dict) and (config.get("model_type") == "bloom" or "bloom" in repo_id.lower())


def find_cached_blooms(cache_dir: str | Path | None = None) -> list[CachedModel]:
    """Model repos in the HF cache whose newest snapshot is a BLOOM; [] when there is no cache at all."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(cache_dir)
    except Exception:  # no cache dir (CacheNotFound), unreadable, or a hub version we do not know
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda rev: rev.last_modified)
        snapshot = Path(newest.snapshot_path)
        if _is_bloom(snapshot, repo.repo_id):
            found.append(CachedModel(repo.repo_id, snapshot, repo.size_on_disk))
    return sorted(found, key=lambda model: model.repo_id.lower())
