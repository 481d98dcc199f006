"""Messages the engine workers post to the app (past-tense events, one line each).

Neither panel status nor tokens are sent as messages, so a fast engine cannot flood the queue: status is folded
into a `RunTracker` snapshot, text into `PendingText`, and the app takes both a few times a second. Text is
never dropped or replaced; a run's last pieces are in `PendingText` before its `RunEnded` is posted.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from bloomtui.engine import events
from bloomtui.tui.engine_handle import ModelSpec
from bloomtui.tui.handle import EngineHandle


@dataclass
class RunEnded(Message):
    """Run `run` finished or was cancelled (a result per sample, in order), or failed (`error` set, `results` None)."""

    run: int
    results: list[events.Done | events.Cancelled] | None
    error: str | None = None
    title: str = "Generation failed"


@dataclass
class LongPromptWarned(Message):
    """Run `run`'s prompt is longer than the model's training context; `text` says so with the numbers."""

    run: int
    text: str


@dataclass
class EngineOpened(Message):
    """Open request `request` produced an engine."""

    request: int
    spec: ModelSpec
    handle: EngineHandle
    rss: int


@dataclass
class EngineFailed(Message):
    """Open request `request` failed: before the model in use was released (it stays open), or after."""

    request: int
    spec: ModelSpec
    title: str
    message: str
    released: bool = False
