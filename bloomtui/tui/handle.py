"""What the app runs prompts on, for a local engine (engine_handle.RealEngine) and a server
(remote_handle.RemoteHandle) alike, so the app never branches on where tokens come from.

The run entry points exist once, here: one prompt is a batch of one, and a handle that runs one sequence at a
time refuses more before anything starts. A handle says only how it runs a `Batch` and how it closes.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from bloomtui.engine import SamplingParams, events
from bloomtui.errors import UsageError

if TYPE_CHECKING:
    from bloomtui.tui.remote_state import RemoteInfo
    from bloomtui.tui.run_state import ModelInfo

Results = list[events.Done | events.Cancelled]
"""One per sequence, in prompt order."""


@dataclass(frozen=True)
class DraftRequest:
    """How a run drafts: PROMPT_LOOKUP, or the draft model the handle opened (`ModelSpec.draft`)."""

    source: str
    tokens: int | None = None
    """Fixed K; None adapts."""
    tree: int | str | None = None
    """Token trees (DraftSpec.tree): "auto", a node count, or None/"off" for chains."""


@dataclass(frozen=True)
class Batch:
    """One run as a handle gets it: prompts[i] with params[i], side by side; events carry `sequence=i`."""

    prompts: list[str]
    params: list[SamplingParams]
    on_event: events.EventSink
    cancel: threading.Event
    draft: DraftRequest | None = None


class EngineHandle(ABC):
    info: ModelInfo | RemoteInfo
    baseline_rss: int = 0
    """Process RSS just before the model loaded: the runtime the RAM budget does not cover."""
    multi_sequence: bool = False
    """Whether one run may carry several sequences (samples side by side); a server runs one. A handle without
    the attribute (a wrapper in a test) counts as False."""
    one_sequence_error = "this model runs one sequence at a time"
    """What `generate_many` raises for several prompts where `multi_sequence` is False."""

    def generate(
        self,
        prompt: str,
        params: SamplingParams,
        on_event: events.EventSink,
        cancel: threading.Event,
        draft: DraftRequest | None = None,
    ) -> events.Done | events.Cancelled:
        return self.generate_many([prompt], [params], on_event, cancel, draft)[0]

    def generate_many(
        self,
        prompts: list[str],
        params: list[SamplingParams],
        on_event: events.EventSink,
        cancel: threading.Event,
        draft: DraftRequest | None = None,
    ) -> Results:
        """prompts[i] with params[i], side by side in shared passes; events carry `sequence=i`."""
        if len(prompts) != 1 and not self.multi_sequence:
            raise UsageError(self.one_sequence_error)
        return self._run(Batch(prompts, params, on_event, cancel, draft))

    @abstractmethod
    def _run(self, batch: Batch) -> Results:
        """Run `batch`, which this handle can take (one sequence unless `multi_sequence`)."""

    def draft_name(self, draft: DraftRequest | None) -> str | None:
        """What drafts a run asked to draft with `draft`, for the panel; None when nothing will."""
        return None

    def rss(self) -> int:
        return psutil.Process().memory_info().rss

    @abstractmethod
    def close(self) -> None: ...
