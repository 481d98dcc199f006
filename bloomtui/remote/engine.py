"""Generation on a server: `/v1/completions` with `stream: true`, turned into the local engine's events.

A server streams text, not token ids: `TokenGenerated` carries id -1 and logprob None, one event per streamed
piece (a piece may hold several tokens); the final `RemoteDone` counts the tokens from the best evidence the
stream gave (counting.py) and says which, and has no RSS or bytes read.
The stream runs on a small asyncio loop in the calling thread, so a cancel flag set from any thread closes
the connection within a poll interval, and the server, seeing the client gone, stops generating.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import EventSource, SSEError, aconnect_sse

from bloomtui.engine.decode.textstream import StopFilter
from bloomtui.engine.events import Cancelled, Error, EventSink, TokenGenerated, ignore
from bloomtui.engine.sampling_params import SamplingParams
from bloomtui.errors import BloomtuiError
from bloomtui.remote.connection import RemoteError, RemoteOptions, Server, message_in
from bloomtui.remote.counting import COUNT_FIELDS, TokenTally, served_tokenizer
from bloomtui.remote.events import RemoteDone, RemoteNotice, RemoteStatus, ServerFigures

if TYPE_CHECKING:
    from tokenizers import Tokenizer

CANCEL_POLL_SECONDS = 0.02
EXTRA_FIELDS = ("top_k", "repetition_penalty", "ignore_eos")
"""Not in the OpenAI completions API; vLLM accepts them, a strict server (transformers serve) refuses them."""
OPTIONAL_GROUPS = (EXTRA_FIELDS, tuple(COUNT_FIELDS))
"""Fields a run can do without, in the order to leave them out when a server refuses a request without naming
the field it objects to: the non-standard ones first."""


class RemoteEngine:
    """A served model, used like `Engine`: `generate` in any thread, one run at a time."""

    def __init__(self, server: Server, model: str) -> None:
        self.server = server
        self.model = model
        self.refused: set[str] = set()
        """Optional fields the server refused: later runs leave them out without a new notice."""
        self._generation = 0
        self._lock = threading.Lock()

    @classmethod
    def open(cls, url: str, options: RemoteOptions = RemoteOptions()) -> RemoteEngine:  # noqa: B008 - frozen
        """Check the server answers and pick the model. Raises BloomtuiError."""
        server = Server(url, options)
        return cls(server, server.pick_model())

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        """Nothing to free: each run opens and closes its own connection."""

    @cached_property
    def tokenizer(self) -> Tokenizer | None:
        """The served model's tokenizer if this machine has it: read once, when a count needs it."""
        return served_tokenizer(self.model)

    def generate(
        self,
        prompt: str,
        params: SamplingParams = SamplingParams(),  # noqa: B008 - frozen
        on_event: EventSink = ignore,
        cancel: threading.Event | None = None,
    ) -> RemoteDone | Cancelled:
        """Stream a continuation of `prompt`; emits events and returns the final Done or Cancelled.

        Raises BloomtuiError (after emitting an Error event) when the server fails."""
        with self._lock:
            self._generation += 1
            run = _RemoteRun(self, self._generation, params, on_event, cancel or threading.Event())
            try:
                result = asyncio.run(run.execute(prompt))
            except BloomtuiError as exc:
                on_event(Error(run.generation, exc.message))
                raise
            on_event(result)
            return result


