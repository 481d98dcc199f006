"""The headless CLI's progress line on stderr: one line redrawn in place, only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from bloomtui.engine import events
from bloomtui.sizes import format_size


class StatusLine:
    """Renders engine events as a single status line, at most ~10 redraws a second."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._last_draw = 0.0
        self._width = 0
        self._read_bytes = 0
        self._read_seconds = 0.0
        self._tokens = 0

    def __call__(self, event: events.Event) -> None:
        if not self.enabled:
            return
        if isinstance(event, events.LoadProgress):
            pct = 100 * event.done_bytes / max(1, event.total_bytes)
            self._draw(f"loading {pct:3.0f}%  {format_size(event.done_bytes)} / {format_size(event.total_bytes)}")
        elif isinstance(event, events.BlockDone):
            self._read_bytes += event.bytes
            self._read_seconds += event.read_seconds
            speed = self._read_bytes / self._read_seconds / 1e6 if self._read_seconds else 0.0
            self._draw(
                f"{event.kind} block {event.index + 1}/{event.total}  token {self._tokens + 1}  "
                f"read {speed:.0f} MB/s  RSS {format_size(event.rss)}"
            )
        elif isinstance(event, events.TokenGenerated):
            self._tokens += 1

    def _draw(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self.stream.write("\r" + text.ljust(self._width) + "\r")
        self._width = len(text)
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
