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
