"""Typed events the engine emits while it loads and generates.

Every consumer (the Textual app, the headless CLI, the benchmarks) reads the same stream. Events are
small frozen dataclasses; `generation` numbers the run so a UI can drop stale events from a cancelled one.
`to_json()` gives the CLI's `--json` objects. The remote client and perplexity scoring add their own kinds on
the same base (bloomtui.remote.events, decode/scoring.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_kwargs: object) -> Callable[[type], type]:
        """Only type checkers read it (PEP 681; `typing` has it from 3.11 on, and 3.10 is supported)."""
        return lambda cls: cls


Phase = Literal["loading", "reading", "computing", "sampling"]
PassKind = Literal["prefill", "decode", "score", "verify"]


@dataclass_transform(frozen_default=True)
@dataclass(frozen=True)
class Event:
    """Base class: every event names its kind in `event` for JSON consumers.

    A subclass is a frozen dataclass without a decorator, and names its kind in the class line:
    `class LoadProgress(Event, event="load")` (one that names none keeps its parent's). Decorating it again
    fails: a frozen dataclass cannot be made one twice."""

    event: ClassVar[str] = "event"
    generation: int

    def __init_subclass__(cls, event: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if event is not None:
            cls.event = event
        dataclass(frozen=True)(cls)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {"event": self.event, **data}


class LoadProgress(Event, event="load"):
    """Resident weights being read into RAM when a model opens (generation is 0)."""

    done_bytes: int
    total_bytes: int
    what: str


class PhaseChanged(Event, event="phase"):
    """The engine moved to another phase of a pass: waiting on a read, computing a block, or sampling.

    Lossy status: a UI may show only the latest one."""

    phase: Phase
    index: int
    total: int


class BlockDone(Event, event="block"):
    """One transformer block finished for the current pass.

    `bytes` and `read_seconds` are what the prefetcher read from disk for this block (0 when resident);
    `wait_seconds` is how long compute stalled waiting for those bytes."""

    index: int
    total: int
    kind: PassKind
    token_index: int
    resident: bool
    bytes: int
    read_seconds: float
    wait_seconds: float
    compute_seconds: float
    rss: int
    rows: int = 1
    """Positions this pass carries: the prompt's length in prefill, 1 per decoded token, 1 + K verifying K drafts."""


class PrefillProgress(Event, event="prefill"):
    """Progress of a many-row pass (a prompt's prefill, a perplexity window), at most ~4 times a second.

    `done`/`total` count (block, row) steps: rows x blocks; `eta_seconds` extrapolates the pass so far."""

    tokens: int
    done: int
    total: int
    block: int
    blocks: int
    seconds: float
    eta_seconds: float


class TokenGenerated(Event, event="token"):
    """A new token. `text` is the decoded piece that became final with it (may be empty while a
    multi-byte character or a possible stop string is incomplete); `logprob` is the log-softmax of the
    raw logits at the chosen id; `seconds` is the wall time of the pass that produced it.

    A remote server streams text pieces only: there `id` is -1, `logprob` None, and `seconds` the time since
    the previous piece (the first: since the request was sent)."""

    index: int
    id: int
    text: str
    logprob: float | None
    seconds: float
    sequence: int = 0
    """Which of the run's sequences (0-based) it belongs to: a run may carry several (samples, prompts)."""
    top_logprobs: tuple[tuple[int, float], ...] = ()
    """The most likely ids at this step with their logprobs (raw logits), when the run asked for them (a server's
    `logprobs`); empty otherwise."""
    drafted: bool = False
    """A draft proposed it and the pass verified it (kept); False for a token the target chose itself."""


class Drafted(Event, event="draft"):
    """A draft proposed `ids` as the tokens from `index` on; the next pass verifies them. `text` is how they
    would read if kept. TokenGenerated events follow for what the target keeps (a prefix of `ids`, then one
    token of its own); until then they are guesses, never part of the output."""

    index: int
    ids: tuple[int, ...]
    text: str
    sequence: int = 0
    nodes: int = 0
    """The tree's size when the draft proposed a token tree (`ids` is then its most likely line); 0 for a
    chain."""


class Done(Event, event="done"):
    """Generation finished. `stop_reason` is "eos", "stop", or "length"."""

    token_ids: tuple[int, ...]
    text: str
    prompt_tokens: int
    new_tokens: int
    prefill_seconds: float
    decode_seconds: float
    tokens_per_second: float
    peak_rss: int
    bytes_read: int
    stop_reason: str
    passes: int = 0
    """Passes over the target's weights (the prefill included)."""
    draft_proposed: int = 0
    """Tokens a draft proposed (0 without one); `draft_accepted` of them the target kept."""
    draft_accepted: int = 0
    draft_tree: str = ""
    """How drafted tokens were laid out: "" (no draft or a chain), or the tree budget ("auto", or a fixed
    node count) with the mean nodes per drafted pass, e.g. "auto, 21.3 nodes"."""
    sequence: int = 0
    """Each sequence of a run ends with its own Done; `passes` counts the passes it took part in, while
    `peak_rss` and `bytes_read` are the whole run's so far."""

    @property
    def acceptance(self) -> float | None:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else None


class Cancelled(Event, event="cancelled"):
    """The cancel flag was seen; the partial result is kept. The engine is ready for the next prompt."""

    token_ids: tuple[int, ...]
    text: str
    new_tokens: int
    sequence: int = 0


class LongPrompt(Event, event="long_prompt"):
    """A prompt longer than the model's training context: it runs (ALiBi has no hard limit), but the text it
    writes past that length gets worse. `message` is one line for the user."""

    tokens: int
    context: int
    message: str
    sequence: int = 0


class Error(Event, event="error"):
    """Generation failed; `message` is one line for the user."""

    message: str


EventSink = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The default sink."""
