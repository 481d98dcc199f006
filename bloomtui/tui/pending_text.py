"""Generated text on its way from the engine thread to the output pane.

A small model makes a token every few milliseconds. A message and a redraw for each one kept the UI thread as
busy as the engine, and on a 2-core machine it took half the engine's speed (the demo ran at 0.4x the
headless CLI). So the engine thread only appends here, under a lock, and the UI takes everything pending a
few times a second and shows it in one append. Nothing is dropped or reordered: verified pieces and a draft's
guesses keep their order, since a guess is consumed by the pieces that follow it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from bloomtui.engine import events


@dataclass(frozen=True)
class Piece:
    """Text of run `run`: verified (part of the output) or a draft's guess (shown dimmed until checked)."""

    run: int
    text: str
    guess: bool = False
    sequence: int = 0
    """Which of the run's samples it belongs to (0-based)."""
    ended: events.Done | events.Cancelled | None = None
    """Set (with no text) where a sample of a run with several ended: its pane shows how, while the rest go on."""


class PendingText:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: list[Piece] = []

    def add(self, run: int, text: str, guess: bool = False, sequence: int = 0) -> None:
        """From the engine thread."""
        with self._lock:
            self._pieces.append(Piece(run, text, guess, sequence))

    def end(self, run: int, result: events.Done | events.Cancelled) -> None:
        """From the engine thread: sample `result.sequence` ended, after every piece of it added so far."""
        with self._lock:
            self._pieces.append(Piece(run, "", sequence=result.sequence, ended=result))

    def take(self) -> list[Piece]:
        """Everything added since the last take, oldest first."""
        with self._lock:
            pieces, self._pieces = self._pieces, []
        return pieces
