"""Events only a remote run emits; consumers that do not know them ignore them, as they may any event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from bloomtui.engine.events import Event

RemoteState = Literal["connecting", "waiting", "streaming"]


@dataclass(frozen=True)
class RemoteStatus(Event):
    """Where a remote run stands: "connecting" to `url`, "waiting" for the first token, or "streaming"."""

    event: ClassVar[str] = "remote"
    state: RemoteState
    url: str
    model: str


@dataclass(frozen=True)
class RemoteNotice(Event):
    """Something the user should know once, e.g. that the server refused an optional sampling field."""

    event: ClassVar[str] = "notice"
    message: str


@dataclass(frozen=True)
class ServerFigures(Event):
    """What a `bloomtui serve` reports with each streamed token (other servers send nothing like it): the
    latest pass over its weights (`pass_rows` rows, the sequences of every running request, in
    `pass_seconds`, `pass_read_bytes` read from disk at `read_mb_per_s`), and its load."""

    event: ClassVar[str] = "server"
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
