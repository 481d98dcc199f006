"""Polling instead of fixed pauses: tests wait for a condition, never for a guessed duration."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot


async def wait_until(pilot: Pilot, predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Let the app run until `predicate()` is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if pilot.app._exception is not None:
            raise pilot.app._exception
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.02)


async def wait_for_panel(pilot: Pilot) -> None:
    """Until the panel shows the tracker's latest snapshot (it polls at 8 Hz)."""
    from bloomtui.tui.widgets.engine_panel import EnginePanel

    app = pilot.app
    await wait_until(
        pilot,
        lambda: app.query_one(EnginePanel).snapshot.version == app.tracker.snapshot().version,  # type: ignore[attr-defined]
        what="the panel to catch up",
    )
