"""Turning token ids into text pieces as they arrive.

Byte-level BPE splits one character (CJK, emoji) across tokens; decoding a prefix then ends in U+FFFD.
`IncrementalDecoder` holds such pieces back until the character is whole. `StopFilter` holds back text
that may be the start of a stop string, so a stop string is never half-printed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]


class IncrementalDecoder:
    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # ids before this are already emitted and need no context
        self._read = 0  # ids before this are already emitted

    def push(self, token_id: int) -> str:
        """Add a token; return the text that became final (possibly empty)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]


class StopFilter:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop string was reached)."""
        buf = self._pending + text
        hits = [buf.find(s) for s in self._stops if s in buf]
        if hits:
            self._pending = ""
            return buf[: min(hits)], True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), hold, -1):
                if buf.endswith(stop[:k]):
                    hold = k
                    break
        self._pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return pending
