"""What the engine panel's and the server panel's trackers share (run_state.RunTracker, remote_state.RemoteTracker).

A worker thread feeds every event of a run in; the UI thread reads whole immutable snapshots a few times a second
and redraws only when `version` moved. The lock, the versioning and the rule that events of an older run (one
cancelled or replaced) are dropped live here once; each tracker says only how an event changes its snapshot.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Generic, Literal, TypeVar

from bloomtui.engine import events

State = Literal["empty", "loading", "idle", "running", "done", "cancelled", "error"]
HISTORY = 40
"""Values a sparkline keeps (streamed-block read speeds, a server's token rates)."""


@dataclass(frozen=True)
class Snapshot:
    """How every tracker's snapshot begins: what the panels' state line shows, and the version the UI compares."""

    version: int = 0
    state: State = "empty"
    message: str = ""
    """One line under the title: what is loading, the stop reason, the error."""


SnapT = TypeVar("SnapT", bound=Snapshot)


@dataclass
class Live(Generic[SnapT]):
    """Mutable state, only touched under the tracker's lock."""

    snap: SnapT
    run: int = 0
    """The run whose events count."""
    token_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=8))
    """The latest tokens' times, for a recent rate."""
    history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))


class SnapshotTracker(ABC, Generic[SnapT]):
    """Thread-safe fold of a run's events into snapshots; events of an older run are ignored."""

    def __init__(self, live: Live[SnapT]) -> None:
        self._lock = threading.Lock()
        self._live = live

    def snapshot(self) -> SnapT:
        with self._lock:
            return self._live.snap

    def feed(self, run: int, event: events.Event) -> None:
        with self._lock:
            if run == self._live.run:
                self._fold(event)

    @abstractmethod
    def _fold(self, event: events.Event) -> None:
        """Take `event` of the current run into the snapshot (the lock is held)."""

    def _set(self, **changes: object) -> None:
        live = self._live
        live.snap = replace(live.snap, version=live.snap.version + 1, **changes)

    def _reopen(self) -> None:
        """Fresh live state for a model just opened; its snapshot (version, last figures) and run count go on."""
        live = self._live
        self._live = type(live)(snap=live.snap, run=live.run)

    def _begin(self, run: int) -> None:
        """Run `run` starts: from now on, events of older runs are dropped."""
        self._live.run = run
        self._live.token_seconds.clear()
