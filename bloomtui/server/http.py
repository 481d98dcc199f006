"""The HTTP side of `bloomtui serve`: Starlette routes for the OpenAI-compatible API, /health and /metrics.

Requests are checked (request_fields.py) on the event loop, then handed to the scheduler thread as a Job whose
events come back through `call_soon_threadsafe`. A streamed response watches for its client going away and
sets the job's cancel flag, so its rows leave the batch after the current block; so does a client that
drops a request waiting for a whole response.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bloomtui.engine.events import Cancelled, Done, Error, Event, TokenGenerated
from bloomtui.engine.weights.generation_config import GenerationDefaults
from bloomtui.errors import BloomtuiError
from bloomtui.server.metrics import prometheus_text
from bloomtui.server.openai_format import Reply
from bloomtui.server.request_fields import NO_DEFAULTS, ApiError, parse, read_json
from bloomtui.server.scheduler import Job, QueueFull, Scheduler

if TYPE_CHECKING:
    from bloomtui.engine.generate import Engine

MAX_BODY_BYTES = 16 * 2**20
POLL_SECONDS = 0.05
"""How often a request waiting on the engine looks whether its client is still there."""


@dataclass(frozen=True)
class ServeOptions:
    model_id: str
    max_batch: int
    max_context: int
    api_key: str | None = None
    defaults: GenerationDefaults = NO_DEFAULTS
    """What fills the sampling fields a request leaves out: the model's generation_config.json, or nothing."""


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def log_request(reply: Reply, seconds: float, cancelled: bool, stream=sys.stderr) -> None:  # noqa: ANN001
    out = reply.completion_tokens
    rate = out / seconds if seconds > 0 else 0.0
    note = ", cancelled" if cancelled else ""
    print(
        f"{reply.id}: {reply.prompt_tokens} tokens in, {out} out, {seconds:.2f} s, {rate:.1f} tokens/s{note}",
        file=stream,
        flush=True,
    )


