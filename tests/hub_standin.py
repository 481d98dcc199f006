"""A stand-in for the Hugging Face hub on 127.0.0.1, serving folders as model repos the way huggingface_hub reads
them: `GET /api/models/{repo}[/revision/{rev}]` (the file list with sizes, and each LFS file's sha256 and size
with `?blobs=true`), and `HEAD`/`GET /{repo}/resolve/{rev}/{file}` with X-Repo-Commit, ETag / X-Linked-Etag and
X-Linked-Size, honouring byte ranges. Errors carry the hub's X-Error-Code. Faults for tests: a rate limit, a hub
that dies after serving N bytes of a file, a file served corrupted, a gated repo."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".bin", ".safetensors")
CHUNK = 64 * 1024


@dataclass
class Repo:
    folder: Path
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False


@dataclass
class Faults:
    rate: float | None = None
    """Bytes per second for every file body (None: as fast as it goes)."""
    die_after: dict[str, int] = field(default_factory=dict)
    """File name -> bytes of its body served before the whole hub goes down."""
    corrupt: dict[str, int] = field(default_factory=dict)
    """File name -> how many more times to serve it with one byte flipped."""


class HubStandIn:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.requests: list[tuple[str, str, str | None]] = []
        """(method, path, Range header) of every request, in order."""
        self._hashes: dict[Path, str] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.down = False

    def add(self, repo_id: str, folder: Path, **kwargs: object) -> Repo:
        self.repos[repo_id] = Repo(Path(folder), **kwargs)  # type: ignore[arg-type]
        return self.repos[repo_id]

    def fetched(self, name: str) -> int:
        """How many GETs asked for `name`."""
        return sum(1 for m, p, _r in self.requests if m == "GET" and p.endswith("/" + name))

    def go_down(self) -> None:
        """Stop answering: the listening socket is closed, so new connections are refused."""
        self.down = True
        threading.Thread(target=self._server.shutdown, daemon=True).start()
        self._server.socket.close()

    def close(self) -> None:
        if not self.down:
            self._server.shutdown()
        self._server.server_close()

    def sha256(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._hashes[path]

    def listing(self, repo_id: str, repo: Repo, blobs: bool) -> dict:
        siblings = []
        for path in sorted(p for p in repo.folder.rglob("*") if p.is_file()):
            name = path.relative_to(repo.folder).as_posix()
            entry: dict[str, object] = {"rfilename": name}
            if blobs:
                size = path.stat().st_size
                entry |= {"size": size, "blobId": hashlib.sha1(path.read_bytes()).hexdigest()}
                if name.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {"size": size, "sha256": self.sha256(path), "pointerSize": 134}
            siblings.append(entry)
        return {
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "siblings": siblings,
        }


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: object) -> None:
            pass

        def _error(self, status: int, code: str) -> None:
            body = json.dumps({"error": code}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _repo(self, repo_id: str, revision: str | None) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound")
                return None
            if revision not in (None, "main", repo.commit):
                self._error(404, "RevisionNotFound")
                return None
            return repo

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self._serve()

        def do_GET(self) -> None:  # noqa: N802
            self._serve()

        def _serve(self) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                repo = self._repo(m.group(1), m.group(2))
                if repo is not None:
                    body = json.dumps(hub.listing(m.group(1), repo, "blobs=" in (url.query or ""))).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                return
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                repo = self._repo(m.group(1), m.group(2))
                if repo is not None:
                    self._file(repo, m.group(3))
                return
            self._error(404, "EntryNotFound")

        def _file(self, repo: Repo, name: str) -> None:
            path = repo.folder / name
            if not path.is_file():
                self._error(404, "EntryNotFound")
                return
            if repo.gated and "authorization" not in {k.lower() for k in self.headers}:
                self._error(401, "GatedRepo")
                return
            data = _read(path)
            lfs = name.endswith(LFS_SUFFIXES)
            etag = hub.sha256(path) if lfs else hashlib.sha1(data).hexdigest()
            start = 0
            if (r := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-", r.strip())):
                start = int(m.group(1))
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{etag}"')
            if lfs:
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if self.command == "HEAD":
                return
            body = bytearray(data[start:])
            if hub.faults.corrupt.get(name, 0) > 0 and body:
                hub.faults.corrupt[name] -= 1
                body[len(body) // 2] ^= 0xFF
            limit = hub.faults.die_after.get(name)
            sent = start
            began = time.perf_counter()
            for i in range(0, len(body), CHUNK):
                piece = bytes(body[i : i + CHUNK])
                if limit is not None and sent + len(piece) > limit:
                    self.wfile.write(piece[: max(0, limit - sent)])
                    self.wfile.flush()
                    hub.faults.die_after.pop(name)
                    hub.go_down()
                    self.close_connection = True
                    self.connection.close()
                    return
                self.wfile.write(piece)
                sent += len(piece)
                if hub.faults.rate:  # paced against the start, so sleep's overshoot does not add up
                    ahead = began + (sent - start) / hub.faults.rate - time.perf_counter()
                    if ahead > 0:
                        time.sleep(ahead)

    return Handler


_CACHE: dict[Path, bytes] = {}


def _read(path: Path) -> bytes:
    """A file's bytes, kept: a benchmark serves each shard once, tests serve small files many times."""
    if path not in _CACHE:
        _CACHE[path] = path.read_bytes()
    return _CACHE[path]


def main() -> None:
    """`python -m tests.hub_standin FOLDER REPO_ID [--rate BYTES_PER_S]`: serve FOLDER as REPO_ID until killed,
    printing the address on the first line (a benchmark runs the hub in its own process)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("repo_id")
    parser.add_argument("--rate", type=float)
    args = parser.parse_args()
    hub = HubStandIn()
    hub.add(args.repo_id, args.folder)
    hub.faults.rate = args.rate
    print(hub.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
