"""`bloomtui download REPO_ID`: a BLOOM repo's config, tokenizer and one weight format (safetensors when offered)
into the local Hugging Face cache, in its own layout (blobs named by ETag, a snapshot of links per commit, a ref
per branch), so huggingface_hub, transformers and bloomtui find it there. Each file is fetched with hub_fetch:
resumable across runs (the cache's `<blob>.incomplete`), sha256-checked, with progress and a disk check first."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from bloomtui.engine.weights.hub_fetch import INCOMPLETE, ChecksumMismatch, HubProgress, fetch_file
from bloomtui.engine.weights.hub_repo import SMALL_FILES, RepoListing, check_bloom_config, list_repo, weight_map
from bloomtui.errors import CheckpointError, UsageError
from bloomtui.sizes import format_size

SPARE_BYTES = 64 * 1024**2


def repo_folder(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


def download_model(
    repo_id: str,
    revision: str | None = None,
    on_plan: Callable[[str], None] = lambda _s: None,
    on_progress: Callable[[HubProgress], None] = lambda _p: None,
    should_stop: Callable[[], bool] = lambda: False,
    endpoint: str | None = None,
) -> Path:
    """The repo's snapshot folder in the cache, fetching what it lacks. Raises CheckpointError/ConfigError/
    UsageError with one line; CancelRequested leaves the partial blob for the next run."""
    listing = list_repo(repo_id, revision, endpoint)
    folder = repo_folder(repo_id)
    snapshot = folder / "snapshots" / listing.commit
    small = [n for n in (*SMALL_FILES, listing.weight_file()) if n in listing.files]
    for name in small:  # small files first: the config says whether it is a BLOOM, the index names the shards
        _fetch(listing, name, folder, snapshot)
    if "config.json" not in small:
        raise CheckpointError(f"{repo_id}: the repo has no config.json")
    check_bloom_config(snapshot / "config.json", repo_id)
    weights = _weight_files(listing, snapshot)
    blobs = [folder / "blobs" / listing.files[n].etag for n in weights]
    have = sum(_size(b) for b in blobs)
    to_fetch = sum(listing.files[n].size for n in weights) - have
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    on_plan(
        f"{repo_id}: {len(weights)} weight file{'s' * (len(weights) != 1)}, {format_size(to_fetch)} to fetch into "
        f"{folder}; you have {format_size(free)} free"
    )
    if free < to_fetch + SPARE_BYTES:
        raise UsageError(f"{folder}: {free / 1e9:.2f} GB free, {repo_id} needs {to_fetch / 1e9:.2f} GB more")
    started = time.perf_counter()
    fetched = 0

    def count(n: int) -> None:
        nonlocal fetched
        fetched += n
        if n:
            progress(done)

    def progress(files_done: int) -> None:
        on_progress(HubProgress(min(files_done + 1, len(weights)), len(weights), fetched, to_fetch, files_done,
                                len(weights), time.perf_counter() - started, action="fetched"))  # fmt: skip

    done = 0
    for done, name in enumerate(weights):
        _fetch(listing, name, folder, snapshot, count, should_stop)
        progress(done + 1)
    return snapshot


def _weight_files(listing: RepoListing, snapshot: Path) -> list[str]:
    name = listing.weight_file()
    return sorted(set(weight_map(listing, snapshot / name).values())) if name.endswith(".json") else [name]


def _size(blob: Path) -> int:
    partial = blob.with_name(blob.name + INCOMPLETE)
    return blob.stat().st_size if blob.is_file() else partial.stat().st_size if partial.is_file() else 0


def _fetch(
    listing: RepoListing,
    name: str,
    folder: Path,
    snapshot: Path,
    on_bytes: Callable[[int], None] = lambda _n: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """One file into the cache's blob (unless there) and its snapshot link; the ref updated to this commit."""
    blob = folder / "blobs" / listing.files[name].etag
    if not blob.is_file():
        try:
            fetch_file(listing, name, blob, on_bytes, should_stop)
        except ChecksumMismatch:  # once more from the start; a second mismatch is the user's to see
            fetch_file(listing, name, blob, on_bytes, should_stop)
    link = snapshot / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.unlink(missing_ok=True)  # a dangling link left by a cache cleaned by hand
        os.symlink(os.path.relpath(blob, link.parent), link)
    if listing.revision != listing.commit:
        ref = folder / "refs" / listing.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(listing.commit)