class Api:
    def __init__(self, engine: Engine, scheduler: Scheduler, options: ServeOptions) -> None:
        self.engine, self.scheduler, self.options = engine, scheduler, options
        self.started = int(time.time())

    # --- plain routes ---------------------------------------------------------------------------------------

    async def health(self, _request: Request) -> Response:
        if self.scheduler.error:
            return JSONResponse({"status": "error", "message": self.scheduler.error}, status_code=503)
        return JSONResponse({"status": "ok", "model": self.options.model_id})

    async def models(self, _request: Request) -> Response:
        entry = {"id": self.options.model_id, "object": "model", "created": self.started, "owned_by": "bloomtui"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def metrics(self, _request: Request) -> Response:
        return PlainTextResponse(prometheus_text(self.scheduler.totals), media_type="text/plain; version=0.0.4")

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    # --- generation -----------------------------------------------------------------------------------------

    async def _generate(self, request: Request, kind: str) -> Response:
        raw = await _body(request)
        body = read_json(raw)
        model = body.get("model")
        if model is not None and model != self.options.model_id:
            raise ApiError(
                404,
                f"the model {str(model)[:100]!r} does not exist here; this server serves {self.options.model_id!r}",
                param="model",
                code="model_not_found",
            )
        o = self.options
        parsed = parse(body, kind, self.engine, o.max_batch, o.max_context, o.defaults)
        prompt_tokens = sum(len(p) for p in parsed.prompts)
        reply = Reply(kind, o.model_id, len(parsed.params), prompt_tokens, parsed.logprobs, self.engine)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Event, dict | None]] = asyncio.Queue()
        job = Job(
            parsed.prompts,
            parsed.params,
            sink=lambda k, e, figures: loop.call_soon_threadsafe(queue.put_nowait, (k, e, figures)),
            top_logprobs=parsed.top_logprobs,
        )
        try:
            self.scheduler.submit(job)
        except QueueFull:
            raise ApiError(
                503,
                f"the server is busy: {self.scheduler.max_queue} requests are waiting already (--max-queue); "
                "retry shortly",
                code="queue_full",
                kind="server_error",
                headers={"Retry-After": "2"},
            ) from None
        except BloomtuiError as exc:
            raise ApiError(503, exc.message, code="unavailable", kind="server_error") from None
        if parsed.stream:
            body_stream = self._stream(request, job, reply, queue, parsed.include_usage)
            return StreamingResponse(body_stream, media_type="text/event-stream")
        return await self._whole(request, job, reply, queue)

    async def _next(self, request: Request, job: Job, queue: asyncio.Queue) -> tuple[int, Event, dict | None] | None:
        """The job's next event, or None once its client has gone (the job is then cancelled)."""
        while True:
            try:
                return await asyncio.wait_for(queue.get(), POLL_SECONDS)
            except asyncio.TimeoutError:
                if await _gone(request):
                    job.cancel.set()
                    return None

    def _apply(self, reply: Reply, k: int, event: Event) -> None:
        if k < 0:  # the whole job: cancelled before it ran (a shutdown), failed, or the engine failed
            for j in range(len(reply.choices)):
                if not reply.choices[j].ended:
                    reply.end(j, None, aborted=True)
            if isinstance(event, Error):
                raise ApiError(500, f"generation failed: {event.message}", code="engine_error", kind="server_error")
        elif isinstance(event, TokenGenerated):
            reply.token(k, event)
        elif isinstance(event, Done):
            reply.end(k, event)
        elif isinstance(event, Cancelled):
            reply.end(k, None, aborted=True)

    async def _whole(self, request: Request, job: Job, reply: Reply, queue: asyncio.Queue) -> Response:
        started = time.perf_counter()
        try:
            while not reply.finished:
                got = await self._next(request, job, queue)
                if got is None:
                    return Response(status_code=499)  # nobody reads it
                self._apply(reply, *got[:2])
        finally:
            log_request(reply, time.perf_counter() - started, job.cancel.is_set())
        return JSONResponse(reply.whole())

    async def _stream(
        self, request: Request, job: Job, reply: Reply, queue: asyncio.Queue, include_usage: bool
    ) -> AsyncIterator[str]:
        started = time.perf_counter()
        try:
            while not reply.finished:
                got = await self._next(request, job, queue)
                if got is None:
                    return
                k, event, figures = got
                before = [c.ended for c in reply.choices]
                try:
                    self._apply(reply, k, event)
                except ApiError as exc:
                    yield sse(exc.body())
                    return
                if isinstance(event, TokenGenerated) and (chunk := reply.chunk(k, event)) is not None:
                    # Beyond the API: the engine's figures, which bloomtui's remote panel shows.
                    chunk["bloomtui"] = figures
                    yield sse(chunk)
                for j, c in enumerate(reply.choices):
                    if c.ended and not before[j]:
                        yield sse(reply.final(j))
            if include_usage:
                yield sse(reply.usage_chunk())
            yield sse("[DONE]")
        finally:
            if not reply.finished:
                job.cancel.set()  # the client went away (or the stream failed): free its rows
            log_request(reply, time.perf_counter() - started, job.cancel.is_set())


async def _body(request: Request) -> bytes:
    """The request's body, refused past MAX_BODY_BYTES (a prompt that size is far past any context)."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is over {MAX_BODY_BYTES // 2**20} MiB", code="body_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over {MAX_BODY_BYTES // 2**20} MiB", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _gone(request: Request) -> bool:
    try:
        return await request.is_disconnected()
    except RuntimeError:  # the response has started streaming and owns the receive channel
        return False


def _auth(key: str | None) -> Callable:
    def middleware(app):  # noqa: ANN001, ANN202 - ASGI
        async def guarded(scope, receive, send) -> None:  # noqa: ANN001
            if key is None or scope["type"] != "http" or scope["path"] == "/health":
                return await app(scope, receive, send)
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                error = ApiError(
                    401,
                    "a valid API key is needed (Authorization: Bearer KEY)",
                    code="invalid_api_key",
                    kind="authentication_error",
                )
                return await JSONResponse(error.body(), status_code=401)(scope, receive, send)
            return await app(scope, receive, send)

        return guarded

    return middleware


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    error = ApiError(exc.status_code, str(exc.detail), code=kind)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


def build_app(engine: Engine, scheduler: Scheduler, options: ServeOptions) -> Starlette:
    api = Api(engine, scheduler, options)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: _api_error, HTTPException: _http_error})
    return _auth(options.api_key)(app)
