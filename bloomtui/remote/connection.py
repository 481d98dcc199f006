"""Where the server is and how to reach it: URL, API key, timeouts, the served models, and one readable line
for every way a request can fail. httpx does the HTTP; nothing here parses the protocol by hand.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from bloomtui.errors import BloomtuiError, UsageError

API_KEY_VARIABLES = ("BLOOMTUI_API_KEY", "OPENAI_API_KEY")
"""Read in this order; the key goes in an Authorization header and nowhere else (never printed or saved)."""


class RemoteError(BloomtuiError):
    """The server could not be reached, refused the request, or sent something unreadable."""

    title = "Server error"


@dataclass(frozen=True)
class RemoteOptions:
    model: str | None = None
    """The served model to use (--remote-model); None takes the only one the server lists."""
    connect_timeout: float = 10.0
    """Seconds to wait for a connection."""
    read_timeout: float = 120.0
    """Seconds the server may stay silent, before the first token (a cold server loads its model) or between
    two tokens."""

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")


def api_key() -> str | None:
    for name in API_KEY_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


def redact(text: str) -> str:
    """`text` with the API key blanked out, in case a server or a library echoes it back."""
    key = api_key()
    return text.replace(key, "***") if key else text


class Server:
    """One OpenAI-compatible API root (`http://host:8000/v1`), with the headers and timeouts of every request."""

    def __init__(self, url: str, options: RemoteOptions = RemoteOptions()) -> None:  # noqa: B008 - frozen
        try:
            parsed = httpx.URL(url.strip())
        except httpx.InvalidURL as exc:
            raise UsageError(f"{url}: not a valid server URL ({exc})") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UsageError(f"{url}: a server URL looks like http://host:8000 or https://host/v1")
        path = parsed.path.rstrip("/")
        # Users paste either the server root or the API root; the API lives under /v1 on every server we know.
        if not path.endswith("/v1"):
            path += "/v1"
        self.base = parsed.copy_with(path=path + "/", query=None, fragment=None)
        self.url = str(self.base.copy_with(username=None, password=None)).rstrip("/")
        """The API root for people: without any user:password part."""
        self.options = options
        self.timeout = httpx.Timeout(options.read_timeout, connect=options.connect_timeout)

    def headers(self) -> dict[str, str]:
        key = api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers(), timeout=self.timeout)

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, headers=self.headers(), timeout=self.timeout)

    def list_models(self) -> list[dict[str, Any]]:
        """The served models as the server describes them (GET /v1/models)."""
        try:
            with self.client() as client:
                response = client.get("models")
        except httpx.HTTPError as exc:
            raise self.failure(exc) from None
        if response.status_code >= 400:
            raise self.status_error(response.status_code, response.content, None, listing=True)
        try:
            data = response.json()["data"]
            if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise RemoteError(f"{self.url}/models: not an OpenAI-style model list") from None
        return data

    def pick_model(self) -> str:
        """--remote-model if the server serves it, else the only served model; RemoteError otherwise."""
        wanted = self.options.model
        ids = [str(m["id"]) for m in self.list_models()]
        if wanted is not None:
            if ids and wanted not in ids:
                raise RemoteError(f"{self.url} does not serve {wanted!r}; it serves: {', '.join(ids)}")
            return wanted
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise RemoteError(f"{self.url} lists no models; name one with --remote-model")
        raise RemoteError(f"{self.url} serves {len(ids)} models; choose one with --remote-model: {', '.join(ids)}")

    def failure(self, exc: httpx.HTTPError) -> RemoteError:
        """One line for a request that got no usable answer."""
        where = self.url
        if isinstance(exc, httpx.ConnectTimeout):
            return RemoteError(f"{where}: no connection within {self.options.connect_timeout:g} s (--connect-timeout)")
        if isinstance(exc, (httpx.ReadTimeout, httpx.PoolTimeout, httpx.WriteTimeout)):
            return RemoteError(f"{where}: the server went silent for {self.options.read_timeout:g} s (--read-timeout)")
        cause = _root_cause(exc)
        if isinstance(exc, httpx.ConnectError):
            if isinstance(cause, ssl.SSLError):
                if isinstance(cause, ssl.SSLCertVerificationError):
                    reason = f"certificate verify failed: {cause.verify_message}"
                else:
                    reason = cause.reason or str(cause)
                return RemoteError(f"{where}: TLS handshake failed ({reason})")
            if isinstance(cause, socket.gaierror):
                return RemoteError(f"{where}: unknown host {self.base.host!r} ({cause.strerror or cause})")
            if isinstance(cause, ConnectionRefusedError):
                return RemoteError(f"{where}: connection refused (is the server running, on this port?)")
            return RemoteError(redact(f"{where}: cannot connect ({cause or exc})"))
        if isinstance(exc, httpx.RemoteProtocolError):
            return RemoteError(redact(f"{where}: the connection broke mid-answer ({exc})"))
        return RemoteError(redact(f"{where}: {type(exc).__name__}: {exc}"))

    def status_error(self, status: int, body: bytes, model: str | None, *, listing: bool = False) -> RemoteError:
        """One line for an HTTP error answer, with the server's own explanation."""
        detail = server_message(body)
        said = f": {detail}" if detail else ""
        where = f"{self.url}/models" if listing else self.url
        if status in (401, 403):
            hint = "check" if api_key() else "set"
            names = " or ".join(API_KEY_VARIABLES)
            return RemoteError(redact(f"{where}: access denied ({status}{said}); {hint} {names}"))
        if status == 404:
            what = "the URL is not an OpenAI-compatible API" if listing else f"no model {model!r} there, or no API"
            return RemoteError(redact(f"{where}: not found (404{said}): {what}; `bloomtui info URL` lists models"))
        if status in (400, 422):
            return RemoteError(redact(f"{where}: the server refused the request ({status}{said})"))
        if status >= 500:
            return RemoteError(redact(f"{where}: server error {status}{said}"))
        return RemoteError(redact(f"{where}: unexpected answer {status}{said}"))


def server_message(body: bytes) -> str:
    """The explanation in an error body, whichever server wrote it (vLLM, TGI, FastAPI), on one line."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace")
    else:
        text = message_in(data) if isinstance(data, dict) else ""
        text = text or body.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:300] + "…" if len(text) > 300 else text


def message_in(data: dict[str, Any]) -> str:
    """The explanation in a decoded error object, or ""."""
    error = data.get("error")
    if isinstance(error, dict):  # OpenAI and vLLM: {"error": {"message": ...}}
        return str(error.get("message") or "")
    if isinstance(error, str):  # TGI: {"error": "...", "error_type": ...}
        return error
    detail = data.get("detail")
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    if detail:
        return str(detail)
    return str(data.get("message") or "")  # older vLLM: {"object": "error", "message": ...}


def _root_cause(exc: BaseException) -> BaseException | None:
    """The OS or TLS error under httpx's and httpcore's wrappers."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
        if isinstance(seen, (OSError, ssl.SSLError)):
            return seen
    return None