class _RemoteRun:
    """State of one generate() call."""

    def __init__(
        self,
        engine: RemoteEngine,
        generation: int,
        params: SamplingParams,
        on_event: EventSink,
        cancel: threading.Event,
    ) -> None:
        self.engine = engine
        self.server = engine.server
        self.generation = generation
        self.params = params
        self.emit = on_event
        self.cancel = cancel
        self.stops = StopFilter(params.stop)
        self.pieces: list[str] = []
        self.started = 0.0
        self.first_at: float | None = None
        self.last_at = 0.0
        self.tally = TokenTally()

    async def execute(self, prompt: str) -> RemoteDone | Cancelled:
        stream = asyncio.ensure_future(self._stream(prompt))
        watcher = asyncio.ensure_future(self._watch(stream))
        try:
            return await stream
        except asyncio.CancelledError:
            if not self.cancel.is_set():
                raise
            # No tokenizer: reading one could delay the prompt return that a cancel promises.
            return Cancelled(self.generation, (), "".join(self.pieces), self.tally.count(None, 0)[0])
        finally:
            watcher.cancel()

    async def _watch(self, stream: asyncio.Future[Any]) -> None:
        """Cancel the stream task (closing the connection) as soon as the flag is set."""
        while not self.cancel.is_set():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
        stream.cancel()

    def _status(self, state: str) -> None:
        self.emit(RemoteStatus(self.generation, state, self.server.url, self.engine.model))  # type: ignore[arg-type]

    def body(self, prompt: str, leave_out: set[str]) -> dict[str, Any]:
        p = self.params
        body: dict[str, Any] = {"model": self.engine.model, "prompt": prompt, "max_tokens": p.max_new_tokens}
        body["stream"] = True
        body["temperature"] = 0.0 if p.greedy else p.temperature  # 0 is greedy on every server we know
        if not p.greedy and p.top_p < 1.0:
            body["top_p"] = p.top_p
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if p.top_k and not p.greedy:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        if p.ignore_eos:
            body["ignore_eos"] = True
        body.update(COUNT_FIELDS)
        return {name: value for name, value in body.items() if name not in leave_out}

    async def _stream(self, prompt: str) -> RemoteDone:
        left_out: dict[str, int] = {}
        """Optional fields this run left out after a refusal, with the refusal's status."""
        body = self.body(prompt, self.engine.refused)
        self._status("connecting")
        self.started = time.perf_counter()
        try:
            async with self.server.async_client() as client:
                while True:
                    async with aconnect_sse(client, "POST", "completions", json=body) as source:
                        response = source.response
                        if response.status_code < 400:
                            self._accept_refusal(left_out)
                            self._status("waiting")
                            return await self._read(source)
                        content = await response.aread()
                    drop = _refused_fields(body, response.status_code, content)
                    if not drop:
                        raise self.server.status_error(response.status_code, content, self.engine.model)
                    # Run without them rather than fail; kept only if the request then goes through.
                    left_out.update(dict.fromkeys(drop, response.status_code))
                    body = self.body(prompt, self.engine.refused | left_out.keys())
        except httpx.HTTPError as exc:
            raise self.server.failure(exc) from None

    def _accept_refusal(self, left_out: dict[str, int]) -> None:
        """The request went through without `left_out`: the server refused those, so later runs leave them out
        too; a refused sampling field changes the output, so say so (once per engine)."""
        self.engine.refused.update(left_out)
        extras = [name for name in EXTRA_FIELDS if name in left_out]
        if extras:
            self.emit(RemoteNotice(self.generation, _extras_notice(extras, left_out[extras[0]])))

    async def _read(self, source: EventSource) -> RemoteDone:
        finish: str | None = None
        ended = False
        try:
            async for sse in source.aiter_sse():
                if sse.data.strip() == "[DONE]":  # vLLM and TGI end with it; transformers serve just closes
                    ended = True
                    break
                chunk = self._chunk(sse.data)
                choice = chunk["choices"][0] if chunk.get("choices") else {}
                self.tally.feed(chunk, choice)
                if (figures := ServerFigures.from_chunk(self.generation, chunk.get("bloomtui"))) is not None:
                    self.emit(figures)
                text = choice.get("text") or ""
                if text and self._piece(text):
                    return self._done("stop")  # a stop string: leaving closes the stream, the server stops
                finish = choice.get("finish_reason") or finish
        except SSEError as exc:
            raise RemoteError(f"{self.server.url}: the answer is not an event stream ({exc})") from None
        if finish is None and not ended:
            raise RemoteError(f"{self.server.url}: the event stream ended before the server said it was done")
        tail = self.stops.flush()
        if tail:
            self._emit_piece(tail)
        stop = "length" if finish == "length" else "stop" if self.params.stop else "eos"
        return self._done(stop)

    def _chunk(self, data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            raise RemoteError(f"{self.server.url}: malformed event in the stream: {data[:120]!r}")
        if "error" in chunk:  # servers report a failure after the 200 as one last event
            raise RemoteError(f"{self.server.url}: the server failed mid-stream: {message_in(chunk) or data[:120]}")
        choices = chunk.get("choices", [{}])
        # A usage-only chunk has an empty list; anything else must be choice objects with text.
        if not isinstance(choices, list) or not all(
            isinstance(c, dict) and isinstance(c.get("text") or "", str) for c in choices
        ):
            raise RemoteError(f"{self.server.url}: malformed event in the stream: {data[:120]!r}")
        return chunk

    def _piece(self, text: str) -> bool:
        """Emit the streamed text (held back where a stop string may begin); True when a stop string is reached."""
        if self.first_at is None:
            self.first_at = time.perf_counter()
            self._status("streaming")
        safe, hit = self.stops.feed(text)
        self._emit_piece(safe)
        return hit

    def _emit_piece(self, text: str) -> None:
        now = time.perf_counter()
        seconds = now - (self.last_at or self.started)
        self.last_at = now
        self.pieces.append(text)
        self.emit(TokenGenerated(self.generation, len(self.pieces) - 1, -1, text, None, seconds))

    def _done(self, stop_reason: str) -> RemoteDone:
        tally = self.tally
        n, source = tally.count(stop_reason, self.params.max_new_tokens, lambda: self.engine.tokenizer)
        first = (self.first_at or time.perf_counter()) - self.started
        decode = max(0.0, self.last_at - (self.first_at or self.last_at))
        return RemoteDone(
            self.generation,
            token_ids=(),
            text="".join(self.pieces),
            prompt_tokens=tally.prompt_tokens,
            new_tokens=n,
            prefill_seconds=first,
            decode_seconds=decode,
            tokens_per_second=(n - 1) / decode if n > 1 and decode > 0 else (n / first if first > 0 else 0.0),
            peak_rss=0,
            bytes_read=0,
            stop_reason=stop_reason,
            token_count_source=source,
        )


def _refused_fields(body: dict[str, Any], status: int, content: bytes) -> list[str]:
    """The optional fields to try without after an error answer: those the server's message names (a strict
    server says which it objects to), else the first group still sent; none for any other error."""
    sent = [name for group in OPTIONAL_GROUPS for name in group if name in body]
    if status not in (400, 422) or not sent:
        return []
    said = content.decode("utf-8", "replace")
    named = [name for name in sent if re.search(rf"(?<!\w){name}(?!\w)", said)]
    first = next(group for group in OPTIONAL_GROUPS if any(name in body for name in group))
    return named or [name for name in first if name in body]


def _extras_notice(sent: list[str], status: int) -> str:
    them = "it" if len(sent) == 1 else "them"
    return (
        f"the server refused {', '.join(sent)} ({status}); running without {them} "
        f"(vLLM accepts {them}, the plain OpenAI API does not)"
    )
