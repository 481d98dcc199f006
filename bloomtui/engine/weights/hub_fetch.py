"""Fetching one file of a hub repo, resumable across runs: the bytes go to `DEST.incomplete`, which a later run
continues with a range request where the hub allows it; an LFS file's sha256 is checked before it is renamed
into place. huggingface_hub does the HTTP (its endpoint, token, proxies, retries); this adds what it does not:
a partial file that outlives the process, a byte count for progress, cancellation, and the checksum."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bloomtui.engine.weights.hub_repo import RepoListing
from bloomtui.errors import CancelRequested, CheckpointError

HASH_CHUNK = 16 * 1024**2
INCOMPLETE = ".incomplete"


@dataclass(frozen=True)
class HubProgress:
    shard: int
    """The shard being fetched (1-based; shards already done count as fetched)."""
    shards: int
    fetched: int
    """Bytes fetched by this run."""
    to_fetch: int
    """Bytes this run must fetch in all (a resumed run: what was left)."""
    units_done: int
    units: int
    seconds: float
    written: int = 0
    """Output bytes of the files this run finished (prepare; 0 for download) ..."""
    to_write: int = 0
    """... of the bytes this run must write in all."""
    action: str = "prepared"
    """What a finished unit is: a file "prepared" (prepare) or "fetched" (download)."""

    @property
    def fetch_rate(self) -> float:
        return self.fetched / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """The later of the fetch's and the conversion's finish, each at its rate so far."""
        if self.fetched <= 0 or self.seconds <= 0:
            return None
        fetch_left = (self.to_fetch - self.fetched) / self.fetch_rate
        convert_left = (self.to_write - self.written) * self.seconds / self.written if self.written else 0.0
        return max(0.0, fetch_left, convert_left)


class ChecksumMismatch(CheckpointError):
    """A fetched file's sha256 is not the hub's (it was deleted)."""


class _CountingFile:
    """The partial file http_get writes into: counts and hashes each chunk, and stops when asked. http_get may
    seek back and truncate when a server ignores a range request; the hash then restarts from what is left."""

    def __init__(self, path: Path, on_bytes: Callable[[int], None], should_stop: Callable[[], bool]) -> None:
        self.path = path
        self.on_bytes = on_bytes
        self.should_stop = should_stop
        self.file = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 - closed in __exit__
        self.hash = hashlib.sha256()
        self._rehash(os.fstat(self.file.fileno()).st_size)

    def _rehash(self, size: int) -> None:
        self.hash = hashlib.sha256()
        self.file.seek(0)
        left = size
        while left > 0:
            chunk = self.file.read(min(HASH_CHUNK, left))
            if not chunk:
                break
            self.hash.update(chunk)
            left -= len(chunk)
        self.file.truncate(size - left)
        self.file.seek(size - left)

    @property
    def resumed(self) -> int:
        return self.file.tell()

    def write(self, chunk: bytes) -> int:
        if self.should_stop():
            raise CancelRequested
        n = self.file.write(chunk)
        self.hash.update(chunk)
        self.on_bytes(len(chunk))
        return n

    def tell(self) -> int:
        return self.file.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        end = self.file.tell() if size is None else size
        self._rehash(end)
        return end

    def flush(self) -> None:
        self.file.flush()

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.file.close()


def fetch_file(
    listing: RepoListing,
    name: str,
    dest: Path,
    on_bytes: Callable[[int], None] = lambda _n: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Path:
    """Fetch `name` at the listing's commit to `dest` (resuming `dest.incomplete`); return dest. Raises
    ChecksumMismatch (the partial file deleted), CheckpointError when the connection is lost for good (the
    partial file kept for a later run), CancelRequested when should_stop() turns true."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import get_hf_file_metadata, http_get
    from huggingface_hub.utils import build_hf_headers, disable_progress_bars

    disable_progress_bars()  # the caller draws its own
    expected = listing.files[name]
    partial = dest.with_name(dest.name + INCOMPLETE)
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = hf_hub_url(listing.repo_id, name, revision=listing.commit, endpoint=listing.endpoint)
    try:
        meta = get_hf_file_metadata(url, token=listing.token)
        with _CountingFile(partial, on_bytes, should_stop) as out:
            if out.resumed > expected.size:  # not this file's start: begin again
                out.truncate(0)
            headers = build_hf_headers(token=listing.token)
            http_get(meta.location, out, resume_size=out.resumed, headers=headers, expected_size=expected.size)  # type: ignore[arg-type]
            digest = out.hash.hexdigest()
    except (CancelRequested, CheckpointError):
        raise
    except Exception as exc:  # lost connection, a 5xx after retries, a short read; the partial file stays
        kept = partial.stat().st_size if partial.exists() else 0
        raise CheckpointError(
            f"fetching {name} from {listing.repo_id} failed ({type(exc).__name__}: {_first_line(exc)}); "
            f"{kept / 1e6:.0f} of {expected.size / 1e6:.0f} MB kept: run the same command again to resume"
        ) from None
    if expected.sha256 is not None and digest != expected.sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{name}: sha256 {digest[:12]}... is not the hub's {expected.sha256[:12]}...")
    os.replace(partial, dest)
    return dest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no detail"
