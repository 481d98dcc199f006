"""The speed of a run's samples: each sample's own tokens/s, and all of them together.

The samples of a prompt share every pass over the weights, so a pass costs about what one sample's would, and
their rates add up. Folded from the engine's per-sequence events, under the tracker's lock (run_state.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from bloomtui.engine import events

RECENT_TOKENS = 8
"""Tokens of each sample the running rate averages over (the panel's single-run rate uses as many)."""


@dataclass
class SampleRates:
    """Tokens/s of each sample of a run, from its token events and, once it ends, its Done event."""

    count: int
    tokens: list[int] = field(default_factory=list)
    recent: list[deque[float]] = field(default_factory=list)
    final: list[float | None] = field(default_factory=list)
    ended: list[events.Done | events.Cancelled | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.count
        self.tokens, self.final, self.ended = [0] * n, [None] * n, [None] * n
        self.recent = [deque(maxlen=RECENT_TOKENS) for _ in range(n)]

    def token(self, event: events.TokenGenerated) -> None:
        i = event.sequence
        self.tokens[i] = event.index + 1
        if event.index > 0:  # the prefill pass covers the whole prompt: not a per-token cost
            self.recent[i].append(event.seconds)

    def end(self, result: events.Done | events.Cancelled) -> None:
        self.ended[result.sequence] = result
        self.tokens[result.sequence] = result.new_tokens
        if isinstance(result, events.Done) and result.tokens_per_second > 0:
            self.final[result.sequence] = result.tokens_per_second

    @property
    def all_ended(self) -> bool:
        return all(result is not None for result in self.ended)

    def rate(self, i: int) -> float | None:
        """Sample i's tokens/s: its own over the whole run once it is done, else over its recent tokens."""
        if self.final[i] is not None:
            return self.final[i]
        recent = self.recent[i]
        mean = sum(recent) / len(recent) if recent else 0.0
        return 1 / mean if mean > 0 else None

    def rates(self) -> tuple[float | None, ...]:
        return tuple(self.rate(i) for i in range(self.count))

    def aggregate(self) -> float | None:
        """Tokens/s of all samples together: over the run once every sample is done, else what the samples
        still running make now (they share each pass, so their rates add up)."""
        if self.all_ended:
            whole = aggregate_rate(result for result in self.ended if result is not None)
            if whole is not None:
                return whole
        running = [self.rate(i) for i in range(self.count) if self.ended[i] is None]
        known = [rate for rate in running if rate is not None]
        return sum(known) if known else None


def aggregate_rate(results: Iterable[events.Done | events.Cancelled]) -> float | None:
    """Decoded tokens of the samples that finished, over the decode time of the longest: the samples share
    every pass, and the last to end took part in all of them. None when none finished."""
    done = [result for result in results if isinstance(result, events.Done) and result.decode_seconds > 0]
    if not done:
        return None
    return sum(result.new_tokens - 1 for result in done) / max(result.decode_seconds for result in done)
