"""A small OpenAI-style server on 127.0.0.1 that streams scripted text or fails on purpose.

It speaks just enough of vLLM's `/v1/models` and `/v1/completions` (server-sent events) for the client, and
each `mode` breaks one thing: a status code, a malformed or truncated stream, a stall. How it tells its token
count is set apart (`sends`, `tokens_per_chunk`, `refuses`), to stand for the servers that differ there. Every
wait is bounded and `close()` releases them, so a test never hangs on it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PIECES = ("The", " SQL", " command", " is", ":", " SELECT", " *", " FROM", " users", ";")
EXTRAS = ("top_k", "repetition_penalty", "ignore_eos")
ERROR_BODIES: dict[int, dict[str, Any]] = {
    400: {"object": "error", "message": "max_tokens must be at least 1, got 0.", "type": "BadRequestError"},
    401: {"error": {"message": "Unauthorized", "type": "invalid_request_error"}},
    403: {"error": "Forbidden: this key may not use the model", "error_type": "forbidden"},
    404: {"error": {"message": "The model `bloom-test` does not exist.", "type": "NotFoundError", "code": 404}},
    500: {"detail": "Internal Server Error"},
    503: {"error": "Model is overloaded", "error_type": "overloaded"},
}
SLOW_LIMIT = 2000
"""Pieces the slow stream sends at most before it gives up on being cancelled."""


class FaultServer:
    def __init__(self, mode: str = "ok", models: tuple[str, ...] = ("bloom-test",)) -> None:
        self.mode = mode
        self.models = models
        self.pieces = PIECES
        self.finish_reason = "length"
        self.tokens_per_chunk = 1
        """Tokens (pieces) joined into each streamed chunk: transformers serve 5 sends a chunk per word."""
        self.sends: set[str] = {"usage"}
        """What it says of the token count when asked: "usage" (a last usage-only chunk, if the request asks with
        stream_options), "logprobs" (each chunk lists its tokens, if the request asks for logprobs)."""
        self.refuses: tuple[str, ...] = ()
        """Request fields it answers 422 to, naming them as transformers serve does."""
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.streaming = threading.Event()
        """Set once the slow stream has sent its first pieces."""
        self.disconnected = threading.Event()
        """Set when the client closed a stream before its end."""
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fault = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@contextmanager
def fault_server(mode: str = "ok", **kwargs: Any) -> Iterator[FaultServer]:
    server = FaultServer(mode, **kwargs)
    try:
        yield server
    finally:
        server.close()


@contextmanager
def unanswered_port() -> Iterator[str]:
    """A URL whose port accepts no connection: its one-slot backlog is already full, so connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for sock in (*fillers, listener):
            sock.close()


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    @property
    def fault(self) -> FaultServer:
        return self.server.fault  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _json(self, status: int, data: Any) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _status_mode(self) -> int | None:
        return int(self.fault.mode) if self.fault.mode.isdigit() else None

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.fault.headers.append(dict(self.headers))
        status = self._status_mode()
        if status in (401, 403):
            return self._json(status, ERROR_BODIES[status])
        if self.path != "/v1/models":
            return self._json(404, {"detail": "Not Found"})
        models = [{"id": m, "object": "model", "owned_by": "vllm", "max_model_len": 2048} for m in self.fault.models]
        self._json(200, {"object": "list", "data": models})

    def do_POST(self) -> None:  # noqa: N802
        fault = self.fault
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fault.requests.append(body)
        fault.headers.append(dict(self.headers))
        status = self._status_mode()
        if self.path != "/v1/completions":
            return self._json(404, {"detail": "Not Found"})
        if status is not None:
            return self._json(status, ERROR_BODIES[status])
        if refused := [name for name in fault.refuses if name in body]:
            return self._json(422, {"detail": f"Unexpected fields in the request: {set(refused)}"})
        if fault.mode == "reject-extras" and any(name in body for name in EXTRAS):
            return self._json(400, {"object": "error", "message": "extra fields not permitted", "type": "BadRequest"})
        if fault.mode == "stall-headers":
            fault.release.wait(30)
            return
        if fault.mode == "not-sse":
            return self._json(200, {"choices": [{"text": "whole answer", "finish_reason": "length"}]})
        self._stream(fault, body)

    def _stream(self, fault: FaultServer, body: dict[str, Any]) -> None:
        mode = fault.mode
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if mode == "cut-body":
            self.send_header("Content-Length", "100000")  # promises more than it sends
        self.end_headers()
        if mode == "slow":
            return self._slow(fault)
        pieces = fault.pieces[: body.get("max_tokens", len(fault.pieces))]
        k = fault.tokens_per_chunk
        for i, start in enumerate(range(0, len(pieces), k)):
            tokens = pieces[start : start + k]
            self._event(_chunk("".join(tokens), logprobs=self._logprobs(body, tokens)))
            if i == 1 and mode in ("malformed", "bad-shape", "stream-error", "truncated", "cut-body", "stall-stream"):
                break
        if mode == "malformed":
            self.wfile.write(b'data: {"choices": [{"text": "unfinished\n\n')
        elif mode == "bad-shape":
            self._event({"choices": "not a list"})
        elif mode == "stream-error":
            self._event({"error": "CUDA out of memory", "error_type": "generation"})
        elif mode == "stall-stream":
            self.wfile.flush()
            fault.release.wait(30)
        elif mode not in ("truncated", "cut-body"):
            self._event(_chunk("", fault.finish_reason))
            if "usage" in fault.sends and (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 7, "completion_tokens": len(pieces), "total_tokens": 7 + len(pieces)}
                self._event({**_chunk(""), "choices": [], "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _slow(self, fault: FaultServer) -> None:
        """One piece every 20 ms until the client goes away (or SLOW_LIMIT pieces)."""
        try:
            for i in range(SLOW_LIMIT):
                self._event(_chunk(f" w{i}"))
                self.wfile.flush()
                if i == 3:
                    fault.streaming.set()
                if fault.release.wait(0.02):
                    return
        except (BrokenPipeError, ConnectionResetError):
            fault.disconnected.set()

    def _logprobs(self, body: dict[str, Any], tokens: tuple[str, ...]) -> dict[str, Any] | None:
        """The completions API's logprobs of a chunk's tokens, when asked for and sent."""
        if "logprobs" not in self.fault.sends or body.get("logprobs") is None:
            return None
        return {"tokens": list(tokens), "token_logprobs": [-1.0] * len(tokens), "top_logprobs": None}

    def _event(self, data: dict[str, Any]) -> None:
        self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())


def _chunk(text: str, finish_reason: str | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "bloom-test", "choices": [choice]}
