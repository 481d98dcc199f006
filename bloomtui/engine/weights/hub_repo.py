"""A model repo on the Hugging Face hub as `prepare` and `download` see it: the commit a revision points to, and
every file with its size and (for LFS files) sha256, read through huggingface_hub, so its endpoint (HF_ENDPOINT),
token (HF_TOKEN or `hf auth login`), proxies and mirrors all apply. Every failure is one clear line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bloomtui.engine.weights.hub import check_reachable
from bloomtui.errors import CheckpointError, ConfigError

LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN"
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SINGLES = ("model.safetensors", "pytorch_model.bin")
SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
"""What a BLOOM repo holds besides its weights that bloomtui uses (the tokenizer, the decoding defaults)."""


@dataclass(frozen=True)
class RepoFile:
    name: str
    size: int
    sha256: str | None
    """The LFS object's sha256 (weights); None for files kept in git (config, tokenizer)."""
    blob_id: str = ""
    """The git blob's id: what the hub's ETag (and the cache's blob name) is for a file kept in git."""

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    revision: str
    """What the user asked for (a branch, tag or commit); `commit` is what it pointed to when listed."""
    commit: str
    files: dict[str, RepoFile]
    gated: bool
    token: str | None
    endpoint: str
    """The hub's address (HF_ENDPOINT, or huggingface.co)."""

    def weight_file(self) -> str:
        """The file that says where the weights are: a shard index, or the single weight file. Safetensors when
        the repo offers it (no pickle, same bytes), as Checkpoint.open prefers it."""
        for name in (WEIGHT_INDEXES[0], WEIGHT_SINGLES[0], WEIGHT_INDEXES[1], WEIGHT_SINGLES[1]):
            if name in self.files:
                return name
        raise CheckpointError(
            f"{self.repo_id}: no BLOOM weights in the repo (expected model.safetensors, pytorch_model.bin or a shard "
            f"index; it holds {', '.join(sorted(self.files)[:6]) or 'no files'})"
        )


def list_repo(repo_id: str, revision: str | None = None, endpoint: str | None = None) -> RepoListing:
    """The repo's files at `revision` (default: its main branch). Raises CheckpointError with the reason: the hub
    unreachable (within seconds), no such repo or revision, a gated repo without a login."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = endpoint or constants.ENDPOINT
    check_reachable(endpoint)
    token = get_token()
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=True, token=token)
    except GatedRepoError:
        raise CheckpointError(f"{repo_id} is gated: accept its terms on the hub, then {LOGIN_HINT}") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id}: no revision {revision!r} on the hub") from None
    except RepositoryNotFoundError:
        hint = "" if token else f" (if it is private, {LOGIN_HINT})"
        raise CheckpointError(f"{repo_id}: no such model on the hub{hint}") from None
    except Exception as exc:  # the hub answered something else: a 5xx, a proxy's error page, a timeout
        raise CheckpointError(f"{repo_id}: cannot list the repository ({type(exc).__name__}: {exc})") from None
    files = {}
    for sibling in info.siblings or ():
        lfs = sibling.lfs
        size = lfs.size if lfs is not None else sibling.size
        sha256 = lfs.sha256 if lfs is not None else None
        files[sibling.rfilename] = RepoFile(sibling.rfilename, int(size or 0), sha256, sibling.blob_id or "")
    gated = bool(getattr(info, "gated", False))
    if gated and token is None:
        raise CheckpointError(f"{repo_id} is gated: accept its terms on the hub, then {LOGIN_HINT}")
    return RepoListing(repo_id, revision or "main", str(info.sha), files, gated, token, endpoint)


def weight_map(listing: RepoListing, index: Path) -> dict[str, str]:
    """A fetched shard index's map of tensor key -> shard file, refused with the reason when it is unreadable or
    names a file the repo does not hold."""
    try:
        raw = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        mapping = {str(k): str(f) for k, f in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{listing.repo_id}: cannot read {index.name} ({exc})") from None
    missing = sorted(set(mapping.values()) - listing.files.keys())
    if missing:
        raise CheckpointError(f"{listing.repo_id}: {index.name} names {missing[0]}, which the repo does not hold")
    return mapping


def check_bloom_config(path: Path, repo_id: str) -> dict:
    """config.json's contents, refused with the reason unless it is a BLOOM's."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{repo_id}: cannot read its config.json ({exc})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != "bloom":
        raise ConfigError(f"{repo_id} is not a BLOOM model (config.json says model_type {model_type!r})")
    return raw
