"""Messages the engine workers post to the app (past-tense events, one line each).

Panel status is not sent as messages: it is folded into a `RunTracker` snapshot the app polls, so a
fast engine cannot flood the queue. Tokens are messages and are never dropped or replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from bloomtui.engine import events
from bloomtui.tui.engine_handle import EngineHandle, ModelSpec


@dataclass
class TokenArrived(Message):
    """A piece of generated text for run `run`."""

    run: int
    token: events.TokenGenerated


@dataclass
class DraftArrived(Message):
    """A draft's proposal for run `run`, shown until the model has verified it."""

    run: int
    draft: events.Drafted


@dataclass
class RunEnded(Message):
    """Run `run` finished, was cancelled, or failed (`error` set, `result` None)."""

    run: int
    result: events.Done | events.Cancelled | None
    error: str | None = None
    title: str = "Generation failed"


@dataclass
class EngineOpened(Message):
    """Open request `request` produced an engine."""

    request: int
    spec: ModelSpec
    handle: EngineHandle
    rss: int


@dataclass
class EngineFailed(Message):
    """Open request `request` failed; the app stays usable without a model."""

    request: int
    spec: ModelSpec
    title: str
    message: str
