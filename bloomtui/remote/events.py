"""Events only a remote run emits; consumers that do not know them ignore them, as they may any event.

A remote run speaks the engine's vocabulary (bloomtui.engine.events: TokenGenerated, Done, Cancelled, Error);
these are the few kinds it adds, on the same `Event` base.
"""

from __future__ import annotations

from typing import Literal

from bloomtui.engine.events import Done, Event

RemoteState = Literal["connecting", "waiting", "streaming"]
CountSource = Literal["usage", "logprobs", "limit", "tokenizer", "chunks"]
"""Where a remote run's token count came from, best first: the server's `usage`, its per-token `logprobs`, the
request's token limit (a run that ended by length made exactly that many), the model's tokenizer on the text
(an estimate), or the streamed chunks (a floor: a server may send several tokens in one chunk)."""

COUNT_NOTES: dict[CountSource, str] = {
    "usage": "",
    "logprobs": "counted from logprobs",
    "limit": "as many as asked for",
    "tokenizer": "estimated with the tokenizer",
    "chunks": "counted from chunks, may be low",
}
"""How a summary qualifies the count; the server's own count needs no word."""


class RemoteStatus(Event, event="remote"):
    """Where a remote run stands: "connecting" to `url`, "waiting" for the first token, or "streaming"."""

    state: RemoteState
    url: str
    model: str


class RemoteDone(Done):
    """A remote run's Done (still a `Done` with event "done"), saying where `new_tokens` came from."""

    token_count_source: CountSource = "usage"

    @property
    def count_note(self) -> str:
        """Empty for the server's own count, else a few words on how it was found (for summaries)."""
        return COUNT_NOTES.get(self.token_count_source, self.token_count_source)


class RemoteNotice(Event, event="notice"):
    """Something the user should know once, e.g. that the server refused an optional sampling field."""

    message: str


class ServerFigures(Event, event="server"):
    """What a `bloomtui serve` reports with each streamed token (other servers send nothing like it): the
    latest pass over its weights (`pass_rows` rows, the sequences of every running request, in
    `pass_seconds`, `pass_read_bytes` read from disk at `read_mb_per_s`), and its load."""

    pass_rows: int
    pass_seconds: float
    pass_read_bytes: int
    read_mb_per_s: float
    running: int
    queued: int
    passes: int

    @classmethod
    def from_chunk(cls, generation: int, data: object) -> ServerFigures | None:
        """The figures of a chunk's `bloomtui` field, or None when it has none (or not in this shape)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                generation,
                pass_rows=int(data["pass_rows"]),
                pass_seconds=float(data["pass_seconds"]),
                pass_read_bytes=int(data["pass_read_bytes"]),
                read_mb_per_s=float(data["read_mb_per_s"]),
                running=int(data["running"]),
                queued=int(data["queued"]),
                passes=int(data["passes"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
